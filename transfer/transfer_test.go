package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/inflight-ota/inflight/internal/testsvc"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// startBroker runs an in-process mochi broker on addr ("127.0.0.1:0" for a
// free port) and returns it with its address.
func startBroker(t testing.TB, addr string) (*mqtt.Server, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: addr})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	return srv, l.Address()
}

func connect(t testing.TB, addr string) *mqttc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mqttc.Connect(ctx, mqttc.Options{Broker: "tcp://" + addr, MaxReconnectInterval: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func archive(n int) ([]byte, string) {
	r := rand.New(rand.NewPCG(7, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	sum := sha256.Sum256(b)
	return b, "sha256:" + hex.EncodeToString(sum[:])
}

func drone(t testing.TB) mqttapi.DroneTopics {
	d, err := mqttapi.Topics{}.Drone("drone-1")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// hookConn wraps a Conn to watch or alter what is published.
type hookConn struct {
	Conn
	onPublish func(*mqttc.Message) bool // false drops the message
}

func (h *hookConn) Publish(ctx context.Context, m mqttc.Message) error {
	if h.onPublish != nil && !h.onPublish(&m) {
		return nil
	}
	return h.Conn.Publish(ctx, m)
}

func chunkIndex(t testing.TB, raw []byte) int {
	c, err := mqttapi.DecodeChunk(raw)
	if err != nil {
		t.Fatalf("sent chunk does not decode: %v", err)
	}
	return c.Index
}

func checkArchive(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("received archive differs from the one sent")
	}
}

type result struct {
	path string
	err  error
}

func runReceiver(ctx context.Context, r *Receiver) chan result {
	ch := make(chan result, 1)
	go func() { p, err := r.Run(ctx); ch <- result{p, err} }()
	return ch
}

func TestTransfer(t *testing.T) {
	for _, b := range []string{"mochi", "mosquitto"} {
		t.Run(b, func(t *testing.T) {
			var addr string
			if b == "mochi" {
				srv, a := startBroker(t, "127.0.0.1:0")
				t.Cleanup(func() { testsvc.CloseBroker(srv) })
				addr = a
			} else {
				addr = testsvc.Mosquitto(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			data, digest := archive(20*mqttapi.MinChunkSize + 77)
			rc, sc := connect(t, addr), connect(t, addr)
			defer rc.Close(0)
			defer sc.Close(0)
			r, err := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: t.TempDir(), Archive: mqttapi.Archive{Digest: digest, Size: int64(len(data))}})
			if err != nil {
				t.Fatal(err)
			}
			rres := runReceiver(ctx, r)
			s, err := NewSender(SenderOptions{Conn: sc, Drone: drone(t), Archive: bytes.NewReader(data), Digest: digest, Size: int64(len(data)), ChunkSize: mqttapi.MinChunkSize})
			if err != nil {
				t.Fatal(err)
			}
			st, err := s.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			res := <-rres
			if res.err != nil {
				t.Fatal(res.err)
			}
			checkArchive(t, res.path, data)
			if st.Count != 21 || st.Sent != 21 || st.Resent != 0 || !st.Complete {
				t.Errorf("stats %+v", st)
			}
			t.Logf("%d chunks, %.1f MB/s", st.Count, st.MBps())
		})
	}
}

// TestResumeAfterSenderCut kills the ground side half way (its context and
// its MQTT client) and starts a new sender with a new client: it must send
// exactly the chunks the drone did not report, none it had.
func TestResumeAfterSenderCut(t *testing.T) {
	srv, addr := startBroker(t, "127.0.0.1:0")
	defer testsvc.CloseBroker(srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data, digest := archive(64*mqttapi.MinChunkSize + 5)
	size := int64(len(data))
	rc := connect(t, addr)
	defer rc.Close(0)
	r, err := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: t.TempDir(), Archive: mqttapi.Archive{Digest: digest, Size: size}, ReportEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	rres := runReceiver(ctx, r)

	// First sender: cut after 25 chunks were published.
	sc1 := connect(t, addr)
	ctx1, cut := context.WithCancel(ctx)
	var n1 atomic.Int32
	hc := &hookConn{Conn: sc1, onPublish: func(m *mqttc.Message) bool {
		if n1.Add(1) == 25 {
			cut()
			sc1.Close(0) // the link drops
		}
		return n1.Load() <= 25
	}}
	s1, _ := NewSender(SenderOptions{Conn: hc, Drone: drone(t), Archive: bytes.NewReader(data), Digest: digest, Size: size, ChunkSize: mqttapi.MinChunkSize, Window: 8})
	if _, err := s1.Run(ctx1); !errors.Is(err, context.Canceled) {
		t.Fatalf("first sender: %v", err)
	}
	// Let the drone report everything it received.
	deadline := time.Now().Add(5 * time.Second)
	for p := r.Progress(); p.Reported != p.Held || p.Held == 0; p = r.Progress() {
		if time.Now().After(deadline) {
			t.Fatalf("drone did not report: %+v", p)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := r.Progress()
	if before.Held == 0 || before.Held >= 65 {
		t.Fatalf("cut did not land in the middle: %+v", before)
	}

	// Second sender, new client: resumes from the retained have report.
	sc2 := connect(t, addr)
	defer sc2.Close(0)
	var resent []int
	var mu sync.Mutex
	hc2 := &hookConn{Conn: sc2, onPublish: func(m *mqttc.Message) bool {
		mu.Lock()
		resent = append(resent, chunkIndex(t, m.Payload))
		mu.Unlock()
		return true
	}}
	s2, _ := NewSender(SenderOptions{Conn: hc2, Drone: drone(t), Archive: bytes.NewReader(data), Digest: digest, Size: size, ChunkSize: mqttapi.MinChunkSize, Window: 8})
	st, err := s2.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := <-rres
	if res.err != nil {
		t.Fatal(res.err)
	}
	checkArchive(t, res.path, data)
	if st.HeldAtStart != before.Held || st.Sent != st.Count-before.Held || st.ResentHeld != 0 {
		t.Errorf("drone held %d before the resume; second sender: %+v", before.Held, st)
	}
	after := r.Progress()
	if after.Duplicates != 0 {
		t.Errorf("drone received %d chunks it already held", after.Duplicates)
	}
	t.Logf("cut after %d chunks held; resumed by sending %d of %d (%v)", before.Held, st.Sent, st.Count, resent[:min(5, len(resent))])
}

// TestResumeAfterReceiverCut stops the drone side half way (its client and
// its Receiver) while the sender keeps going; a new Receiver on the same
// spool with a new client resumes, and the sender re-sends nothing the
// drone had reported.
func TestResumeAfterReceiverCut(t *testing.T) {
	srv, addr := startBroker(t, "127.0.0.1:0")
	defer testsvc.CloseBroker(srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data, digest := archive(48*mqttapi.MinChunkSize + 1)
	size := int64(len(data))
	dir := t.TempDir()
	a := mqttapi.Archive{Digest: digest, Size: size}

	rc1 := connect(t, addr)
	ctx1, cut := context.WithCancel(ctx)
	r1, err := NewReceiver(ReceiverOptions{Conn: rc1, Drone: drone(t), Dir: dir, Archive: a, ReportEvery: 4, OnProgress: func(p Progress) {
		if p.Reported >= 20 {
			cut()
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	r1res := runReceiver(ctx1, r1)

	sc := connect(t, addr)
	defer sc.Close(0)
	s, _ := NewSender(SenderOptions{Conn: sc, Drone: drone(t), Archive: bytes.NewReader(data), Digest: digest, Size: size,
		ChunkSize: mqttapi.MinChunkSize, Window: 8, RTO: 300 * time.Millisecond})
	sres := make(chan error, 1)
	var st Stats
	go func() { var err error; st, err = s.Run(ctx); sres <- err }()

	if res := <-r1res; !errors.Is(res.err, context.Canceled) {
		t.Fatalf("first receiver: %v", res.err)
	}
	rc1.Close(0)
	held1 := r1.Progress().Held
	time.Sleep(500 * time.Millisecond) // the sender times out into the void

	rc2 := connect(t, addr)
	defer rc2.Close(0)
	r2, err := NewReceiver(ReceiverOptions{Conn: rc2, Drone: drone(t), Dir: dir, Archive: a})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Progress().Resumed != held1 {
		t.Fatalf("second receiver found %d chunks in the spool, first held %d", r2.Progress().Resumed, held1)
	}
	res := <-runReceiver(ctx, r2)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if err := <-sres; err != nil {
		t.Fatal(err)
	}
	checkArchive(t, res.path, data)
	if st.ResentHeld != 0 || !st.Complete {
		t.Errorf("sender re-sent %d chunks the drone had reported: %+v", st.ResentHeld, st)
	}
	if d := r2.Progress().Duplicates; d != 0 {
		t.Errorf("resumed receiver got %d chunks it held", d)
	}
	t.Logf("receiver cut with %d of %d held; sender sent %d (%d again, all unreported)", held1, st.Count, st.Sent, st.Resent)
}

// TestBrokerRestart stops the broker in the middle and starts a new one on
// the same port (its retained messages gone); both clients reconnect and
// the transfer completes.
func TestBrokerRestart(t *testing.T) {
	srv, addr := startBroker(t, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data, digest := archive(40*mqttapi.MinChunkSize + 9)
	size := int64(len(data))
	rc, sc := connect(t, addr), connect(t, addr)
	defer rc.Close(0)
	defer sc.Close(0)
	var once sync.Once
	restarted := make(chan struct{})
	r, _ := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: t.TempDir(), Archive: mqttapi.Archive{Digest: digest, Size: size},
		ReportEvery: 4, Heartbeat: 200 * time.Millisecond, OnProgress: func(p Progress) {
			if p.Reported >= 16 {
				once.Do(func() {
					go func() {
						testsvc.CloseBroker(srv)
						time.Sleep(300 * time.Millisecond)
						srv2, _ := startBroker(t, addr)
						t.Cleanup(func() { testsvc.CloseBroker(srv2) })
						close(restarted)
					}()
				})
			}
		}})
	rres := runReceiver(ctx, r)
	s, _ := NewSender(SenderOptions{Conn: sc, Drone: drone(t), Archive: bytes.NewReader(data), Digest: digest, Size: size,
		ChunkSize: mqttapi.MinChunkSize, Window: 4, RTO: 500 * time.Millisecond})
	st, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	<-restarted
	res := <-rres
	if res.err != nil {
		t.Fatal(res.err)
	}
	checkArchive(t, res.path, data)
	if st.ResentHeld != 0 {
		t.Errorf("re-sent %d chunks the drone had reported: %+v", st.ResentHeld, st)
	}
	t.Logf("across a broker restart: sent %d for %d chunks", st.Sent, st.Count)
}

// TestCorruptChunk flips a byte of one chunk on its way: the drone rejects
// it, reports, and the sender sends it again at once.
func TestCorruptChunk(t *testing.T) {
	srv, addr := startBroker(t, "127.0.0.1:0")
	defer testsvc.CloseBroker(srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data, digest := archive(16 * mqttapi.MinChunkSize)
	size := int64(len(data))
	rc, sc := connect(t, addr), connect(t, addr)
	defer rc.Close(0)
	defer sc.Close(0)
	r, _ := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: t.TempDir(), Archive: mqttapi.Archive{Digest: digest, Size: size}})
	rres := runReceiver(ctx, r)
	var corrupted atomic.Bool
	sent := map[int]int{}
	hc := &hookConn{Conn: sc, onPublish: func(m *mqttc.Message) bool {
		i := chunkIndex(t, m.Payload)
		sent[i]++
		if i == 5 && corrupted.CompareAndSwap(false, true) {
			m.Payload = bytes.Clone(m.Payload)
			m.Payload[len(m.Payload)-10] ^= 0x40
		}
		return true
	}}
	// A long RTO: only the drone's report can explain a quick re-send.
	s, _ := NewSender(SenderOptions{Conn: hc, Drone: drone(t), Archive: bytes.NewReader(data), Digest: digest, Size: size, ChunkSize: mqttapi.MinChunkSize, RTO: 20 * time.Second})
	t0 := time.Now()
	st, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := <-rres
	if res.err != nil {
		t.Fatal(res.err)
	}
	checkArchive(t, res.path, data)
	if p := r.Progress(); p.Rejected != 1 {
		t.Errorf("drone rejected %d chunks, want 1", p.Rejected)
	}
	if sent[5] != 2 || st.ResentHeld != 0 {
		t.Errorf("chunk 5 sent %d times (want 2), stats %+v", sent[5], st)
	}
	if el := time.Since(t0); el > 10*time.Second {
		t.Errorf("re-send waited for the RTO: %v", el)
	}
}

// TestWholeDigestMismatch: chunks that each match their own sha256 but not
// the signed digest are all dropped and the transfer fails cleanly.
func TestWholeDigestMismatch(t *testing.T) {
	srv, addr := startBroker(t, "127.0.0.1:0")
	defer testsvc.CloseBroker(srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data, digest := archive(4 * mqttapi.MinChunkSize)
	wrong := bytes.Clone(data)
	wrong[100] ^= 1
	rc, sc := connect(t, addr), connect(t, addr)
	defer rc.Close(0)
	defer sc.Close(0)
	r, _ := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: t.TempDir(), Archive: mqttapi.Archive{Digest: digest, Size: int64(len(data))}})
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	runReceiver(rctx, r)
	s, _ := NewSender(SenderOptions{Conn: sc, Drone: drone(t), Archive: bytes.NewReader(wrong), Digest: digest, Size: int64(len(data)), ChunkSize: mqttapi.MinChunkSize, MaxRestarts: 1})
	if _, err := s.Run(ctx); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("sender: %v, want ErrDigestMismatch", err)
	}
	if p := r.Progress(); p.Complete {
		t.Fatalf("receiver accepted a wrong archive: %+v", p)
	}
}

// TestResumeFromSpoolAfterCrash checks the spool alone: chunks written
// before a crash are found again, a chunk altered on disk is dropped.
func TestResumeFromSpoolAfterCrash(t *testing.T) {
	srv, addr := startBroker(t, "127.0.0.1:0")
	defer testsvc.CloseBroker(srv)
	data, digest := archive(8 * mqttapi.MinChunkSize)
	a := mqttapi.Archive{Digest: digest, Size: int64(len(data))}
	dir := t.TempDir()
	rc := connect(t, addr)
	defer rc.Close(0)
	r, _ := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: dir, Archive: a})
	p, _ := mqttapi.NewPlan(digest, a.Size, mqttapi.MinChunkSize)
	for _, i := range []int{0, 1, 2, 6} {
		off, n := p.Bounds(i)
		c, _ := p.NewChunk(i, data[off:off+int64(n)])
		raw, _ := c.Marshal()
		r.onChunk(mqttc.Message{Payload: raw})
	}
	r.mu.Lock()
	r.sync()
	r.mu.Unlock()
	// Damage chunk 1 on disk, as a crash mid-write might.
	f, _ := os.OpenFile(r.Dir()+"/"+partFile, os.O_RDWR, 0)
	f.WriteAt([]byte("xx"), int64(mqttapi.MinChunkSize)+3)
	f.Close()
	r2, err := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(t), Dir: dir, Archive: a})
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.Progress(); got.Resumed != 3 || got.Count != 8 {
		t.Fatalf("resumed %+v, want chunks 0, 2 and 6", got)
	}
}

// BenchmarkTransfer sends an 8 MiB archive over the embedded broker on
// 127.0.0.1 and reports the throughput.
func BenchmarkTransfer(b *testing.B) {
	srv, addr := startBroker(b, "127.0.0.1:0")
	defer testsvc.CloseBroker(srv)
	data, digest := archive(8 << 20)
	rc, sc := connect(b, addr), connect(b, addr)
	defer rc.Close(0)
	defer sc.Close(0)
	b.SetBytes(int64(len(data)))
	var mbps float64
	for i := 0; b.Loop(); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r, err := NewReceiver(ReceiverOptions{Conn: rc, Drone: drone(b), Dir: b.TempDir(), Archive: mqttapi.Archive{Digest: digest, Size: int64(len(data))}})
		if err != nil {
			b.Fatal(err)
		}
		rres := runReceiver(ctx, r)
		s, _ := NewSender(SenderOptions{Conn: sc, Drone: drone(b), Archive: bytes.NewReader(data), Digest: digest, Size: int64(len(data))})
		st, err := s.Run(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if res := <-rres; res.err != nil {
			b.Fatal(res.err)
		}
		// The have topic is retained: clear it so the next round starts
		// empty.
		ht, _ := drone(b).TransferHave(st.Transfer)
		sc.Publish(ctx, mqttc.Message{Topic: ht, QoS: 1, Retain: true})
		cancel()
		mbps = st.MBps()
		b.ReportMetric(float64(st.Resent), "resent")
	}
	b.ReportMetric(mbps, "MB/s(last)")
}
