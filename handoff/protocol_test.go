package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"
)

// The harness runs v1 (Outgoing) and v2 (Incoming) in one process over a real
// socketpair, tick by tick, with a fake PWM authority that refuses writes
// without it, toy controllers, and a fake clock. Each harness step is one
// control tick: v1 runs its tick, then v2 runs its own. Between the two the
// harness waits until the frames one side sent have reached the other's ring,
// so the run is deterministic; nothing waits for a timeout in real time.

// fakeLock is the kernel lock both controllers share.
type fakeLock struct {
	holder int    // 0 nobody, 1 v1, 2 v2
	acq    [3]int // successful acquisitions per side
	seized int
}

type fakeAuth struct {
	l  *fakeLock
	id int
}

var _ Authority = (*fakeAuth)(nil)

func (a *fakeAuth) Release() error {
	if a.l.holder != a.id {
		return fmt.Errorf("controller %d releases an authority it does not hold", a.id)
	}
	a.l.holder = 0
	return nil
}

func (a *fakeAuth) Acquire(seize bool) error {
	switch {
	case a.l.holder == 0 || a.l.holder == a.id:
	case seize:
		a.l.seized++ // the previous holder is fenced: its writes fail from now on
	default:
		return ErrAuthorityBusy
	}
	a.l.holder = a.id
	a.l.acq[a.id]++
	return nil
}

// toyCtl is a one-number controller: x' = 0.9x + u, output = gain·x.
// Schema 1 is [x f64][tick u64]; schema 2 is [tick u64][x f64][filter f64].
type toyCtl struct {
	x      float64
	tick   uint64
	gain   float64
	schema int
	in     [8]byte
	out    [8]byte
}

func sensor(tick uint64) float64 { return math.Sin(float64(tick) * 0.05) }

func (c *toyCtl) step(u float64) {
	c.x = 0.9*c.x + u
}

func (c *toyCtl) outputs(dst []byte) []byte {
	return binary.LittleEndian.AppendUint64(dst, math.Float64bits(c.gain*c.x))
}

func (c *toyCtl) snapshot(dst []byte) ([]byte, uint64, error) {
	if c.schema == 1 {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(c.x))
		return binary.LittleEndian.AppendUint64(dst, c.tick), c.tick, nil
	}
	dst = binary.LittleEndian.AppendUint64(dst, c.tick)
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(c.x))
	return binary.LittleEndian.AppendUint64(dst, 0), c.tick, nil
}

func (c *toyCtl) install(state []byte, tick uint64) error {
	if c.schema != 2 || len(state) != 24 {
		return fmt.Errorf("want a 24-byte schema 2 state, got %d bytes", len(state))
	}
	if binary.LittleEndian.Uint64(state) != tick {
		return fmt.Errorf("state tick %d, snapshot tick %d", binary.LittleEndian.Uint64(state), tick)
	}
	c.tick = tick
	c.x = f64(state, 1)
	return nil
}

func toyMigrations() *Registry {
	r := NewRegistry()
	r.Register(1, 2, func(src, dst []byte) ([]byte, error) {
		if len(src) != 16 {
			return nil, errors.New("schema 1 state is 16 bytes")
		}
		dst = append(dst, src[8:16]...)
		dst = append(dst, src[0:8]...)
		return binary.LittleEndian.AppendUint64(dst, 0), nil
	})
	return r
}

func outVal(b []byte) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b)) }

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

type harness struct {
	t         *testing.T
	lock      fakeLock
	clock     fakeClock
	c1, c2    toyCtl
	a, b      *Conn // v1's and v2's ends
	out       *Outgoing
	in        *Incoming
	ocfg      OutgoingConfig
	icfg      IncomingConfig
	canSwitch func() bool
	envelope  func(tick uint64) error

	// faults
	v1dead, v1hung bool
	v2dead, v2hung bool
	v2hungAtSwitch bool             // v2 hangs as it receives the SWITCH
	v2badAfter     float64          // v2's gain once it writes (0: unchanged)
	onStep         func(h *harness) // before v1's half of a step
	afterV1        func(h *harness) // between v1's half and v2's

	// what happened
	steps   int
	writes  []write // every PWM write, in order (preallocated: the harness allocates nothing per tick)
	refused int     // writes attempted without the authority
}

type write struct {
	step int
	id   int
	tick uint64
}

func defaultTimeouts() Timeouts {
	return Timeouts{Hello: 10, Sync: 10, Shadow: 60, Window: 60, Ack: 3, Probation: 20, Stall: 3, Silence: 12, SeizeAfter: 1, Heartbeat: 5}
}

