package transfer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// Spool file names inside Dir/<transfer id>/.
const (
	planFile     = "plan.json"    // the chunk size, fixed by the first chunk accepted
	partFile     = "archive.part" // chunks written at their offsets
	logFile      = "chunks.log"   // one "index sha256hex" line per chunk written
	ArchiveFile  = "archive.tar"  // the verified archive, once complete
	pubTimeout   = 10 * time.Second
	defaultEvery = 8
)

// ReceiverOptions configure a Receiver. Conn, Drone, Archive and Dir are
// required.
type ReceiverOptions struct {
	Conn  Conn
	Drone mqttapi.DroneTopics
	// Archive comes from the verified, signed manifest: its digest is what
	// makes the unsigned chunks trustworthy.
	Archive mqttapi.Archive
	// Dir is the spool directory; the transfer lives in Dir/<transfer id>.
	Dir string
	// ReportEvery publishes a have report after this many new chunks
	// (default 8); ReportDelay bounds how long a new chunk goes unreported
	// (default 50ms); Heartbeat republishes the report while nothing
	// arrives (default 2s), so a sender that starts late, or a broker that
	// restarted and lost its retained messages, learns where to resume.
	ReportEvery int
	ReportDelay time.Duration
	Heartbeat   time.Duration
	// OnProgress, when set, is called after every have report.
	OnProgress func(Progress)
	Logger     *slog.Logger
	Now        func() time.Time
}

// Progress is what a Receiver holds.
type Progress struct {
	Transfer   string
	Count      int   // chunks in the plan (0 while the chunk size is not known)
	Held       int   // chunks held, checked and on disk
	Bytes      int64 // bytes held
	Size       int64 // archive bytes
	Received   int   // chunk messages accepted since start
	Duplicates int   // chunks received again while already held
	Rejected   int   // chunk messages refused (corrupt, wrong plan)
	Resumed    int   // chunks found in the spool at start
	Reported   int   // chunks listed in the last have published
	Complete   bool
}

// Receiver receives one archive. Create it with NewReceiver and call Run.
type Receiver struct {
	o     ReceiverOptions
	dir   string
	tid   string
	log   *slog.Logger
	kick  chan struct{}
	final string

	mu       sync.Mutex
	plan     mqttapi.Plan // ChunkSize 0 until fixed
	set      *mqttapi.ChunkSet
	part     *os.File
	clog     *os.File
	sums     map[int]string // chunk index → sha256 hex, as logged
	prog     Progress
	pending  int       // chunks not yet reported
	firstNew time.Time // when the oldest unreported chunk arrived
	lastErr  string    // reported once in the next have
	complete bool
	stopped  bool // Run returned: late deliveries are ignored
}

// NewReceiver opens (or resumes) the spool of the transfer of o.Archive.
// Chunks found there are checked again against their logged sha256; those
// that do not match are dropped.
func NewReceiver(o ReceiverOptions) (*Receiver, error) {
	if o.Conn == nil || o.Dir == "" || o.Drone.ID == "" {
		return nil, fmt.Errorf("transfer: receiver needs Conn, Drone and Dir")
	}
	if err := mqttapi.ValidateDigest(o.Archive.Digest); err != nil {
		return nil, fmt.Errorf("transfer: archive: %w", err)
	}
	if o.Archive.Size <= 0 || o.Archive.Size > mqttapi.MaxArchiveSize {
		return nil, fmt.Errorf("transfer: archive size %d: %w", o.Archive.Size, mqttapi.ErrInvalid)
	}
	if o.ReportEvery <= 0 {
		o.ReportEvery = defaultEvery
	}
	if o.ReportDelay <= 0 {
		o.ReportDelay = 50 * time.Millisecond
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = discard()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	tid := o.Archive.TransferID()
	r := &Receiver{
		o: o, tid: tid, dir: filepath.Join(o.Dir, tid),
		log:  o.Logger.With("transfer", tid),
		kick: make(chan struct{}, 1),
		sums: map[int]string{},
	}
	r.prog = Progress{Transfer: tid, Size: o.Archive.Size}
	r.plan = mqttapi.Plan{Transfer: tid, Digest: o.Archive.Digest, Size: o.Archive.Size}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("transfer: spool: %w", err)
	}
	if err := r.open(); err != nil {
		r.closeFiles()
		return nil, err
	}
	return r, nil
}

// Path is where the verified archive is once Run returned without error.
func (r *Receiver) Path() string { return filepath.Join(r.dir, ArchiveFile) }

// Dir is the spool directory of this transfer.
func (r *Receiver) Dir() string { return r.dir }

// Progress returns the current figures.
func (r *Receiver) Progress() Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prog
}

