package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// SenderOptions configure a Sender. Conn, Drone, Archive, Digest and Size
// are required.
type SenderOptions struct {
	Conn  Conn
	Drone mqttapi.DroneTopics
	// Archive is read at chunk offsets; Digest ("sha256:<hex>") and Size
	// must be those signed in the manifest (see Digest).
	Archive io.ReaderAt
	Digest  string
	Size    int64
	// ChunkSize defaults to mqttapi.DefaultChunkSize. When the drone
	// already holds chunks of another size, the sender adopts its size so
	// that nothing held is sent again.
	ChunkSize int
	// Window is how many chunks may be sent and not yet reported held
	// (default 32): it bounds what the broker queues for the drone.
	Window int
	// RTO: a chunk not reported held this long after it was sent is sent
	// again (default 2s). A have report carrying an error (a chunk the drone
	// rejected) makes every outstanding chunk due at once.
	RTO time.Duration
	// Stall ends the transfer with ErrStalled when no have report arrives
	// for this long (default 60s; the drone may be verifying or busy).
	Stall time.Duration
	// MaxRestarts bounds how often the drone may drop everything after a
	// whole-digest mismatch (default 2).
	MaxRestarts int
	// OnProgress, when set, is called after every have report.
	OnProgress func(SendProgress)
	Logger     *slog.Logger
	Now        func() time.Time
}

// SendProgress is the sender's view of a transfer.
type SendProgress struct {
	Transfer  string
	Count     int
	Held      int   // chunks the drone reports held
	HeldBytes int64 // bytes the drone reports held
	Size      int64
	Sent      int // chunk messages published
	Elapsed   time.Duration
	Complete  bool
}

// Stats are the figures of a finished (or abandoned) send.
type Stats struct {
	Transfer    string
	Count       int           // chunks in the plan
	ChunkSize   int           // bytes
	Size        int64         // archive bytes
	HeldAtStart int           // chunks the drone held before this sender sent anything
	Sent        int           // chunk messages published, re-sends included
	Resent      int           // of which sent again (lost, rejected or slow)
	ResentHeld  int           // of which the drone had reported held: always 0 unless the drone dropped them
	BytesSent   int64         // chunk payload bytes published
	Restarts    int           // times the drone dropped everything (whole-digest mismatch)
	Elapsed     time.Duration // from the first have report to the complete one
	Complete    bool
}

// MBps is the throughput of what was sent, in MB/s (10^6 bytes).
func (s Stats) MBps() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.BytesSent) / 1e6 / s.Elapsed.Seconds()
}

// Sender sends one archive to one drone.
type Sender struct {
	o   SenderOptions
	tid string
	log *slog.Logger

	mu     sync.Mutex
	latest *mqttapi.Have
	kick   chan struct{}
}

