package simbus

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeServer is a minimal socket-bus server. For each request packet it calls
// handle, which returns the raw packets to send back (none to stay silent).
type fakeServer struct {
	t      *testing.T
	ln     *net.UnixListener
	path   string
	handle func(req *Request) [][]byte

	mu    sync.Mutex
	hello string
	conns []*net.UnixConn
	wg    sync.WaitGroup
}

func startServer(t *testing.T, handle func(req *Request) [][]byte) *fakeServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bus.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, ln: ln, path: path, handle: handle}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *fakeServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *fakeServer) serve(c *net.UnixConn) {
	defer s.wg.Done()
	defer c.Close()
	buf := make([]byte, MaxPacket+16)
	for {
		n, err := c.Read(buf)
		if err != nil || n == 0 {
			return
		}
		var req Request
		if err := DecodeRequest(buf[:n], &req); err != nil {
			c.Write(AppendResponse(nil, &Response{Status: StatusMalformed}))
			return
		}
		if req.Kind == KindHello {
			s.mu.Lock()
			s.hello = string(req.Write)
			s.mu.Unlock()
			c.Write(AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq}))
			continue
		}
		if s.handle == nil {
			s.serveNoAlloc(c, buf, req)
			return
		}
		for _, p := range s.handle(&req) {
			if _, err := c.Write(p); err != nil {
				return
			}
		}
	}
}

// serveNoAlloc answers every transaction with ReadLen bytes of 0x5a without
// allocating, so that AllocsPerRun (which counts the whole process) measures
// the client alone.
func (s *fakeServer) serveNoAlloc(c *net.UnixConn, buf []byte, req Request) {
	out := make([]byte, 0, MaxPacket)
	data := bytes.Repeat([]byte{0x5a}, MaxPayload)
	var resp Response
	for {
		resp = Response{Status: StatusOK, Seq: req.Seq, Read: data[:req.ReadLen]}
		if _, err := c.Write(AppendResponse(out[:0], &resp)); err != nil {
			return
		}
		n, err := c.Read(buf)
		if err != nil || n == 0 {
			return
		}
		if err := DecodeRequest(buf[:n], &req); err != nil {
			return
		}
	}
}

// regs answers like a tiny device at 0x10 whose register r reads as r+1; any
// other address NACKs and 0x11 refuses.
func regs(req *Request) [][]byte {
	switch req.Addr {
	case 0x10:
		out := make([]byte, req.ReadLen)
		start := byte(0)
		if len(req.Write) > 0 {
			start = req.Write[0]
		}
		for i := range out {
			out[i] = start + byte(i) + 1
		}
		return [][]byte{AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq, Read: out})}
	case 0x11:
		return [][]byte{AppendResponse(nil, &Response{Status: StatusDevice, Seq: req.Seq})}
	default:
		return [][]byte{AppendResponse(nil, &Response{Status: StatusNACK, Seq: req.Seq})}
	}
}

func TestTxHelloReadNACKDevice(t *testing.T) {
	s := startServer(t, regs)
	b, err := Dial(s.path, "test-client")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s.mu.Lock()
	hello := s.hello
	s.mu.Unlock()
	if hello != "test-client" {
		t.Fatalf("server saw hello %q", hello)
	}
	r := make([]byte, 3)
	if err := b.Tx(0x10, []byte{0x3b}, r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r, []byte{0x3c, 0x3d, 0x3e}) {
		t.Fatalf("read % x", r)
	}
	if err := b.Tx(0x10, []byte{0x01, 0x02}, nil); err != nil {
		t.Fatalf("write only: %v", err)
	}
	if err := b.Tx(0x20, []byte{0}, r[:1]); !errors.Is(err, ErrNACK) {
		t.Fatalf("absent device: %v, want ErrNACK", err)
	}
	if err := b.Tx(0x11, []byte{0}, nil); !errors.Is(err, ErrDevice) {
		t.Fatalf("refusing device: %v, want ErrDevice", err)
	}
	if err := b.Tx(0x80, nil, r); err == nil {
		t.Fatal("10-bit address accepted")
	}
	if err := b.Tx(0x10, make([]byte, MaxPayload+1), nil); err == nil {
		t.Fatal("oversized write accepted")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Tx(0x10, []byte{0}, r); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v, want ErrClosed", err)
	}
}