// Remove deletes the spool directory of the transfer, archive included,
// and clears the retained have report (so that a later push of the same
// archive starts afresh); call it once the archive is loaded (or
// abandoned), after Run returned.
func (r *Receiver) Remove(ctx context.Context) error {
	r.mu.Lock()
	r.closeFiles()
	r.mu.Unlock()
	if err := os.RemoveAll(r.dir); err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	topic, err := r.o.Drone.TransferHave(r.tid)
	if err != nil {
		return err
	}
	if err := r.o.Conn.Publish(ctx, mqttc.Message{Topic: topic, QoS: 1, Retain: true}); err != nil {
		return fmt.Errorf("transfer: clear have report: %w", err)
	}
	return nil
}

func (r *Receiver) closeFiles() {
	if r.part != nil {
		r.part.Close()
		r.part = nil
	}
	if r.clog != nil {
		r.clog.Close()
		r.clog = nil
	}
}

type planJSON struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunk_size"`
}

// open loads the spool: a finished archive, or the plan, the part file and
// the chunk log.
func (r *Receiver) open() error {
	if ok, err := r.checkFinal(); err != nil || ok {
		return err
	}
	if b, err := os.ReadFile(filepath.Join(r.dir, planFile)); err == nil {
		var pj planJSON
		if json.Unmarshal(b, &pj) == nil && pj.Digest == r.plan.Digest && pj.Size == r.plan.Size {
			p := r.plan
			p.ChunkSize = pj.ChunkSize
			if p.Validate() == nil {
				r.plan = p
			}
		}
	}
	var err error
	r.part, err = os.OpenFile(filepath.Join(r.dir, partFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("transfer: spool: %w", err)
	}
	if r.plan.ChunkSize == 0 {
		// Nothing can be trusted without a plan: start clean.
		if err := r.part.Truncate(0); err != nil {
			return fmt.Errorf("transfer: spool: %w", err)
		}
		return r.rewriteLog()
	}
	r.set = mqttapi.NewChunkSet(r.plan.Count())
	r.prog.Count = r.plan.Count()
	if b, err := os.ReadFile(filepath.Join(r.dir, logFile)); err == nil {
		r.replay(b)
	}
	r.prog.Resumed = r.set.Held()
	r.prog.Held = r.set.Held()
	r.prog.Bytes = r.heldBytes()
	if r.prog.Resumed > 0 {
		r.log.Info("transfer resumed from spool", "held", r.prog.Held, "count", r.prog.Count, "bytes", r.prog.Bytes)
	}
	return r.rewriteLog()
}

// replay re-reads every logged chunk and keeps those whose bytes still
// match their sha256.
func (r *Receiver) replay(b []byte) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	buf := make([]byte, r.plan.ChunkSize)
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) != 2 || len(f[1]) != 64 {
			continue // a torn last line
		}
		i, err := strconv.Atoi(string(f[0]))
		if err != nil || i < 0 || i >= r.set.Count() || r.set.Has(i) {
			continue
		}
		off, n := r.plan.Bounds(i)
		if _, err := r.part.ReadAt(buf[:n], off); err != nil {
			continue
		}
		sum := sha256.Sum256(buf[:n])
		if hex.EncodeToString(sum[:]) != string(f[1]) {
			r.log.Warn("spooled chunk does not match its sha256; dropped", "index", i)
			continue
		}
		r.set.Add(i)
		r.sums[i] = string(f[1])
	}
}

// rewriteLog writes the log of the chunks held, compacted, atomically, and
// reopens it for appending.
func (r *Receiver) rewriteLog() error {
	if r.clog != nil {
		r.clog.Close()
		r.clog = nil
	}
	var b bytes.Buffer
	if r.set != nil {
		for i := 0; i < r.set.Count(); i++ {
			if r.set.Has(i) {
				fmt.Fprintf(&b, "%d %s\n", i, r.sums[i])
			}
		}
	}
	if err := writeAtomic(filepath.Join(r.dir, logFile), b.Bytes()); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(r.dir, logFile), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("transfer: spool: %w", err)
	}
	r.clog = f
	return nil
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("transfer: spool: %w", err)
	}
	if _, err := f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("transfer: spool: %w", err)
	}
	return nil
}