func newHarness(t *testing.T, mod func(h *harness)) *harness {
	t.Helper()
	h := &harness{t: t, writes: make([]write, 0, 8192)}
	h.clock.t = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	h.lock.holder = 1
	h.c1 = toyCtl{gain: 1, schema: 1, tick: 1000}
	h.c2 = toyCtl{gain: 1, schema: 2}
	h.canSwitch = func() bool { return true }
	h.envelope = func(uint64) error { return nil }
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.ocfg = OutgoingConfig{
		Version: "1.0.0", Schema: 1, Fields: []string{"x", "tick"}, ControlHz: 400,
		Authority: &fakeAuth{l: &h.lock, id: 1},
		Snapshot:  func(dst []byte) ([]byte, uint64, error) { return h.c1.snapshot(dst) },
		CanSwitch: func() bool { return h.canSwitch() },
		Follow: func(tick uint64, in, out []byte) error {
			if tick != h.c1.tick+1 {
				return fmt.Errorf("follow tick %d after %d", tick, h.c1.tick)
			}
			h.c1.tick = tick
			h.c1.step(outVal(in))
			return nil
		},
		Envelope: func(tick uint64) error { return h.envelope(tick) },
		Timeouts: defaultTimeouts(), Now: h.clock.now, Logger: log.With("side", "v1"),
	}
	h.icfg = IncomingConfig{
		Version: "2.0.0", Schema: 2, Needs: []string{"x"}, Warmup: 5, ControlHz: 400,
		Registry:  toyMigrations(),
		Authority: &fakeAuth{l: &h.lock, id: 2},
		Install:   func(state []byte, tick uint64) error { return h.c2.install(state, tick) },
		Step: func(tick uint64, in, dst []byte) ([]byte, error) {
			h.c2.tick = tick
			h.c2.step(outVal(in))
			return h.c2.outputs(dst), nil
		},
		Divergence: func(mine, theirs []byte) float64 { return math.Abs(outVal(mine) - outVal(theirs)) },
		Tolerance:  1e-9,
		Timeouts:   defaultTimeouts(), Now: h.clock.now, Logger: log.With("side", "v2"),
	}
	if mod != nil {
		mod(h)
	}
	var err error
	h.a, h.b, err = Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.a.Close(); h.b.Close(); h.a.Wait(); h.b.Wait() })
	if h.out, err = NewOutgoing(h.a, h.ocfg); err != nil {
		t.Fatal(err)
	}
	if h.in, err = NewIncoming(h.b, h.icfg); err != nil {
		t.Fatal(err)
	}
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// pwm is the write path: it refuses to write without the authority.
func (h *harness) pwm(id int, tick uint64) {
	if h.lock.holder != id {
		h.refused++
		h.t.Errorf("step %d: controller %d writes tick %d without the authority (holder %d)", h.steps, id, tick, h.lock.holder)
		return
	}
	h.writes = append(h.writes, write{h.steps, id, tick})
}

// settle waits until every frame from sends has reached to's ring (or to's
// reader has stopped).
func settle(t *testing.T, from, to *Conn) {
	deadline := time.Now().Add(5 * time.Second)
	for to.Stats().Arrived < from.Stats().Sent && !to.rdone.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("frames did not arrive: sent %d, arrived %d", from.Stats().Sent, to.Stats().Arrived)
		}
		time.Sleep(5 * time.Microsecond)
	}
}

func (h *harness) step() {
	if h.onStep != nil {
		h.onStep(h)
	}
	if !h.v1dead && !h.v1hung {
		if h.out.Tick() && !h.v1hung && !h.v1dead {
			c := &h.c1
			c.tick++
			u := sensor(c.tick)
			c.step(u)
			in := binary.LittleEndian.AppendUint64(c.in[:0], math.Float64bits(u))
			out := c.outputs(c.out[:0])
			h.pwm(1, c.tick)
			h.out.Wrote(c.tick, in, out)
		}
		settle(h.t, h.a, h.b)
	}
	if h.afterV1 != nil {
		h.afterV1(h)
	}
	if h.v2hungAtSwitch && h.out.switchSent {
		h.v2hung = true
	}
	h.v2Half()
	h.steps++
	h.clock.t = h.clock.t.Add(2500 * time.Microsecond)
}

// v2Half is v2's half of a step: its Tick and, holding the authority, its
// write.
func (h *harness) v2Half() {
	if !h.v2dead && !h.v2hung {
		if h.in.Tick() && !h.v2hung && !h.v2dead {
			c := &h.c2
			if h.v2badAfter != 0 {
				c.gain = h.v2badAfter
			}
			c.tick++
			u := sensor(c.tick)
			c.step(u)
			in := binary.LittleEndian.AppendUint64(c.in[:0], math.Float64bits(u))
			out := c.outputs(c.out[:0])
			h.pwm(2, c.tick)
			h.in.Wrote(c.tick, in, out)
		}
		settle(h.t, h.b, h.a)
	}
}

// run steps until cond or max steps; it returns the steps taken.
func (h *harness) run(max int, cond func() bool) int {
	for i := 0; i < max; i++ {
		if cond != nil && cond() {
			return i
		}
		h.step()
	}
	return max
}

func (h *harness) bothDone() bool {
	return (h.v1dead || h.out.Phase().Terminal() && !h.out.retaking) && (h.v2dead || h.v2hung || h.in.Phase().Terminal())
}

// killV1 is v1's process dying: its socket closes, the kernel drops its lock.
func (h *harness) killV1() {
	h.v1dead = true
	h.a.Close()
	if h.lock.holder == 1 {
		h.lock.holder = 0
	}
	seeEnd(h.t, h.b)
}

func (h *harness) killV2() {
	h.v2dead = true
	h.b.Close()
	if h.lock.holder == 2 {
		h.lock.holder = 0
	}
	seeEnd(h.t, h.a)
}

