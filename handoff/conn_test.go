package handoff

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close(); a.Wait(); b.Wait() })
	return a, b
}

// arrive waits until c's reader has taken n packets off the socket. It is a
// synchronisation with the reader goroutine, not a timeout under test: it
// fails only if the packets never come.
func arrive(t *testing.T, c *Conn, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Arrived < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d packets arrived", c.Stats().Arrived, n)
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// pollOne polls exactly one frame that must be there.
func pollOne(t *testing.T, c *Conn, f *Frame) {
	t.Helper()
	arrive(t, c, c.Stats().Received+1)
	ok, err := c.Poll(f)
	if err != nil || !ok {
		t.Fatalf("Poll = %v, %v; want a frame", ok, err)
	}
}

func TestConnSendPoll(t *testing.T) {
	a, b := pair(t)
	var f Frame
	if ok, err := b.Poll(&f); ok || err != nil {
		t.Fatalf("Poll on an empty conn = %v, %v", ok, err)
	}
	for i, fr := range sampleFrames() {
		fr := fr
		if err := a.Send(&fr); err != nil {
			t.Fatal(err)
		}
		pollOne(t, b, &f)
		if f.Type != fr.Type || f.Seq != uint32(i+1) {
			t.Errorf("frame %d: got %v seq %d, want %v seq %d", i, f.Type, f.Seq, fr.Type, i+1)
		}
	}
	if st := a.Stats(); st.Sent != uint64(len(sampleFrames())) {
		t.Errorf("sent %d", st.Sent)
	}
}

func TestConnListenDial(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan *Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	a, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b := <-accepted
	defer b.Close()
	if err := a.Send(&Frame{Type: TypeHeartbeat, Tick: 5}); err != nil {
		t.Fatal(err)
	}
	var f Frame
	pollOne(t, b, &f)
	if f.Type != TypeHeartbeat || f.Tick != 5 {
		t.Errorf("got %v tick %d", f.Type, f.Tick)
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

func TestListenRemovesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// A process that dies leaves its socket file behind.
	l.ul.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal("stale socket not left behind:", err)
	}
	l2, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()
}

func TestConnPeerClosed(t *testing.T) {
	a, b := pair(t)
	a.Send(&Frame{Type: TypeBye})
	a.Close()
	var f Frame
	pollOne(t, b, &f) // the BYE sent before closing is delivered first
	if f.Type != TypeBye {
		t.Fatalf("got %v", f.Type)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, err := b.Poll(&f)
		if errors.Is(err, ErrClosed) {
			break
		}
		if ok || err != nil || time.Now().After(deadline) {
			t.Fatalf("Poll after close = %v, %v; want ErrClosed", ok, err)
		}
		time.Sleep(50 * time.Microsecond)
	}
	if err := b.Send(&Frame{Type: TypeHeartbeat}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send to a closed peer = %v, want ErrClosed", err)
	}
}

// rawSend writes a packet as is, bypassing Send's sequence numbering.
func rawSend(t *testing.T, c *Conn, p []byte) {
	t.Helper()
	c.uc.SetWriteDeadline(time.Time{}) // Send's deadline may have passed
	if _, err := c.uc.Write(p); err != nil {
		t.Fatal(err)
	}
}

func TestConnSequenceErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		seqs []uint32
	}{
		{"gap", []uint32{1, 3}},
		{"repeat", []uint32{1, 1}},
		{"not from one", []uint32{2}},
		{"backwards", []uint32{1, 2, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			for _, s := range tc.seqs {
				rawSend(t, a, AppendFrame(nil, &Frame{Type: TypeHeartbeat, Seq: s}))
			}
			arrive(t, b, uint64(len(tc.seqs)))
			var f Frame
			var err error
			for i := 0; i < len(tc.seqs) && err == nil; i++ {
				_, err = b.Poll(&f)
			}
			if !errors.Is(err, ErrSequence) {
				t.Fatalf("got %v, want ErrSequence", err)
			}
			if _, again := b.Poll(&f); !errors.Is(again, ErrSequence) {
				t.Errorf("error not sticky: %v", again)
			}
		})
	}
}

func TestConnCorruptAndOversized(t *testing.T) {
	a, b := pair(t)
	p := AppendFrame(nil, &Frame{Type: TypeHeartbeat, Seq: 1})
	p[20] ^= 0xff
	rawSend(t, a, p)
	arrive(t, b, 1)
	var f Frame
	if _, err := b.Poll(&f); !errors.Is(err, ErrChecksum) {
		t.Fatalf("corrupt frame: %v, want ErrChecksum", err)
	}

	a, b = pair(t)
	rawSend(t, a, make([]byte, MaxPacket+100))
	arrive(t, b, 1)
	if _, err := b.Poll(&f); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized packet: %v, want ErrTooLarge", err)
	}
	if err := a.Send(&Frame{Type: TypeTick, Inputs: make([]byte, MaxPayload)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized send: %v, want ErrTooLarge", err)
	}
	if err := a.Send(&Frame{Type: TypeHeartbeat}); err != nil {
		t.Fatal(err)
	}
	if a.Stats().Sent != 1 || a.Stats().SendFailed != 1 {
		t.Errorf("stats %+v", a.Stats())
	}
}