func TestDialErrors(t *testing.T) {
	if _, err := Dial(filepath.Join(t.TempDir(), "none.sock"), "x"); err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
	s := startServer(t, regs)
	if _, err := Dial(s.path, string(make([]byte, MaxName+1))); err == nil {
		t.Fatal("overlong name accepted")
	}
}

func TestTxConcurrent(t *testing.T) {
	s := startServer(t, regs)
	b, err := Dial(s.path, "concurrent")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := make([]byte, 4)
			for i := 0; i < 200; i++ {
				reg := byte(g*16 + i%16)
				if err := b.Tx(0x10, []byte{reg}, r); err != nil {
					errs <- err
					return
				}
				for j, v := range r {
					if v != reg+byte(j)+1 {
						errs <- errors.New("crossed responses")
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestTxAllocs(t *testing.T) {
	s := startServer(t, nil)
	b, err := Dial(s.path, "allocs")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	w := []byte{0x3b}
	r := make([]byte, 14)
	allocs := testing.AllocsPerRun(200, func() {
		if err := b.Tx(0x10, w, r); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Tx allocates %v times per call, want 0", allocs)
	}
}

func TestTxMalformedResponses(t *testing.T) {
	cases := []struct {
		name  string
		reply func(req *Request) []byte
	}{
		{"short", func(*Request) []byte { return []byte{Version, 0, 0} }},
		{"version", func(req *Request) []byte {
			p := AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq, Read: make([]byte, req.ReadLen)})
			p[0] = 9
			return p
		}},
		{"length field lies", func(req *Request) []byte {
			p := AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq, Read: make([]byte, req.ReadLen)})
			p[2]++
			return p
		}},
		{"wrong read length", func(req *Request) []byte {
			return AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq, Read: make([]byte, int(req.ReadLen)+1)})
		}},
		{"future seq", func(req *Request) []byte {
			return AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq + 5, Read: make([]byte, req.ReadLen)})
		}},
		{"unknown status", func(req *Request) []byte {
			return AppendResponse(nil, &Response{Status: 77, Seq: req.Seq})
		}},
		{"server says malformed", func(req *Request) []byte {
			return AppendResponse(nil, &Response{Status: StatusMalformed, Seq: req.Seq})
		}},
		{"oversized", func(req *Request) []byte {
			return AppendResponse(nil, &Response{Status: StatusOK, Seq: req.Seq, Read: make([]byte, MaxPacket)})
		}},
		{"empty", func(req *Request) []byte { return []byte{} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := startServer(t, func(req *Request) [][]byte { return [][]byte{c.reply(req)} })
			b, err := Dial(s.path, "malformed")
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			err = b.Tx(0x10, []byte{0}, make([]byte, 2))
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("Tx = %v, want ErrProtocol", err)
			}
		})
	}
}

func TestTxTimeoutThenLateResponseDiscarded(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var held [][]byte
	s := startServer(t, func(req *Request) [][]byte {
		good := regs(req)
		if req.Write[0] == 0xAA {
			// Stay silent until the client has timed out, then answer late,
			// together with the answer of the next request.
			mu.Lock()
			held = good
			mu.Unlock()
			return nil
		}
		<-release
		mu.Lock()
		defer mu.Unlock()
		return append(held, good...)
	})
	b, err := Dial(s.path, "timeout", WithTimeout(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := make([]byte, 1)
	err = b.Tx(0x10, []byte{0xAA}, r)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent server: %v, want a deadline error", err)
	}
	close(release)
	if err := b.Tx(0x10, []byte{0x05}, r); err != nil {
		t.Fatalf("after a late response: %v", err)
	}
	if r[0] != 0x06 {
		t.Fatalf("got the stale response: % x", r)
	}
}

func TestServerGone(t *testing.T) {
	s := startServer(t, func(req *Request) [][]byte { return nil })
	b, err := Dial(s.path, "gone", WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	if err := b.Tx(0x10, []byte{0}, make([]byte, 1)); err == nil {
		t.Fatal("Tx on a closed server succeeded")
	}
}