// seeEnd waits until c's reader has seen the connection end, as the kernel
// reports a dead peer at once.
func seeEnd(t *testing.T, c *Conn) {
	deadline := time.Now().Add(5 * time.Second)
	for !c.rdone.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the peer's end was not seen")
		}
		time.Sleep(5 * time.Microsecond)
	}
}

// checkOneWriter checks what exactly one writer means here. The authority
// (fakeLock) makes two writers at one instant impossible, and a write without
// it is counted in refused. Beyond that: the ticks written, in the order they
// were written, are consecutive (no tick written twice, none skipped, whoever
// wrote it); one controller writes at most once per step; and the steps in
// which nobody wrote are exactly allowedGaps. (Within one step v1 runs before
// v2, so the switch step holds v1's T-1 and v2's T.)
func (h *harness) checkOneWriter(allowedGaps int) {
	h.t.Helper()
	if h.refused != 0 {
		h.t.Errorf("%d writes refused for lack of authority", h.refused)
	}
	perStep := make([]int, h.steps)
	for i, w := range h.writes {
		if i > 0 {
			prev := h.writes[i-1]
			if w.tick != prev.tick+1 {
				h.t.Errorf("step %d: v%d wrote tick %d after v%d wrote %d", w.step, w.id, w.tick, prev.id, prev.tick)
			}
			if w.step == prev.step && (w.id == prev.id || prev.id != 1) {
				h.t.Errorf("step %d: v%d and v%d both wrote", w.step, prev.id, w.id)
			}
		}
		perStep[w.step]++
	}
	gaps := 0
	for _, n := range perStep {
		if n == 0 {
			gaps++
		}
	}
	if gaps != allowedGaps {
		h.t.Errorf("%d steps without a writer, want %d", gaps, allowedGaps)
	}
}

func (h *harness) lastWriter() int {
	if len(h.writes) == 0 {
		return 0
	}
	return h.writes[len(h.writes)-1].id
}

// gaps counts the steps without a write.
func (h *harness) gaps() int {
	seen := make([]bool, h.steps)
	for _, w := range h.writes {
		seen[w.step] = true
	}
	n := 0
	for _, s := range seen {
		if !s {
			n++
		}
	}
	return n
}

func TestHandoffHappyPath(t *testing.T) {
	h := newHarness(t, nil)
	h.run(200, h.bothDone)
	if p := h.out.Phase(); p != PhaseDone {
		t.Fatalf("v1 ended %v: %+v", p, h.out.Progress())
	}
	if p := h.in.Phase(); p != PhaseCommitted {
		t.Fatalf("v2 ended %v: %+v", p, h.in.Progress())
	}
	h.checkOneWriter(0)
	r1, r2 := h.out.Progress(), h.in.Progress()
	T := r1.SwitchTick
	if T == 0 || r2.SwitchTick != T {
		t.Fatalf("switch tick v1 %d, v2 %d", T, r2.SwitchTick)
	}
	// v1 wrote every tick up to T-1, v2 every tick from T on: no tick missed
	// or written twice.
	for i, w := range h.writes {
		if w.tick != 1001+uint64(i) {
			t.Fatalf("write %d is of tick %d", i, w.tick)
		}
		if (w.tick < T) != (w.id == 1) {
			t.Errorf("tick %d written by v%d, switch at %d", w.tick, w.id, T)
		}
	}
	if h.lock.holder != 2 || h.lock.acq[2] != 1 || h.lock.seized != 0 {
		t.Errorf("lock %+v", h.lock)
	}
	if r1.SnapshotBytes != 16 || r2.SnapshotBytes != 16 || r2.MigratedBytes != 24 || r1.SnapshotChunks != 1 {
		t.Errorf("snapshot figures v1 %d/%d, v2 %d→%d", r1.SnapshotBytes, r1.SnapshotChunks, r2.SnapshotBytes, r2.MigratedBytes)
	}
	if r2.TicksShadowed < 5 || !r2.Ready || r2.MaxDivergence > 1e-9 || r1.TicksShadowed == 0 {
		t.Errorf("shadow figures: v2 %d ticks, ready %v, max %g; v1 saw %d", r2.TicksShadowed, r2.Ready, r2.MaxDivergence, r1.TicksShadowed)
	}
	if r1.AckTicks < 0 || r1.AckTicks >= defaultTimeouts().Ack || r1.Probation < uint64(defaultTimeouts().Probation) {
		t.Errorf("ack ticks %d, probation ticks %d", r1.AckTicks, r1.Probation)
	}
	if r1.Durations.Hello <= 0 || r1.Durations.Sync <= 0 || r1.Durations.Shadow <= 0 || r1.Durations.Probation <= 0 {
		t.Errorf("v1 durations %+v", r1.Durations)
	}
	// v2 gets HELLO_ACK and the snapshot in one tick: its sync takes no tick.
	if r2.Durations.Hello <= 0 || r2.Durations.Shadow <= 0 || r2.Durations.Probation <= 0 {
		t.Errorf("v2 durations %+v", r2.Durations)
	}
	if r1.PeerVersion != "2.0.0" || r2.PeerVersion != "1.0.0" || r2.PeerSchema != 1 || r1.PeerSchema != 2 {
		t.Errorf("peers: %q schema %d / %q schema %d", r1.PeerVersion, r1.PeerSchema, r2.PeerVersion, r2.PeerSchema)
	}
	if r1.Writing || !r2.Writing || r1.Code != CodeNone || r2.Code != CodeNone || r2.PeerLost {
		t.Errorf("final reports v1 %+v\nv2 %+v", r1, r2)
	}
	// v1 followed v2's stream to the same state.
	if h.c1.tick != h.c2.tick-1 && h.c1.tick != h.c2.tick || math.Abs(h.c1.x-h.c2.x) > 1e-9 && h.c1.tick == h.c2.tick {
		t.Errorf("v1 followed to tick %d x %g; v2 at %d x %g", h.c1.tick, h.c1.x, h.c2.tick, h.c2.x)
	}
}

