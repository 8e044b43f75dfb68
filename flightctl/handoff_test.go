package flightctl

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/handoff"
	"github.com/inflight-ota/inflight/hw/pwmlock"
	"github.com/inflight-ota/inflight/sim/physics"
)

// hoverState is a state in steady hover at 2 m, from a closed-loop flight.
func hoverState(t *testing.T) State {
	t.Helper()
	var st State
	flyLoop(t, loopOpts{mission: "takeoff:2m,hover:30s,land", seed: 5, maxTime: 10,
		onTick: func(tm float64, s *State, q *physics.Quad) { st = *s }})
	if st.Mode != ModeHover || !st.Airborne {
		t.Fatalf("no hover state: mode %v", st.Mode)
	}
	return st
}

// stillIMU reads a level, still drone; bad (set by the test) adds a body
// rate once its loop drives the motors.
type stillIMU struct {
	l   *Loop
	bad bool
	g   float64
}

func (m *stillIMU) ReadIMU(a, g *[3]float64) error {
	*a = [3]float64{0, 0, m.g}
	*g = [3]float64{}
	if m.bad && m.l.Role == RoleActive {
		g[0] = 5 // 286 °/s: outside v1's envelope
	}
	return nil
}

// steadyBaro gives a new sample every 16 calls at the pressure of alt.
type steadyBaro struct {
	pa  float64
	n   uint64
	seq uint64
}

func (b *steadyBaro) Get() (float64, float64, uint64, bool) {
	b.n++
	if b.n%16 == 0 {
		b.seq++
	}
	return b.pa, 15, b.seq, false
}

type write struct {
	who  string
	tick uint64
	at   time.Duration
}

// recSink records every write; a write without the authority is a violation.
type recSink struct {
	who   string
	l     *Loop
	lock  *pwmlock.Lock
	mu    *sync.Mutex
	log   *[]write
	viols *int
	clk   Clock
}

func (s *recSink) Write(out *Outputs) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lock.Held() {
		*s.viols++
		return ErrNoAuthority
	}
	*s.log = append(*s.log, write{s.who, s.l.St.Tick, s.clk.Now()})
	return nil
}

type side2 struct {
	l    *Loop
	h    *hand
	lock *pwmlock.Lock
	imu  *stillIMU
	done chan error
	ctx  context.Context
}

type pair struct {
	v1, v2 side2
	mu     sync.Mutex
	writes []write
	viols  int
	cancel context.CancelFunc
}

// newPair runs two controllers in this process, v1 active with the lock and
// v2 a standby listening on its handoff socket, each on its own locked
// thread and real clock, as flightctl.Run wires them.
func newPair(t *testing.T, schema1, schema2 int, o2 HandoffOptions) *pair {
	t.Helper()
	dir := t.TempDir()
	st := hoverState(t)
	p := DefaultParams()
	ref := st.Est.BaroRef
	pa := ref * math.Pow(1-st.Ctl.TargetAlt/44330, 5.255)
	ctx, cancel := context.WithCancel(context.Background())
	pr := &pair{cancel: cancel}
	t.Cleanup(func() {
		cancel()
		for _, s := range []side2{pr.v1, pr.v2} {
			if s.done != nil {
				<-s.done
			}
			s.lock.Release()
		}
	})
	log := slog.New(slog.DiscardHandler)
	mk := func(who string, schema int, role Role, ho HandoffOptions, st State) side2 {
		pp := p
		pp.Schema = schema
		clk := &NanoClock{}
		imu := &stillIMU{g: p.Gravity}
		lock := pwmlock.New(dir)
		src := &SensorSource{Clock: clk, Period: 2500 * time.Microsecond, IMU: imu, Baro: &steadyBaro{pa: pa}}
		l := NewLoop(&st, &pp, src, nil, clk)
		l.Role = role
		imu.l = l
		l.Sink = &recSink{who: who, l: l, lock: lock, mu: &pr.mu, log: &pr.writes, viols: &pr.viols, clk: clk}
		lctx, lcancel := context.WithCancel(ctx)
		h, err := newHand(l, lock, ho, log.With("side", who), who, schema, dir, 400, lcancel)
		if err != nil {
			t.Fatal(err)
		}
		src.Gate, l.Obs = h, h
		return side2{l: l, h: h, lock: lock, imu: imu, done: make(chan error, 1), ctx: lctx}
	}
	pr.v1 = mk("v1", schema1, RoleActive, HandoffOptions{}, st)
	if ok, err := pr.v1.lock.TryAcquire(); !ok || err != nil {
		t.Fatalf("v1 lock: %v %v", ok, err)
	}
	pr.v2 = mk("v2", schema2, RoleStandby, o2, State{})
	go func() {
		_ = pr.v2.h.listen(ctx, filepath.Join(dir, HandoffSocketNameOf("v2")))
	}()
	for _, s := range []side2{pr.v1, pr.v2} {
		go func() {
			runtime.LockOSThread()
			s.done <- s.l.Run(s.ctx)
		}()
	}
	return pr
}