// A peer that stops reading fills its ring and then the socket: Send gives up
// after the write timeout instead of blocking the tick loop.
func TestConnSendTimeoutOnFullSocket(t *testing.T) {
	a, b := pair(t)
	a.SetWriteTimeout(2 * time.Millisecond)
	f := Frame{Type: TypeTick, Inputs: make([]byte, 4096)}
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 10000; i++ {
		err = a.Send(&f)
		if err == nil {
			continue
		}
		// Under load the peer's reader may not have run within the write
		// timeout: the socket was full before the ring. Give it time, then
		// try again; the timeout counts once the ring is full too.
		if errors.Is(err, ErrSendTimeout) && b.head.Load()-b.tail.Load() < RingSlots && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
			continue
		}
		break
	}
	if !errors.Is(err, ErrSendTimeout) {
		t.Fatalf("got %v, want ErrSendTimeout", err)
	}
	if a.Stats().Sent < RingSlots {
		t.Errorf("only %d frames sent before the socket was full", a.Stats().Sent)
	}
}

// The ring applies back-pressure rather than dropping: more frames than
// RingSlots all arrive, in order, once the tick loop drains them.
func TestConnRingBackPressure(t *testing.T) {
	a, b := pair(t)
	const n = RingSlots * 3
	for i := 0; i < n; i++ {
		if err := a.Send(&Frame{Type: TypeHeartbeat, Tick: uint64(i)}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	var f Frame
	for i := 0; i < n; i++ {
		pollOne(t, b, &f)
		if f.Tick != uint64(i) {
			t.Fatalf("frame %d carries tick %d", i, f.Tick)
		}
	}
}

func TestConnZeroAllocsPerFrame(t *testing.T) {
	a, b := pair(t)
	in := make([]byte, 96)
	out := make([]byte, 16)
	f := Frame{Type: TypeTick, Inputs: in, Outputs: out}
	var g Frame
	tick := uint64(0)
	allocs := testing.AllocsPerRun(2000, func() {
		tick++
		f.Tick = tick
		if err := a.Send(&f); err != nil {
			t.Fatal(err)
		}
		for {
			ok, err := b.Poll(&g)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			time.Sleep(time.Microsecond)
		}
		if g.Tick != tick {
			t.Fatalf("tick %d, want %d", g.Tick, tick)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame sent and received, want 0", allocs)
	}
}

// pairNoReader is a pair without the reader goroutines: Poll alone reads the
// socket, so what it returns does not depend on the Go scheduler.
func pairNoReader(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	a, b, err := socketPair(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// A frame sent before a Poll is returned by that very Poll: the tick loop
// reads the socket itself, it does not wait for a goroutine (the SWITCH_ACK
// that v2 sends after writing tick T is seen by v1's next tick).
func TestConnPollReadsTheSocketItself(t *testing.T) {
	a, b := pairNoReader(t)
	var f Frame
	for i, fr := range sampleFrames() {
		fr := fr
		if err := a.Send(&fr); err != nil {
			t.Fatal(err)
		}
		ok, err := b.Poll(&f)
		if !ok || err != nil {
			t.Fatalf("frame %d: Poll right after Send = %v, %v; want the frame", i, ok, err)
		}
		if f.Type != fr.Type {
			t.Fatalf("frame %d: got %v, want %v", i, f.Type, fr.Type)
		}
		if ok, err := b.Poll(&f); ok || err != nil {
			t.Fatalf("frame %d: a second Poll = %v, %v; want nothing", i, ok, err)
		}
	}
	// A burst, in order, then the end of the connection at the next Poll.
	for i := 0; i < 20; i++ {
		if err := a.Send(&Frame{Type: TypeHeartbeat, Tick: uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	for i := 0; i < 20; i++ {
		ok, err := b.Poll(&f)
		if !ok || err != nil || f.Tick != uint64(i) {
			t.Fatalf("burst frame %d: %v, %v, tick %d", i, ok, err, f.Tick)
		}
	}
	if _, err := b.Poll(&f); !errors.Is(err, ErrClosed) {
		t.Fatalf("Poll after the peer closed = %v, want ErrClosed at once", err)
	}
	if st := b.Stats(); st.Direct != st.Arrived || st.Arrived != uint64(len(sampleFrames())+20) {
		t.Errorf("stats %+v: every packet should have been read by Poll", st)
	}
}

// Poll's own read allocates nothing either.
func TestConnDirectPollZeroAllocs(t *testing.T) {
	a, b := pairNoReader(t)
	f := Frame{Type: TypeTick, Inputs: make([]byte, 96), Outputs: make([]byte, 16)}
	var g Frame
	allocs := testing.AllocsPerRun(2000, func() {
		f.Tick++
		if err := a.Send(&f); err != nil {
			t.Fatal(err)
		}
		if ok, err := b.Poll(&g); !ok || err != nil || g.Tick != f.Tick {
			t.Fatalf("Poll = %v, %v, tick %d; want tick %d", ok, err, g.Tick, f.Tick)
		}
		if ok, err := b.Poll(&g); ok || err != nil {
			t.Fatalf("empty Poll = %v, %v", ok, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame, want 0", allocs)
	}
}