// The switch waits for a tick the flight phase allows.
func TestHandoffSwitchWaitsForFlightPhase(t *testing.T) {
	allowAt := 40
	h := newHarness(t, nil)
	h.canSwitch = func() bool { return h.steps >= allowAt }
	h.run(200, h.bothDone)
	if h.out.Phase() != PhaseDone || h.in.Phase() != PhaseCommitted {
		t.Fatalf("phases %v %v", h.out.Phase(), h.in.Phase())
	}
	if T := h.out.Progress().SwitchTick; T != 1001+uint64(allowAt)+1 {
		t.Errorf("switched at tick %d, the flight phase allowed it from tick %d", T, 1001+allowAt)
	}
	h.checkOneWriter(0)
}

func TestHandoffRefusedAtHello(t *testing.T) {
	for name, mod := range map[string]func(h *harness){
		"schema not migratable": func(h *harness) { h.icfg.Registry = NewRegistry() },
		"field missing":         func(h *harness) { h.icfg.Needs = []string{"x", "quaternion"} },
		"rate mismatch":         func(h *harness) { h.icfg.ControlHz = 250 },
		"warm-up too long":      func(h *harness) { h.ocfg.MaxWarmup = 3 },
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, mod)
			h.run(50, h.bothDone)
			r1, r2 := h.out.Progress(), h.in.Progress()
			if r1.Phase != PhaseAborted || r2.Phase != PhaseAborted || r1.Code != CodeIncompatible || r2.Code != CodeIncompatible {
				t.Fatalf("v1 %v %v %q; v2 %v %v %q", r1.Phase, r1.Code, r1.Detail, r2.Phase, r2.Code, r2.Detail)
			}
			if r1.SnapshotBytes != 0 || r2.SnapshotBytes != 0 {
				t.Error("a snapshot was sent to a refused standby")
			}
			if !r1.Writing || h.lock.acq[2] != 0 || h.lastWriter() != 1 {
				t.Error("v1 is not the one flying")
			}
			h.checkOneWriter(0)
			t.Logf("refused: %s", r1.Detail)
		})
	}
}

// A corrupted frame, in either direction, ends the handoff; v1 flies on.
func TestHandoffCorruptFrameAborts(t *testing.T) {
	for _, dir := range []string{"v1→v2", "v2→v1"} {
		t.Run(dir, func(t *testing.T) {
			h := newHarness(t, nil)
			h.canSwitch = func() bool { return false }
			h.onStep = func(h *harness) {
				if h.steps != 8 {
					return
				}
				c := h.a
				if dir == "v2→v1" {
					c = h.b
				}
				p := AppendFrame(nil, &Frame{Type: TypeHeartbeat, Seq: c.wseq + 1})
				p[HeaderLen-5] ^= 0x40 // a bit flip in the header
				rawSend(t, c, p)
			}
			h.run(60, h.bothDone)
			r1, r2 := h.out.Progress(), h.in.Progress()
			if r1.Phase != PhaseAborted || r2.Phase != PhaseAborted {
				t.Fatalf("phases v1 %v (%q), v2 %v (%q)", r1.Phase, r1.Detail, r2.Phase, r2.Detail)
			}
			want := r2
			if dir == "v2→v1" {
				want = r1
			}
			if want.Code != CodeProtocol || !strings.Contains(want.Detail, "CRC") {
				t.Errorf("receiver's reason %v %q", want.Code, want.Detail)
			}
			if h.lock.acq[2] != 0 || h.lastWriter() != 1 {
				t.Error("v1 is not flying")
			}
			h.checkOneWriter(0)
		})
	}
}