// checkFinal reports whether the verified archive is already in the spool.
func (r *Receiver) checkFinal() (bool, error) {
	f, err := os.Open(r.Path())
	if err != nil {
		return false, nil
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil || n != r.plan.Size || "sha256:"+hex.EncodeToString(h.Sum(nil)) != r.plan.Digest {
		r.log.Warn("spooled archive does not match the digest; starting again")
		os.Remove(r.Path())
		return false, nil
	}
	r.complete = true
	r.prog.Complete = true
	r.prog.Bytes = r.plan.Size
	if r.plan.ChunkSize == 0 {
		if b, err := os.ReadFile(filepath.Join(r.dir, planFile)); err == nil {
			var pj planJSON
			if json.Unmarshal(b, &pj) == nil {
				r.plan.ChunkSize = pj.ChunkSize
			}
		}
		if r.plan.Validate() != nil {
			r.plan.ChunkSize = mqttapi.DefaultChunkSize
		}
	}
	r.set = mqttapi.NewChunkSet(r.plan.Count())
	for i := 0; i < r.set.Count(); i++ {
		r.set.Add(i)
	}
	r.prog.Count, r.prog.Held, r.prog.Resumed = r.set.Count(), r.set.Count(), r.set.Count()
	return true, nil
}

func (r *Receiver) heldBytes() int64 {
	if r.set == nil {
		return 0
	}
	var n int64
	for _, rg := range r.set.Ranges() {
		for i := rg[0]; i < rg[1]; i++ {
			_, l := r.plan.Bounds(i)
			n += int64(l)
		}
	}
	return n
}

// Run subscribes to the transfer's chunks, reports what it holds, and
// returns the path of the archive once every chunk is held and the whole
// archive matches the signed digest. When ctx ends first it returns
// ctx.Err() and leaves the spool for a later Receiver to resume.
func (r *Receiver) Run(ctx context.Context) (string, error) {
	chunkTopic, err := r.o.Drone.TransferChunk(r.tid)
	if err != nil {
		return "", err
	}
	haveTopic, err := r.o.Drone.TransferHave(r.tid)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	done := r.complete
	r.stopped = false
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
	}()
	if !done {
		if err := r.o.Conn.Subscribe(ctx, chunkTopic, 1, r.onChunk); err != nil {
			return "", fmt.Errorf("transfer: %w", err)
		}
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			r.o.Conn.Unsubscribe(uctx, chunkTopic)
		}()
	}
	// Report at once: the first have tells the sender the subscription is in
	// place and where to start.
	lastReport := time.Time{}
	report := func() {
		if err := r.report(ctx, haveTopic); err != nil {
			r.log.Warn("have report not published", "err", err)
			return
		}
		lastReport = r.o.Now()
	}
	report()
	tick := time.NewTicker(r.o.ReportDelay)
	defer tick.Stop()
	for {
		r.mu.Lock()
		complete := r.set != nil && r.set.Complete()
		finished := r.complete
		due := r.pending >= r.o.ReportEvery || (r.pending > 0 && r.o.Now().Sub(r.firstNew) >= r.o.ReportDelay) || r.lastErr != ""
		r.mu.Unlock()
		switch {
		case finished:
			report()
			return r.Path(), nil
		case complete:
			if err := r.finish(); err != nil {
				if !errors.Is(err, ErrDigestMismatch) {
					return "", err
				}
				r.log.Error("archive rejected; dropped what does not match", "err", err)
			}
			continue
		case due || r.o.Now().Sub(lastReport) >= r.o.Heartbeat:
			report()
		}
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.sync()
			r.mu.Unlock()
			return "", ctx.Err()
		case <-r.kick:
		case <-tick.C:
		}
	}
}

// onChunk runs on the MQTT client's goroutines.
func (r *Receiver) onChunk(m mqttc.Message) {
	c, err := mqttapi.DecodeChunk(m.Payload)
	r.mu.Lock()
	defer r.mu.Unlock()
	reject := func(err error) {
		r.prog.Rejected++
		r.lastErr = err.Error()
		r.log.Warn("chunk rejected", "err", err)
		r.signal()
	}
	if err != nil {
		reject(err)
		return
	}
	if c.Digest != r.plan.Digest || c.Size != r.plan.Size {
		reject(fmt.Errorf("transfer: chunk %d of archive %s (%d bytes), want %s (%d bytes): %w", c.Index, c.Digest, c.Size, r.plan.Digest, r.plan.Size, ErrMismatch))
		return
	}
	if r.stopped {
		return
	}
	if r.complete || r.part == nil {
		r.prog.Duplicates++
		return
	}
	if r.set == nil {
		if err := r.fixPlan(c.ChunkSize); err != nil {
			reject(err)
			return
		}
	} else if c.ChunkSize != r.plan.ChunkSize {
		reject(fmt.Errorf("transfer: chunk %d of %d bytes, the spool holds chunks of %d: %w", c.Index, c.ChunkSize, r.plan.ChunkSize, ErrMismatch))
		return
	}
	if r.set.Has(c.Index) {
		r.prog.Duplicates++
		return
	}
	if _, err := r.part.WriteAt(c.Data, c.Offset); err != nil {
		reject(fmt.Errorf("transfer: spool write: %w", err))
		return
	}
	if _, err := fmt.Fprintf(r.clog, "%d %s\n", c.Index, c.SHA256); err != nil {
		reject(fmt.Errorf("transfer: spool log: %w", err))
		return
	}
	r.sums[c.Index] = c.SHA256
	r.set.Add(c.Index)
	r.prog.Received++
	r.prog.Held = r.set.Held()
	r.prog.Bytes += int64(c.Len)
	if r.pending == 0 {
		r.firstNew = r.o.Now()
	}
	r.pending++
	if r.pending >= r.o.ReportEvery || r.set.Complete() {
		r.signal()
	}
}