func (pr *pair) start(t *testing.T, probation time.Duration) {
	t.Helper()
	req := fmt.Sprintf(`{"v":1,"cmd":"handoff_start","to":"%s","peer":"v2","probation_ms":%d}`, HandoffSocketNameOf("v2"), probation.Milliseconds())
	var r Request
	json.Unmarshal([]byte(req), &r)
	r.Raw = []byte(req)
	var err error
	for i := 0; i < 100; i++ { // the standby's socket appears when it listens
		if _, err = pr.v1.h.start(context.Background(), &r); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal(err)
}

// wait returns both sides' reports once both ended (or after d).
func (pr *pair) wait(t *testing.T, d time.Duration) (r1, r2 HandoffProgress) {
	t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		r1, _ = pr.v1.h.progress()
		r2, _ = pr.v2.h.progress()
		if r1.Phase.Terminal() && r2.Phase.Terminal() && (r1.Writing || r1.Phase == handoff.PhaseDone) {
			time.Sleep(50 * time.Millisecond) // a few more ticks of whoever flies
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("handoff did not end: v1 %v, v2 %v", r1.Phase, r2.Phase)
	return
}

// checkOneWriter: every tick written exactly once, in order, by one writer
// at a time; returns the sequence of writers and the longest gap between
// consecutive writes.
func (pr *pair) checkOneWriter(t *testing.T) ([]string, time.Duration) {
	t.Helper()
	pr.mu.Lock()
	w := append([]write(nil), pr.writes...)
	viols := pr.viols
	pr.mu.Unlock()
	if viols != 0 {
		t.Errorf("%d writes attempted without the authority", viols)
	}
	sort.SliceStable(w, func(i, j int) bool { return w[i].at < w[j].at })
	var runs []string
	var gap time.Duration
	for i := range w {
		if i == 0 || w[i].who != w[i-1].who {
			runs = append(runs, w[i].who)
		}
		if i > 0 {
			if w[i].tick != w[i-1].tick+1 {
				t.Errorf("write %d: tick %d by %s after tick %d by %s: not consecutive", i, w[i].tick, w[i].who, w[i-1].tick, w[i-1].who)
			}
			gap = max(gap, w[i].at-w[i-1].at)
		}
	}
	return runs, gap
}

// Invariants: exactly one PWM writer across the switch, no missed tick
// (the written ticks are consecutive), a bounded switch; migration 1→2 on
// live state; v1 exits after probation.
func TestHandoffSwitchOneWriter(t *testing.T) {
	pr := newPair(t, SchemaVersion, SchemaV2, HandoffOptions{})
	time.Sleep(50 * time.Millisecond)
	pr.start(t, 300*time.Millisecond)
	r1, r2 := pr.wait(t, 5*time.Second)
	if r1.Phase != handoff.PhaseDone || r2.Phase != handoff.PhaseCommitted {
		t.Fatalf("v1 %v (%v %s), v2 %v (%v %s); want done, committed", r1.Phase, r1.Code, r1.Detail, r2.Phase, r2.Code, r2.Detail)
	}
	select {
	case <-pr.v1.done:
		pr.v1.done <- nil
	case <-time.After(time.Second):
		t.Error("v1's loop did not stop after probation")
	}
	runs, gap := pr.checkOneWriter(t)
	if len(runs) != 2 || runs[0] != "v1" || runs[1] != "v2" {
		t.Errorf("writers %v, want [v1 v2]", runs)
	}
	if gap > 50*time.Millisecond {
		t.Errorf("longest gap between writes %v: the switch is not bounded", gap)
	}
	if r2.MigratedBytes != StateSizeOf(SchemaV2) || r2.PeerSchema != SchemaVersion {
		t.Errorf("v2 migrated %d bytes from schema %d", r2.MigratedBytes, r2.PeerSchema)
	}
	if r2.MaxDivergence > 1e-6 {
		t.Errorf("shadow divergence %g µs between schema 1 and schema 2 on the same inputs", r2.MaxDivergence)
	}
	if r2.ControlGapMS <= 0 || r1.ControlGapMS <= 0 {
		t.Errorf("control gap not measured: v1 %v v2 %v", r1.ControlGapMS, r2.ControlGapMS)
	}
	t.Logf("gap %v, control gap %.3f ms, durations %+v", gap, r2.ControlGapMS, r2.Durations)
}

// Invariant: a failure after the switch rolls back to v1 in probation, and
// still exactly one writer at any time.
func TestHandoffEnvelopeRollback(t *testing.T) {
	pr := newPair(t, SchemaV2, SchemaVersion, HandoffOptions{})
	pr.v2.imu.bad = true
	time.Sleep(50 * time.Millisecond)
	pr.start(t, 2*time.Second)
	r1, r2 := pr.wait(t, 5*time.Second)
	if r1.Phase != handoff.PhaseRolledBack || r1.Code != handoff.CodeEnvelope || !r1.Writing {
		t.Fatalf("v1 %v %v %q writing=%v; want rolled-back envelope, writing", r1.Phase, r1.Code, r1.Detail, r1.Writing)
	}
	if r2.Phase != handoff.PhaseRolledBack || r2.Writing {
		t.Errorf("v2 %v writing=%v", r2.Phase, r2.Writing)
	}
	runs, gap := pr.checkOneWriter(t)
	if len(runs) != 3 || runs[0] != "v1" || runs[1] != "v2" || runs[2] != "v1" {
		t.Errorf("writers %v, want [v1 v2 v1]", runs)
	}
	if gap > 50*time.Millisecond {
		t.Errorf("longest gap %v", gap)
	}
}

// Invariant: a failure before the switch leaves v1 flying untouched.
func TestHandoffRefusedLeavesV1(t *testing.T) {
	pr := newPair(t, SchemaVersion, 99, HandoffOptions{})
	time.Sleep(50 * time.Millisecond)
	pr.start(t, time.Second)
	r1, _ := pr.wait(t, 3*time.Second)
	if r1.Phase != handoff.PhaseAborted || r1.Code != handoff.CodeIncompatible || !r1.Writing {
		t.Fatalf("v1 %v %v %q writing=%v", r1.Phase, r1.Code, r1.Detail, r1.Writing)
	}
	runs, gap := pr.checkOneWriter(t)
	if len(runs) != 1 || runs[0] != "v1" {
		t.Errorf("writers %v, want [v1]", runs)
	}
	if gap > 50*time.Millisecond {
		t.Errorf("v1 stopped writing for %v", gap)
	}
}

// Live state migrated 1→2 and 2→1 steps to the same outputs (within
// floating-point epsilon: the attitude goes through a quaternion).
func TestMigrateLiveState(t *testing.T) {
	st := hoverState(t)
	reg := NewRegistry()
	p1 := DefaultParams()
	p2 := p1
	p2.Schema = SchemaV2
	for _, c := range []struct {
		from, to int
		pf, pt   *Params
	}{{1, 2, &p1, &p2}, {2, 1, &p2, &p1}} {
		a := st
		if c.from == SchemaV2 {
			a.Est.Q = quatOf(&a.Est)
		}
		enc := AppendStateSchema(nil, &a, c.from)
		m, err := reg.Migrate(enc, c.from, c.to)
		if err != nil {
			t.Fatal(err)
		}
		var b State
		if err := DecodeStateSchema(m, &b, c.to); err != nil {
			t.Fatal(err)
		}
		if a.Tick != b.Tick || a.Ctl != b.Ctl || a.Mission != b.Mission || a.Mode != b.Mode {
			t.Fatalf("%d→%d: migration changed more than the attitude", c.from, c.to)
		}
		in := still(deg(0.2), deg(-0.1), [3]float64{0.01, -0.02, 0.005})
		var oa, ob Outputs
		worst := 0.0
		for i := range 800 {
			in.Accel[0] = 0.05 * math.Sin(float64(i)/7)
			in.BaroNew = i%10 == 0
			Step(&a, c.pf, &in, &oa)
			Step(&b, c.pt, &in, &ob)
			for k := range oa.PulseUS {
				worst = math.Max(worst, math.Abs(oa.PulseUS[k]-ob.PulseUS[k]))
			}
		}
		if worst > 1e-6 || a.Mode != b.Mode {
			t.Errorf("%d→%d: outputs differ by %g µs after 800 ticks", c.from, c.to, worst)
		}
	}
}

// The standby's per-tick path (shadow step on forwarded inputs, divergence)
// and the writer's (forwarding a tick, following one) allocate nothing.
func TestHandoffTickPathZeroAllocs(t *testing.T) {
	st := hoverState(t)
	p := DefaultParams()
	l := NewLoop(&st, &p, &SensorSource{Period: 2500 * time.Microsecond}, NullSink{}, &NanoClock{})
	h, err := newHand(l, pwmlock.New(t.TempDir()), HandoffOptions{}, slog.New(slog.DiscardHandler), "t", 1, t.TempDir(), 400, func() {})
	if err != nil {
		t.Fatal(err)
	}
	in := still(0, 0, [3]float64{})
	var out Outputs
	inB := AppendInputs(nil, &in)
	outB := AppendOutputs(nil, &out)
	outB = append(outB, make([]byte, 8)...)
	dst := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(200, func() {
		mine, err := h.shadowStep(l.St.Tick+1, inB, dst[:0])
		if err != nil {
			t.Fatal(err)
		}
		h.divergence(mine, outB)
		if err := h.follow(l.St.Tick+1, inB, outB); err != nil {
			t.Fatal(err)
		}
		h.side = nopSide{}
		h.Open()
		h.ObserveTick(&l.St, &in, &out)
		h.side = nil
	})
	if allocs != 0 {
		t.Errorf("%v allocations per tick", allocs)
	}
}

type nopSide struct{}

func (nopSide) Tick() bool                   { return true }
func (nopSide) Wrote(uint64, []byte, []byte) {}
func (nopSide) Phase() handoff.Phase         { return handoff.PhaseShadow }
func (nopSide) Progress() handoff.Report     { return handoff.Report{} }
func (nopSide) Abort(string)                 {}

func TestTickCodecRoundTrip(t *testing.T) {
	m, _ := ParseMission("takeoff:2m,hover:5s,land")
	in := Inputs{Dt: 0.0025, TimeNs: -7, Accel: [3]float64{1, 2, 3}, Gyro: [3]float64{4, 5, 6}, IMUErr: true,
		BaroPa: 101000, BaroC: 14, BaroNew: true, Cmd: Command{Kind: CmdMission, Force: true, Alt: 3, Mission: m}}
	b := AppendInputs(nil, &in)
	var got Inputs
	if len(b) != InputsSize || DecodeInputs(b, &got) != nil || got != in {
		t.Fatalf("inputs round trip: %d bytes, %+v", len(b), got)
	}
	out := Outputs{PulseUS: [4]float64{1500, 1501, 1502, 1503}, Motor: [4]float64{.5, .5, .5, .5}, Mode: ModeHover, Flags: FlagArmed, Events: EvMode, Reason: ReasonMission, CmdOK: true}
	ob := AppendOutputs(nil, &out)
	var go2 Outputs
	if len(ob) != OutputsSize || DecodeOutputs(ob, &go2) != nil || go2 != out {
		t.Fatalf("outputs round trip: %+v", go2)
	}
	if DecodeInputs(b[:len(b)-1], &got) == nil {
		t.Error("short inputs decoded")
	}
}