// v2 hangs as the SWITCH arrives: v1 retakes after Ack ticks.
func TestHandoffNoAckRetakes(t *testing.T) {
	h := newHarness(t, nil)
	h.afterV1 = func(h *harness) {
		if h.out.switchSent && !h.v2hung {
			h.v2hung = true
		}
	}
	h.run(100, h.bothDone)
	r1 := h.out.Progress()
	if r1.Phase != PhaseAborted || r1.Code != CodeNoAck || !r1.Writing {
		t.Fatalf("v1 %v %v writing=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Detail)
	}
	if r1.Seized || h.lock.acq[2] != 0 || h.lock.holder != 1 {
		t.Errorf("lock %+v seized=%v", h.lock, r1.Seized)
	}
	// v1 wrote nothing for Ack-1 ticks (T .. T+Ack-2) and wrote again on the Ack-th.
	h.checkOneWriter(defaultTimeouts().Ack - 1)
	if h.lastWriter() != 1 {
		t.Error("v1 is not flying")
	}
}

// v2 takes the authority but hangs before it writes and acknowledges: v1
// must seize it back.
func TestHandoffAckLostAfterAcquireSeizes(t *testing.T) {
	h := newHarness(t, nil)
	// v2 acquires inside Tick and then hangs before its write: make the
	// acquisition the last thing it does.
	h.icfg.Authority = &hangAfterAcquire{fakeAuth: fakeAuth{l: &h.lock, id: 2}, h: h}
	h.in.cfg.Authority = h.icfg.Authority
	h.run(100, h.bothDone)
	r1 := h.out.Progress()
	if r1.Phase != PhaseAborted || r1.Code != CodeNoAck || !r1.Writing || !r1.Seized {
		t.Fatalf("v1 %v %v writing=%v seized=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Seized, r1.Detail)
	}
	if h.lock.holder != 1 || h.lock.seized != 1 {
		t.Errorf("lock %+v", h.lock)
	}
	// Ack-1 ticks waiting, then one polite attempt (SeizeAfter=1) before the seize.
	h.checkOneWriter(defaultTimeouts().Ack - 1 + 1)
}

type hangAfterAcquire struct {
	fakeAuth
	h *harness
}

func (a *hangAfterAcquire) Acquire(seize bool) error {
	err := a.fakeAuth.Acquire(seize)
	if err == nil {
		a.h.v2hung = true // the process hangs right after taking the lock
	}
	return err
}

// v2 stalls in probation: v1 rolls back after Stall ticks (seizing from the
// hung v2) and flies on.
func TestHandoffStallInProbationRollsBack(t *testing.T) {
	h := newHarness(t, nil)
	h.onStep = func(h *harness) {
		if h.out.Phase() == PhaseProbation && h.out.rep.Probation == 5 {
			h.v2hung = true
		}
	}
	h.run(200, h.bothDone)
	r1 := h.out.Progress()
	if r1.Phase != PhaseRolledBack || r1.Code != CodeStall || !r1.Writing || !r1.Seized {
		t.Fatalf("v1 %v %v writing=%v seized=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Seized, r1.Detail)
	}
	// Stall ticks without v2's write, then one polite attempt before seizing.
	h.checkOneWriter(defaultTimeouts().Stall + 1)
	if h.lastWriter() != 1 {
		t.Error("v1 is not flying")
	}
}

// v2 crashes in probation: the connection ends, the kernel frees the lock,
// and v1 takes it back at once without seizing.
func TestHandoffV2CrashInProbationRollsBack(t *testing.T) {
	h := newHarness(t, nil)
	h.onStep = func(h *harness) {
		if h.out.Phase() == PhaseProbation && h.out.rep.Probation == 5 && !h.v2dead {
			h.killV2()
		}
	}
	h.run(200, h.bothDone)
	r1 := h.out.Progress()
	if r1.Phase != PhaseRolledBack || r1.Code != CodePeerLost || !r1.Writing || r1.Seized {
		t.Fatalf("v1 %v %v writing=%v seized=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Seized, r1.Detail)
	}
	h.checkOneWriter(0)
}

// v2 leaves the envelope after the switch: v1 rolls back, v2 gives the
// authority up on ROLLBACK and stops writing.
func TestHandoffEnvelopeRollsBack(t *testing.T) {
	h := newHarness(t, nil)
	var lastOut float64
	h.ocfg.Follow = nil
	h.out.cfg.Follow = func(tick uint64, in, out []byte) error {
		h.c1.tick = tick
		h.c1.step(outVal(in))
		lastOut = outVal(out)
		return nil
	}
	h.envelope = func(tick uint64) error {
		if math.Abs(lastOut-h.c1.gain*h.c1.x) > 0.5 {
			return fmt.Errorf("tick %d: output %.2f, v1 would write %.2f", tick, lastOut, h.c1.gain*h.c1.x)
		}
		return nil
	}
	h.onStep = func(h *harness) {
		if h.in.Phase() == PhaseActive && h.in.rep.Probation == 4 {
			h.v2badAfter = 5
		}
	}
	h.run(200, h.bothDone)
	r1, r2 := h.out.Progress(), h.in.Progress()
	if r1.Phase != PhaseRolledBack || r1.Code != CodeEnvelope || !r1.Writing {
		t.Fatalf("v1 %v %v writing=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Detail)
	}
	if r2.Phase != PhaseRolledBack || r2.Writing || r2.Code != CodeEnvelope {
		t.Fatalf("v2 %v %v writing=%v: %q", r2.Phase, r2.Code, r2.Writing, r2.Detail)
	}
	if h.lock.holder != 1 {
		t.Errorf("lock %+v", h.lock)
	}
	// v2 released on ROLLBACK within its tick, so v1's polite attempt on the
	// next tick succeeds: one tick without a writer at most.
	gaps := h.gaps()
	if gaps > 1+defaultTimeouts().SeizeAfter {
		t.Errorf("%d ticks without a writer", gaps)
	}
	h.checkOneWriter(gaps)
	t.Logf("rolled back: %s (seized=%v, %d ticks without a writer)", r1.Detail, r1.Seized, gaps)
}

// The race behind a flaky TestHandoffEnvelopeRollback (flightctl): v1 polls
// (v2's tick T-1), and while it decides to roll back, v2's tick runs on the
// other core: no ROLLBACK yet, so v2 writes T and sends TICK(T). v2 releases
// on the ROLLBACK at its next tick, and v1's retake succeeds. v1 must follow
// TICK(T) before it writes, or it writes T a second time.
func TestHandoffRollbackFollowsTicksWrittenMeanwhile(t *testing.T) {
	h := newHarness(t, nil)
	fired := false
	h.envelope = func(tick uint64) error {
		if h.out.rep.Probation < 5 || fired {
			return nil
		}
		fired = true
		h.v2Half() // v2's tick, concurrent with v1's between its poll and its ROLLBACK
		return fmt.Errorf("tick %d: out of the envelope", tick)
	}
	h.run(200, h.bothDone)
	r1, r2 := h.out.Progress(), h.in.Progress()
	if r1.Phase != PhaseRolledBack || r1.Code != CodeEnvelope || !r1.Writing {
		t.Fatalf("v1 %v %v writing=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Detail)
	}
	if r2.Phase != PhaseRolledBack || r2.Writing {
		t.Fatalf("v2 %v writing=%v", r2.Phase, r2.Writing)
	}
	if r1.Drained != 1 {
		t.Errorf("v1 drained %d ticks after the retake, want 1", r1.Drained)
	}
	// v2 wrote T in v1's step; v1 writes T+1 two steps later (v2 releases
	// on the ROLLBACK in the step after, v1 retakes in the next).
	h.checkOneWriter(h.gaps())
	if h.gaps() > 1+defaultTimeouts().SeizeAfter {
		t.Errorf("%d ticks without a writer", h.gaps())
	}
}

// No-ack abort crossing the ack: after v1's last poll, and before v2 sees
// the ABORT, v2 takes the authority, writes T, sends SWITCH_ACK(T) and
// TICK(T), and hangs. v1 seizes, and must follow T from the drain (the
// stream starts at the SWITCH_ACK) before it writes T+1.
func TestHandoffNoAckCrossingAckFollowsT(t *testing.T) {
	h := newHarness(t, nil)
	h.v2hungAtSwitch = true
	crossed := false
	h.out.cfg.Authority = &hookAuth{fakeAuth: fakeAuth{l: &h.lock, id: 1}, before: func() {
		if crossed || !h.out.switchSent {
			return
		}
		crossed = true
		// v2's tick, run concurrently with v1's: it polled before the ABORT.
		if err := h.lock2().Acquire(false); err != nil {
			t.Fatal(err)
		}
		T := h.out.switchT
		h.c2.tick = T
		h.pwm(2, T)
		in := binary.LittleEndian.AppendUint64(nil, math.Float64bits(sensor(T)))
		for _, f := range []Frame{{Type: TypeSwitchAck, Tick: T}, {Type: TypeTick, Tick: T, Inputs: in, Outputs: h.c2.outputs(nil)}} {
			if err := h.b.Send(&f); err != nil {
				t.Fatal(err)
			}
		}
		settle(t, h.b, h.a)
	}}
	h.run(100, func() bool { return h.out.Phase().Terminal() && !h.out.retaking })
	h.run(5, nil)
	r1 := h.out.Progress()
	if r1.Phase != PhaseAborted || r1.Code != CodeNoAck || !r1.Writing || !r1.Seized {
		t.Fatalf("v1 %v %v writing=%v seized=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Seized, r1.Detail)
	}
	if r1.Drained != 1 {
		t.Errorf("v1 drained %d ticks after the retake, want 1", r1.Drained)
	}
	h.checkOneWriter(h.gaps())
}

func (h *harness) lock2() *fakeAuth { return &fakeAuth{l: &h.lock, id: 2} }

// hookAuth runs before ahead of each Acquire.
type hookAuth struct {
	fakeAuth
	before func()
}

func (a *hookAuth) Acquire(seize bool) error {
	a.before()
	return a.fakeAuth.Acquire(seize)
}

// v1 dies in shadow: v2 stays standby, never takes the authority, and ends.
func TestHandoffV1DiesInShadow(t *testing.T) {
	h := newHarness(t, nil)
	h.canSwitch = func() bool { return false }
	h.onStep = func(h *harness) {
		if h.in.Phase() == PhaseShadow && h.in.rep.TicksShadowed == 7 && !h.v1dead {
			h.killV1()
		}
	}
	h.run(100, h.bothDone)
	r2 := h.in.Progress()
	if r2.Phase != PhaseAborted || r2.Code != CodePeerLost || r2.Writing {
		t.Fatalf("v2 %v %v writing=%v: %q", r2.Phase, r2.Code, r2.Writing, r2.Detail)
	}
	if h.lock.acq[2] != 0 {
		t.Error("v2 took the authority without a SWITCH")
	}
}

// v1 hangs in shadow (its socket stays open): v2 gives up after Silence
// ticks, still without the authority.
func TestHandoffV1HangsInShadow(t *testing.T) {
	h := newHarness(t, nil)
	h.canSwitch = func() bool { return false }
	h.onStep = func(h *harness) {
		if h.in.Phase() == PhaseShadow && h.in.rep.TicksShadowed == 7 {
			h.v1hung = true
		}
	}
	n := h.run(100, func() bool { return h.in.Phase().Terminal() })
	r2 := h.in.Progress()
	if r2.Phase != PhaseAborted || r2.Code != CodePeerLost || h.lock.acq[2] != 0 {
		t.Fatalf("v2 %v %v, acquisitions %d: %q", r2.Phase, r2.Code, h.lock.acq[2], r2.Detail)
	}
	if n > 7+defaultTimeouts().Silence+5 {
		t.Errorf("v2 took %d steps to give up", n)
	}
}

// v1 dies during probation: v2 holds the authority and flies on alone.
func TestHandoffV1DiesInProbation(t *testing.T) {
	h := newHarness(t, nil)
	h.onStep = func(h *harness) {
		if h.out.Phase() == PhaseProbation && h.out.rep.Probation == 5 && !h.v1dead {
			h.killV1()
		}
	}
	h.run(100, h.bothDone)
	r2 := h.in.Progress()
	if r2.Phase != PhaseCommitted || !r2.PeerLost || !r2.Writing || h.lock.holder != 2 {
		t.Fatalf("v2 %v peerLost=%v writing=%v: %q", r2.Phase, r2.PeerLost, r2.Writing, r2.Detail)
	}
	h.checkOneWriter(0)
	if h.lastWriter() != 2 {
		t.Error("v2 is not flying")
	}
}

// Each phase ends on its own timeout when the peer stays connected but does
// not move on.
func TestHandoffPhaseTimeouts(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(h *harness)
		side  int // whose report to check
		code  Code
		phase Phase
		words string
	}{
		{"v1 hello: v2 never answers", func(h *harness) {
			h.ocfg.Timeouts.Silence = 1000
			h.v2hung = true
		}, 1, CodeTimeout, PhaseAborted, "hello"},
		{"v2 hello: v1 never says HELLO", func(h *harness) {
			h.icfg.Timeouts.Silence = 1000
			h.v1hung = true
		}, 2, CodeTimeout, PhaseAborted, "hello"},
		{"v1 sync: v2 never installs", func(h *harness) {
			h.ocfg.Timeouts.Silence = 1000
			h.afterV1 = func(h *harness) { h.v2hung = h.v2hung || h.out.Phase() == PhaseSync }
		}, 1, CodeTimeout, PhaseAborted, "sync"},
		{"v1 shadow: v2 never ready", func(h *harness) {
			h.c2.gain = 1.5 // wrong gains: diverges
		}, 1, CodeTimeout, PhaseAborted, "not ready"},
		{"v1 switch window: the flight phase never allows it", func(h *harness) {
			h.canSwitch = func() bool { return false }
			h.icfg.Timeouts.Shadow = 1000
		}, 1, CodeFlightPhase, PhaseAborted, "flight phase"},
		{"v2 shadow: no SWITCH ever", func(h *harness) {
			h.canSwitch = func() bool { return false }
			h.ocfg.Timeouts.Window = 1000
		}, 2, CodeTimeout, PhaseAborted, "no SWITCH"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.mod)
			n := h.run(400, func() bool {
				if c.side == 1 {
					return h.out.Phase().Terminal()
				}
				return h.in.Phase().Terminal()
			})
			r := h.out.Progress()
			if c.side == 2 {
				r = h.in.Progress()
			}
			if r.Phase != c.phase || r.Code != c.code || !strings.Contains(r.Detail, c.words) {
				t.Fatalf("after %d steps: %v %v %q", n, r.Phase, r.Code, r.Detail)
			}
			if n >= 400 {
				t.Fatal("no timeout")
			}
			if h.lock.acq[2] != 0 || h.lock.holder != 1 {
				t.Errorf("lock %+v", h.lock)
			}
		})
	}
}

// The agent's abort command: before the switch it aborts, in probation it
// rolls back.
func TestHandoffAbortCommand(t *testing.T) {
	t.Run("shadow", func(t *testing.T) {
		h := newHarness(t, nil)
		h.canSwitch = func() bool { return false }
		h.onStep = func(h *harness) {
			if h.steps == 10 {
				h.out.Abort("operator said so")
			}
		}
		h.run(50, h.bothDone)
		r1, r2 := h.out.Progress(), h.in.Progress()
		if r1.Phase != PhaseAborted || r1.Code != CodeOperator || r2.Phase != PhaseAborted || r2.Code != CodeOperator {
			t.Fatalf("v1 %v %v, v2 %v %v", r1.Phase, r1.Code, r2.Phase, r2.Code)
		}
		h.checkOneWriter(0)
	})
	t.Run("probation", func(t *testing.T) {
		h := newHarness(t, nil)
		h.onStep = func(h *harness) {
			if h.out.Phase() == PhaseProbation && h.out.rep.Probation == 3 {
				h.in.Abort("v2's own abort")
			}
		}
		h.run(100, h.bothDone)
		r1, r2 := h.out.Progress(), h.in.Progress()
		if r1.Phase != PhaseRolledBack || r1.Code != CodeOperator || !r1.Writing || r2.Phase != PhaseRolledBack || r2.Writing {
			t.Fatalf("v1 %v %v, v2 %v %v", r1.Phase, r1.Code, r2.Phase, r2.Code)
		}
		if h.lock.holder != 1 || h.lock.seized != 0 {
			t.Errorf("lock %+v", h.lock)
		}
	})
}

// A snapshot larger than one packet is split and reassembled.
func TestHandoffLargeSnapshot(t *testing.T) {
	const size = 3*MaxChunk + 100
	h := newHarness(t, func(h *harness) {
		h.ocfg.Snapshot = func(dst []byte) ([]byte, uint64, error) {
			dst, tick, _ := h.c1.snapshot(dst)
			for i := 0; i < size-16; i++ {
				dst = append(dst, byte(i))
			}
			return dst, tick, nil
		}
		h.icfg.Registry = NewRegistry()
		h.icfg.Registry.Register(1, 2, func(src, dst []byte) ([]byte, error) {
			if len(src) != size {
				return nil, fmt.Errorf("got %d bytes", len(src))
			}
			for i, b := range src[16:] {
				if b != byte(i) {
					return nil, fmt.Errorf("byte %d is %d", i, b)
				}
			}
			return toyMigrations().Migrate(src[:16], 1, 2)
		})
	})
	h.run(200, h.bothDone)
	r1, r2 := h.out.Progress(), h.in.Progress()
	if r1.Phase != PhaseDone || r2.Phase != PhaseCommitted {
		t.Fatalf("v1 %v %q, v2 %v %q", r1.Phase, r1.Detail, r2.Phase, r2.Detail)
	}
	if r1.SnapshotChunks != 4 || r2.SnapshotChunks != 4 || r2.SnapshotBytes != size {
		t.Errorf("chunks %d/%d, bytes %d", r1.SnapshotChunks, r2.SnapshotChunks, r2.SnapshotBytes)
	}
}

// The per-tick path of both sides allocates nothing, in shadow and in
// probation.
func TestHandoffTickZeroAllocs(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		h.ocfg.Logger, h.icfg.Logger = nil, nil
		h.ocfg.Timeouts.Shadow, h.ocfg.Timeouts.Window = 100000, 100000
		h.icfg.Timeouts.Shadow, h.icfg.Timeouts.Window = 100000, 100000
		h.ocfg.Timeouts.Probation = 100000
	})
	allowed := false
	h.canSwitch = func() bool { return allowed }
	h.run(20, nil)
	if h.out.Phase() != PhaseSwitch || h.in.Phase() != PhaseShadow {
		t.Fatalf("phases %v %v", h.out.Phase(), h.in.Phase())
	}
	if a := testing.AllocsPerRun(300, h.step); a != 0 {
		t.Errorf("shadow: %v allocations per tick", a)
	}
	allowed = true
	h.run(10, nil)
	if h.out.Phase() != PhaseProbation || h.in.Phase() != PhaseActive {
		t.Fatalf("phases %v %v", h.out.Phase(), h.in.Phase())
	}
	if a := testing.AllocsPerRun(300, h.step); a != 0 {
		t.Errorf("probation: %v allocations per tick", a)
	}
}

// v1 dies right after sending SWITCH: v2 still has the SWITCH, the kernel
// freed the lock, so v2 takes over and flies on alone.
func TestHandoffV1DiesAfterSwitch(t *testing.T) {
	h := newHarness(t, nil)
	h.afterV1 = func(h *harness) {
		if h.out.switchSent && !h.v1dead {
			h.killV1()
		}
	}
	h.run(50, func() bool { return h.in.Phase().Terminal() })
	r2 := h.in.Progress()
	if r2.Phase != PhaseCommitted || !r2.PeerLost || !r2.Writing || h.lock.holder != 2 {
		t.Fatalf("v2 %v peerLost=%v writing=%v: %q", r2.Phase, r2.PeerLost, r2.Writing, r2.Detail)
	}
	h.checkOneWriter(0)
}

// v2 dies before the switch: v1 sees the connection end and flies on.
func TestHandoffV2DiesBeforeSwitch(t *testing.T) {
	for _, at := range []Phase{PhaseHello, PhaseSync, PhaseShadow} {
		t.Run(at.String(), func(t *testing.T) {
			h := newHarness(t, nil)
			h.canSwitch = func() bool { return false }
			h.afterV1 = func(h *harness) {
				if h.out.Phase() == at && !h.v2dead {
					h.killV2()
				}
			}
			h.run(50, func() bool { return h.out.Phase().Terminal() })
			r1 := h.out.Progress()
			if r1.Phase != PhaseAborted || r1.Code != CodePeerLost || !r1.Writing {
				t.Fatalf("v1 %v %v writing=%v: %q", r1.Phase, r1.Code, r1.Writing, r1.Detail)
			}
			h.checkOneWriter(0)
		})
	}
}