// NewSender checks the options.
func NewSender(o SenderOptions) (*Sender, error) {
	if o.Conn == nil || o.Archive == nil || o.Drone.ID == "" {
		return nil, fmt.Errorf("transfer: sender needs Conn, Drone and Archive")
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = mqttapi.DefaultChunkSize
	}
	if _, err := mqttapi.NewPlan(o.Digest, o.Size, o.ChunkSize); err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	if o.Window <= 0 {
		o.Window = 32
	}
	if o.RTO <= 0 {
		o.RTO = 2 * time.Second
	}
	if o.Stall <= 0 {
		o.Stall = time.Minute
	}
	if o.MaxRestarts <= 0 {
		o.MaxRestarts = 2
	}
	if o.Logger == nil {
		o.Logger = discard()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	tid := mqttapi.Archive{Digest: o.Digest}.TransferID()
	return &Sender{o: o, tid: tid, log: o.Logger.With("transfer", tid, "drone", o.Drone.ID), kick: make(chan struct{}, 1)}, nil
}

// Digest reads r to its end and returns its "sha256:<hex>" digest and size.
func Digest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", 0, fmt.Errorf("transfer: digest: %w", err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

func (s *Sender) onHave(m mqttc.Message) {
	h, err := mqttapi.DecodeHave(m.Payload)
	if err != nil {
		s.log.Warn("have report ignored", "err", err)
		return
	}
	if h.Transfer != s.tid || h.Digest != s.o.Digest || h.Size != s.o.Size || h.Drone != s.o.Drone.ID {
		s.log.Warn("have report of another transfer ignored", "transfer", h.Transfer)
		return
	}
	s.mu.Lock()
	if s.latest == nil || !h.At.Before(s.latest.At) {
		s.latest = h
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Sender) take() *mqttapi.Have {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.latest
	s.latest = nil
	return h
}

// Run waits for the drone's first have report (the drone subscribes to the
// chunks and reports once it has verified the manifest), sends every chunk
// it does not hold, re-sends what is lost or rejected, and returns once the
// drone reports the archive complete and verified.
func (s *Sender) Run(ctx context.Context) (Stats, error) {
	haveTopic, err := s.o.Drone.TransferHave(s.tid)
	if err != nil {
		return Stats{}, err
	}
	chunkTopic, err := s.o.Drone.TransferChunk(s.tid)
	if err != nil {
		return Stats{}, err
	}
	if err := s.o.Conn.Subscribe(ctx, haveTopic, 1, s.onHave); err != nil {
		return Stats{}, fmt.Errorf("transfer: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		s.o.Conn.Unsubscribe(uctx, haveTopic)
	}()

	st := Stats{Transfer: s.tid, Size: s.o.Size}
	// Wait for the first report.
	var h *mqttapi.Have
	stall := time.NewTimer(s.o.Stall)
	defer stall.Stop()
	for h == nil {
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-stall.C:
			return st, fmt.Errorf("transfer: no have report from drone %s on %s within %v: %w", s.o.Drone.ID, haveTopic, s.o.Stall, ErrStalled)
		case <-s.kick:
			h = s.take()
		}
	}
	start := s.o.Now()
	plan, _ := mqttapi.NewPlan(s.o.Digest, s.o.Size, s.o.ChunkSize)
	if len(h.Ranges) > 0 && h.ChunkSize != plan.ChunkSize {
		s.log.Info("drone holds chunks of another size; adopting it", "chunk_size", h.ChunkSize)
		plan = h.Plan()
	}
	st.Count, st.ChunkSize = plan.Count(), plan.ChunkSize
	held := mqttapi.NewChunkSet(plan.Count())
	acked := mqttapi.NewChunkSet(plan.Count()) // ever reported held
	sentAt := map[int]time.Time{}
	everSent := mqttapi.NewChunkSet(plan.Count())
	apply := func(h *mqttapi.Have) (bool, error) {
		if h.ChunkSize != plan.ChunkSize {
			if len(h.Ranges) == 0 {
				return false, nil // the drone holds nothing yet and adopts our size with the first chunk
			}
			return false, fmt.Errorf("transfer: drone holds chunks of %d bytes, sending %d: %w", h.ChunkSize, plan.ChunkSize, ErrMismatch)
		}
		set, err := h.Set()
		if err != nil {
			return false, err
		}
		if h.Error != "" && set.Held() == 0 && (held.Held() > 0 || everSent.Complete()) {
			st.Restarts++
			s.log.Warn("drone dropped the archive", "err", h.Error, "restarts", st.Restarts)
			if st.Restarts > s.o.MaxRestarts {
				return false, fmt.Errorf("transfer: drone %s: %s: %w", s.o.Drone.ID, h.Error, ErrDigestMismatch)
			}
			acked = mqttapi.NewChunkSet(plan.Count())
		}
		for i := range sentAt {
			if set.Has(i) {
				delete(sentAt, i)
			}
		}
		if h.Error != "" {
			s.log.Info("drone reported an error; re-sending what is outstanding", "err", h.Error)
			clear(sentAt)
		}
		held = set
		for _, r := range set.Ranges() {
			for i := r[0]; i < r[1]; i++ {
				acked.Add(i)
			}
		}
		if s.o.OnProgress != nil {
			s.o.OnProgress(SendProgress{Transfer: s.tid, Count: plan.Count(), Held: held.Held(), HeldBytes: h.Bytes,
				Size: plan.Size, Sent: st.Sent, Elapsed: s.o.Now().Sub(start), Complete: h.Complete})
		}
		return h.Complete, nil
	}
	done, err := apply(h)
	if err != nil {
		return st, err
	}
	st.HeldAtStart = held.Held()
	buf := make([]byte, plan.ChunkSize)
	lastHave := s.o.Now()
	for !done {
		now := s.o.Now()
		// Fill the window with missing chunks, oldest index first.
		outstanding := 0
		for i, t := range sentAt {
			if now.Sub(t) < s.o.RTO {
				outstanding++
			} else {
				delete(sentAt, i)
			}
		}
		for i := 0; i < plan.Count() && outstanding < s.o.Window; i++ {
			if held.Has(i) {
				continue
			}
			if _, ok := sentAt[i]; ok {
				continue
			}
			if err := s.send(ctx, chunkTopic, plan, i, buf); err != nil {
				if ctx.Err() != nil {
					return st, ctx.Err()
				}
				s.log.Warn("chunk not published; will retry", "index", i, "err", err)
				break
			}
			sentAt[i] = s.o.Now()
			outstanding++
			st.Sent++
			_, n := plan.Bounds(i)
			st.BytesSent += int64(n)
			if everSent.Has(i) || acked.Has(i) {
				st.Resent++
			}
			if acked.Has(i) {
				st.ResentHeld++
			}
			everSent.Add(i)
			// Take reports as they come, so the window slides.
			if h := s.take(); h != nil {
				lastHave = s.o.Now()
				if done, err = apply(h); err != nil || done {
					break
				}
			}
		}
		if err != nil {
			return st, err
		}
		if done {
			break
		}
		wait := s.o.RTO / 4
		if wait > 200*time.Millisecond {
			wait = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-s.kick:
			if h := s.take(); h != nil {
				lastHave = s.o.Now()
				if done, err = apply(h); err != nil {
					return st, err
				}
			}
		case <-time.After(wait):
			if s.o.Now().Sub(lastHave) > s.o.Stall {
				return st, fmt.Errorf("transfer: no have report from drone %s for %v: %w", s.o.Drone.ID, s.o.Stall, ErrStalled)
			}
		}
	}
	st.Complete = true
	st.Elapsed = s.o.Now().Sub(start)
	s.log.Info("transfer complete", "chunks", st.Count, "sent", st.Sent, "resent", st.Resent, "held_at_start", st.HeldAtStart,
		"bytes_sent", st.BytesSent, "elapsed", st.Elapsed, "mb_per_s", st.MBps())
	return st, nil
}

func (s *Sender) send(ctx context.Context, topic string, plan mqttapi.Plan, i int, buf []byte) error {
	off, n := plan.Bounds(i)
	if m, err := s.o.Archive.ReadAt(buf[:n], off); m < n {
		return fmt.Errorf("transfer: read chunk %d: %w", i, err)
	}
	c, err := plan.NewChunk(i, buf[:n])
	if err != nil {
		return err
	}
	raw, err := c.Marshal()
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, pubTimeout)
	defer cancel()
	return s.o.Conn.Publish(pctx, mqttc.Message{Topic: topic, Payload: raw, QoS: 1})
}