func (r *Receiver) signal() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// fixPlan adopts the sender's chunk size when nothing is held yet.
func (r *Receiver) fixPlan(chunkSize int) error {
	p := r.plan
	p.ChunkSize = chunkSize
	if err := p.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(planJSON{Digest: p.Digest, Size: p.Size, ChunkSize: chunkSize})
	if err := writeAtomic(filepath.Join(r.dir, planFile), b); err != nil {
		return err
	}
	if err := r.part.Truncate(p.Size); err != nil {
		return fmt.Errorf("transfer: spool: %w", err)
	}
	r.plan = p
	r.set = mqttapi.NewChunkSet(p.Count())
	r.prog.Count = p.Count()
	return nil
}

// sync makes everything written so far durable. Called with mu held.
func (r *Receiver) sync() error {
	if r.part == nil {
		return nil
	}
	if err := r.part.Sync(); err != nil {
		return fmt.Errorf("transfer: spool sync: %w", err)
	}
	if err := r.clog.Sync(); err != nil {
		return fmt.Errorf("transfer: spool sync: %w", err)
	}
	return nil
}

// report syncs the spool and publishes the have report, retained: nothing
// is reported before it is on disk.
func (r *Receiver) report(ctx context.Context, topic string) error {
	r.mu.Lock()
	if err := r.sync(); err != nil {
		r.mu.Unlock()
		return err
	}
	h := mqttapi.Have{
		Drone: r.o.Drone.ID, Transfer: r.tid, Digest: r.plan.Digest, Size: r.plan.Size,
		ChunkSize: r.plan.ChunkSize, Ranges: [][2]int{}, Bytes: r.prog.Bytes,
		Complete: r.complete, Error: r.lastErr, At: r.o.Now().UTC(),
	}
	if h.ChunkSize == 0 {
		h.ChunkSize = mqttapi.DefaultChunkSize
	}
	h.Count = h.Plan().Count()
	if r.set != nil {
		h.Ranges = r.set.Ranges()
	}
	held := r.prog.Held
	r.pending = 0
	r.lastErr = ""
	r.mu.Unlock()
	raw, err := h.Marshal()
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pubTimeout)
	defer cancel()
	if err := r.o.Conn.Publish(pctx, mqttc.Message{Topic: topic, Payload: raw, QoS: 1, Retain: true}); err != nil {
		r.mu.Lock()
		r.pending++ // try again
		r.mu.Unlock()
		return err
	}
	r.mu.Lock()
	r.prog.Reported = held
	p := r.prog
	r.mu.Unlock()
	if r.o.OnProgress != nil {
		r.o.OnProgress(p)
	}
	return nil
}

// finish checks the whole archive. On a match the part file becomes the
// archive; otherwise the chunks whose bytes no longer match their sha256
// are dropped, or all of them when each matches (the sender's chunks were
// self-consistent but not of the signed archive), and the error is
// reported.
func (r *Receiver) finish() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.sync(); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r.part, 0, r.plan.Size)); err != nil {
		return fmt.Errorf("transfer: spool read: %w", err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got == r.plan.Digest {
		r.closeFiles()
		if err := os.Rename(filepath.Join(r.dir, partFile), r.Path()); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
		os.Remove(filepath.Join(r.dir, logFile))
		r.complete = true
		r.prog.Complete = true
		r.log.Info("archive complete and verified", "bytes", r.plan.Size, "digest", r.plan.Digest)
		return nil
	}
	err := fmt.Errorf("transfer: archive is %s, the manifest says %s: %w", got, r.plan.Digest, ErrDigestMismatch)
	set := mqttapi.NewChunkSet(r.set.Count())
	buf := make([]byte, r.plan.ChunkSize)
	for i := 0; i < r.set.Count(); i++ {
		off, n := r.plan.Bounds(i)
		if _, rerr := r.part.ReadAt(buf[:n], off); rerr != nil {
			continue
		}
		sum := sha256.Sum256(buf[:n])
		if hex.EncodeToString(sum[:]) == r.sums[i] {
			set.Add(i)
		}
	}
	if set.Complete() {
		set = mqttapi.NewChunkSet(r.set.Count())
		clear(r.sums)
	}
	r.set = set
	r.prog.Held = set.Held()
	r.prog.Bytes = r.heldBytes()
	r.lastErr = err.Error()
	if werr := r.rewriteLog(); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}
