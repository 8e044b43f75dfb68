package flightctl

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/inflight-ota/inflight/handoff"
	"github.com/inflight-ota/inflight/hw/pwmlock"
)

// HandoffOptions configure the controller's side of an in-air handoff.
// Zero fields take defaults.
type HandoffOptions struct {
	// Warmup is how many consecutive shadow ticks v2 needs within Tolerance
	// before it is ready; default 40 (0.1 s at 400 Hz).
	Warmup int
	// Tolerance is the shadow divergence allowed, µs of ESC pulse (the
	// largest difference over the four channels); default 1 µs.
	Tolerance float64
	// Shadow bounds v1's wait for v2 to become ready; default 10 s.
	Shadow time.Duration
	// Probation and Window are v1's defaults when handoff_start leaves them
	// zero; default 5 s and 10 s.
	Probation, Window time.Duration
	// Ack bounds v1's wait for SWITCH_ACK after it released the authority
	// (and v2's attempts to take it); default 10 ms, 4 ticks at 400 Hz. v2
	// writes T at its first tick after the SWITCH and v1 reads the ack at its
	// next tick (the tick loop reads the socket itself), so the ack normally
	// takes 1–2 ticks; the rest is room for a late tick. Meanwhile no one
	// writes and the PCA9685 holds the last pulses.
	Ack time.Duration
	// Envelope are the limits v1 checks on v2's flight in probation.
	Envelope Envelope
	// Linger is how long a standby whose handoff aborted or rolled back stays
	// (answering handoff_progress) before it exits; default 2 s.
	Linger time.Duration

	// Fault injection (bench and tests only). DieIn and StallIn are a handoff
	// phase name, optionally followed by ":<ticks>": the process SIGKILLs or
	// SIGSTOPs itself that many ticks after entering the phase (as PID 1,
	// which cannot signal itself, it emulates them: see hand.fault).
	DieIn, StallIn string
	// CorruptFrame: the outgoing handoff frame with this sequence number is
	// sent with a byte flipped.
	CorruptFrame uint32
}

// Envelope is the safety envelope v1 holds v2 to in probation.
type Envelope struct {
	TiltDeg  float64 // estimated tilt; default 25°
	RateDegS float64 // any body rate; default 200 °/s
	AltErrM  float64 // |altitude − target| in hover; default 1 m
}

func (o *HandoffOptions) defaults() {
	if o.Warmup <= 0 {
		o.Warmup = 40
	}
	if o.Tolerance <= 0 {
		o.Tolerance = 1
	}
	if o.Shadow <= 0 {
		o.Shadow = 10 * time.Second
	}
	if o.Probation <= 0 {
		o.Probation = 5 * time.Second
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Second
	}
	if o.Ack <= 0 {
		o.Ack = 10 * time.Millisecond
	}
	if o.Envelope.TiltDeg <= 0 {
		o.Envelope.TiltDeg = 25
	}
	if o.Envelope.RateDegS <= 0 {
		o.Envelope.RateDegS = 200
	}
	if o.Envelope.AltErrM <= 0 {
		o.Envelope.AltErrM = 1
	}
	if o.Linger <= 0 {
		o.Linger = 2 * time.Second
	}
}

// StateFields are the state fields a snapshot of schema provides (HELLO).
func StateFields(schema int) []string {
	f := []string{"tick", "mode", "att", "alt", "gyro_bias", "pid", "setpoints", "mission", "health"}
	if schema == SchemaV2 {
		f = append(f, "att_quat", "camera")
	}
	return f
}

// NeededFields are the state fields this controller needs from v1.
var NeededFields = []string{"tick", "mode", "att", "alt", "pid", "setpoints", "mission"}

// RegisterMigrations registers the state migrations 1→2 and 2→1 in r.
func RegisterMigrations(r *handoff.Registry) {
	r.Register(SchemaVersion, SchemaV2, func(src, dst []byte) ([]byte, error) {
		var s State
		if err := DecodeStateSchema(src, &s, SchemaVersion); err != nil {
			return nil, err
		}
		s.Est.Q = quatOf(&s.Est)
		return AppendStateSchema(dst, &s, SchemaV2), nil
	})
	r.Register(SchemaV2, SchemaVersion, func(src, dst []byte) ([]byte, error) {
		var s State
		if err := DecodeStateSchema(src, &s, SchemaV2); err != nil {
			return nil, err
		}
		return AppendStateSchema(dst, &s, SchemaVersion), nil
	})
}

// NewRegistry returns a handoff registry with this package's migrations.
func NewRegistry() *handoff.Registry {
	r := handoff.NewRegistry()
	RegisterMigrations(r)
	return r
}

// HandoffFigures are what the controllers measure of a handoff themselves,
// on CLOCK_MONOTONIC (system-wide, so both processes share it).
type HandoffFigures struct {
	Peer     string `json:"peer,omitempty"`
	UpdateID string `json:"update_id,omitempty"`
	// ControlGapMS: v1's last PWM write before the switch to v2's first.
	ControlGapMS    float64 `json:"control_gap_ms,omitempty"`
	ControlPeriodMS float64 `json:"control_period_ms,omitempty"`
	// MissedTicks: intervals between this side's PWM writes (and across the
	// switch) longer than 1.5 periods, while the handoff ran.
	MissedTicks int `json:"missed_ticks"`
	// Deviations of the estimated tilt and altitude from the hover before
	// the handoff (a 1 s moving average), worst while the handoff ran.
	MaxAttDevDeg float64 `json:"max_att_dev_deg"`
	MaxAltDevM   float64 `json:"max_alt_dev_m"`
}

// HandoffProgress is the result of handoff_progress, handoff_start and
// handoff_abort: the handoff package's Report and the controller's figures.
type HandoffProgress struct {
	handoff.Report
	HandoffFigures
}

// side is either state machine, as the tick loop drives it.
type side interface {
	Tick() bool
	Wrote(tick uint64, inputs, outputs []byte)
	Phase() handoff.Phase
	Progress() handoff.Report
	Abort(reason string)
}

var (
	_ side = (*handoff.Outgoing)(nil)
	_ side = (*handoff.Incoming)(nil)
)

// lockAuthority adapts the PWM lock to handoff.Authority.
type lockAuthority struct{ l *pwmlock.Lock }

func (a lockAuthority) Release() error { return a.l.Release() }

func (a lockAuthority) Acquire(seize bool) error {
	if seize {
		return a.l.Seize()
	}
	ok, err := a.l.TryAcquire()
	if err != nil {
		return err
	}
	if !ok {
		return handoff.ErrAuthorityBusy
	}
	return nil
}

// faultAt is a parsed DieIn/StallIn.
type faultAt struct {
	phase handoff.Phase
	ticks int
	sig   syscall.Signal
	on    bool
}

func parseFault(s string, sig syscall.Signal) (faultAt, error) {
	if s == "" {
		return faultAt{}, nil
	}
	name, n, _ := strings.Cut(s, ":")
	f := faultAt{sig: sig, on: true}
	found := false
	for p := handoff.PhaseIdle; p <= handoff.PhaseRolledBack; p++ {
		if p.String() == name {
			f.phase, found = p, true
		}
	}
	if !found {
		return f, fmt.Errorf("%w: fault phase %q", ErrOptions, name)
	}
	if n != "" {
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 {
			return f, fmt.Errorf("%w: fault ticks %q", ErrOptions, n)
		}
		f.ticks = v
	}
	return f, nil
}

// hand is the controller's side of handoffs: the loop's gate and observer,
// and the control socket's handoff commands.
type hand struct {
	l       *Loop
	lock    *pwmlock.Lock
	o       HandoffOptions
	log     *slog.Logger
	version string
	schema  int // native schema (or a declared one, for tests of refusal)
	runDir  string
	hz      int
	period  time.Duration
	stop    context.CancelFunc
	faults  [2]faultAt
	freeze  func() // stall fault: stops the control socket's answers

	// Loop goroutine only.
	side       side
	isV1       bool
	allowed    []Mode
	inB, outB  []byte
	fin        Inputs
	fout       Outputs
	lastPhase  handoff.Phase
	phaseTicks int
	endTicks   int
	lastWrite  int64 // ns of this side's last PWM write
	peerWrite  int64 // ns of the peer's last write (from its TICKs)
	gapDone    bool
	baseAlt    float64
	baseTilt   float64
	baseN      int
	fig        HandoffFigures

	mu     sync.Mutex
	cur    side // the running or last handoff
	pubFig HandoffFigures
}

func newHand(l *Loop, lock *pwmlock.Lock, o HandoffOptions, log *slog.Logger, version string, schema int, runDir string, hz float64, stop context.CancelFunc) (*hand, error) {
	o.defaults()
	h := &hand{l: l, lock: lock, o: o, log: log, version: version, schema: schema, runDir: runDir, hz: int(math.Round(hz)),
		period: time.Duration(float64(time.Second) / hz), stop: stop,
		inB: make([]byte, 0, InputsSize), outB: make([]byte, 0, OutputsSize+8)}
	var err error
	if h.faults[0], err = parseFault(o.DieIn, syscall.SIGKILL); err != nil {
		return nil, err
	}
	if h.faults[1], err = parseFault(o.StallIn, syscall.SIGSTOP); err != nil {
		return nil, err
	}
	return h, nil
}

func monoNs() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// Open implements TickGate: it runs the handoff's state machine for this
// tick and says whether this controller writes it.
func (h *hand) Open() bool {
	if h.side == nil {
		h.baseline()
		return h.l.Role != RoleStandby
	}
	w := h.side.Tick()
	ph := h.side.Phase()
	if ph != h.lastPhase {
		h.lastPhase, h.phaseTicks = ph, 0
		h.log.Info("handoff phase", "phase", ph.String(), "writing", w, "tick", h.l.St.Tick)
	}
	h.phaseTicks++
	for i := range h.faults {
		if f := &h.faults[i]; f.on && f.phase == ph && h.phaseTicks > f.ticks {
			f.on = false
			h.log.Warn("fault injection", "signal", f.sig.String(), "phase", ph.String(), "ticks", h.phaseTicks)
			h.fault(f.sig)
		}
	}
	h.deviation()
	if w {
		h.l.Role = RoleActive
	} else {
		h.l.Role = RoleStandby
	}
	if ph.Terminal() {
		h.ended(ph, w)
	}
	h.mu.Lock()
	h.pubFig = h.fig
	h.mu.Unlock()
	return w
}

// fault injects a fault from the tick loop: SIGKILL (die) or SIGSTOP
// (stall). Outside a PID namespace's init the process signals itself. PID 1
// (flightctl as a container's entry point) cannot: the kernel drops the
// signals an init sends itself that it has no handler for, and SIGKILL and
// SIGSTOP cannot have one. So there, die exits at once with status 137 (as
// SIGKILL would report), straight from the tick thread, running no deferred
// function or cleanup: the kernel frees the flock and closes the sockets as
// in a crash. Stall freezes the control path instead of the process: the
// tick thread blocks for good while holding whatever it holds (the PWM lock
// included), so no more PWM writes, handoff frames or heartbeats go out, and
// the control socket stops answering (ControlServer.Freeze); nothing is
// closed. Only a SIGKILL from outside the container (docker kill) ends it.
func (h *hand) fault(sig syscall.Signal) {
	if !faultInProcess() {
		_ = syscall.Kill(syscall.Getpid(), sig)
		return
	}
	if sig == syscall.SIGKILL {
		unix.Exit(137)
	}
	if h.freeze != nil {
		h.freeze()
	}
	for {
		time.Sleep(time.Hour) // a sleeping goroutine: no "all goroutines are asleep"
	}
}

// faultInProcess: the faults are emulated in process when this is a PID
// namespace's init, or when INFLIGHT_FAULT_IN_PROCESS=1 (tests).
func faultInProcess() bool {
	return syscall.Getpid() == 1 || os.Getenv("INFLIGHT_FAULT_IN_PROCESS") == "1"
}

// ended handles a finished handoff on the loop goroutine.
func (h *hand) ended(ph handoff.Phase, w bool) {
	switch {
	case h.isV1 && ph == handoff.PhaseDone:
		h.log.Info("handoff done: exiting", "tick", h.l.St.Tick)
		h.side = nil
		h.stop()
	case w: // v1 flies on (aborted, rolled back and retaken) or v2 committed
		h.side = nil
	case !h.isV1:
		// v2 aborted or rolled back: linger for the progress, then exit.
		h.endTicks++
		if h.endTicks == 1 {
			h.log.Warn("handoff ended on the standby: exiting", "phase", ph.String())
		}
		if time.Duration(h.endTicks)*h.period >= h.o.Linger {
			h.side = nil
			h.stop()
		}
	}
}

// baseline keeps a 1 s moving average of the estimated altitude and tilt
// while no handoff runs: the hover the deviations are measured against.
func (h *hand) baseline() {
	if !h.l.St.Airborne {
		h.baseN = 0
		return
	}
	a := 1.0
	if h.baseN > 0 {
		a = 1 / math.Min(float64(h.baseN+1), float64(h.hz))
	}
	h.baseN++
	h.baseAlt += a * (h.l.St.Est.Alt - h.baseAlt)
	h.baseTilt += a * (tilt(h.l.St.Est.Roll, h.l.St.Est.Pitch) - h.baseTilt)
}

func (h *hand) deviation() {
	if h.baseN == 0 || !h.l.St.Airborne {
		return
	}
	if d := math.Abs(tilt(h.l.St.Est.Roll, h.l.St.Est.Pitch)-h.baseTilt) * 180 / math.Pi; d > h.fig.MaxAttDevDeg {
		h.fig.MaxAttDevDeg = d
	}
	if d := math.Abs(h.l.St.Est.Alt - h.baseAlt); d > h.fig.MaxAltDevM {
		h.fig.MaxAltDevM = d
	}
}

// ObserveTick implements TickObserver: it forwards the written tick.
func (h *hand) ObserveTick(st *State, in *Inputs, out *Outputs) {
	if h.side == nil {
		return
	}
	now := monoNs()
	if h.lastWrite != 0 && time.Duration(now-h.lastWrite) > h.period*3/2 {
		h.fig.MissedTicks++
	}
	if !h.isV1 && !h.gapDone && h.peerWrite != 0 {
		// v2's first write: the switch.
		h.gapDone = true
		h.setGap(now - h.peerWrite)
	}
	h.lastWrite = now
	h.inB = AppendInputs(h.inB[:0], in)
	h.outB = AppendOutputs(h.outB[:0], out)
	h.outB = binary.LittleEndian.AppendUint64(h.outB, uint64(now))
	h.side.Wrote(st.Tick, h.inB, h.outB)
}

func (h *hand) setGap(ns int64) {
	h.fig.ControlGapMS = math.Round(float64(ns)/1e3) / 1e3
	if time.Duration(ns) > h.period*3/2 {
		h.fig.MissedTicks++
	}
}

// writeTime is the write time a forwarded outputs' tail carries.
func writeTime(out []byte) int64 {
	if len(out) != OutputsSize+8 {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(out[OutputsSize:]))
}

// reset prepares the figures for a new handoff (loop goroutine).
func (h *hand) reset(s side, v1 bool, peer, update string) {
	h.side, h.isV1 = s, v1
	h.lastPhase, h.phaseTicks, h.endTicks = handoff.PhaseIdle, 0, 0
	h.lastWrite, h.peerWrite, h.gapDone = 0, 0, false
	h.fig = HandoffFigures{Peer: peer, UpdateID: update, ControlPeriodMS: float64(h.period) / 1e6}
	h.mu.Lock()
	h.cur = s
	h.pubFig = h.fig
	h.mu.Unlock()
}

func (h *hand) progress() (HandoffProgress, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cur == nil {
		return HandoffProgress{}, false
	}
	return HandoffProgress{Report: h.cur.Progress(), HandoffFigures: h.pubFig}, true
}

// --- v1 ---

func (h *hand) canSwitch() bool {
	st := &h.l.St
	ok := false
	for _, m := range h.allowed {
		ok = ok || st.Mode == m
	}
	if !ok || !st.Airborne || st.Failsafe != ReasonNone {
		return false
	}
	if tilt(st.Est.Roll, st.Est.Pitch) > deg(10) {
		return false
	}
	for _, r := range st.Est.Rate {
		if math.Abs(r) > deg(30) {
			return false
		}
	}
	return true
}

func (h *hand) follow(tick uint64, inputs, outputs []byte) error {
	if err := DecodeInputs(inputs, &h.fin); err != nil {
		return err
	}
	if t := writeTime(outputs); t != 0 {
		if !h.gapDone && h.lastWrite != 0 {
			h.gapDone = true
			h.setGap(t - h.lastWrite)
		}
		h.peerWrite = t
	}
	Step(&h.l.St, &h.l.P, &h.fin, &h.fout)
	if h.l.St.Tick != tick {
		return errFollowTick
	}
	return nil
}

var errFollowTick = errors.New("flightctl: followed tick out of step")

func (h *hand) envelope(uint64) error {
	st, e := &h.l.St, h.o.Envelope
	if t := tilt(st.Est.Roll, st.Est.Pitch) * 180 / math.Pi; t > e.TiltDeg {
		return fmt.Errorf("tilt %.1f deg over %g", t, e.TiltDeg)
	}
	for i, r := range st.Est.Rate {
		if d := math.Abs(r) * 180 / math.Pi; d > e.RateDegS {
			return fmt.Errorf("rate %d at %.0f deg/s over %g", i, d, e.RateDegS)
		}
	}
	if st.Mode == ModeHover {
		if d := math.Abs(st.Est.Alt - st.Ctl.TargetAlt); d > e.AltErrM {
			return fmt.Errorf("altitude error %.2f m over %g", d, e.AltErrM)
		}
	}
	if st.Mode == ModeDisarmed && h.lastPhase == handoff.PhaseProbation {
		return errors.New("v2 disarmed in the air")
	}
	return nil
}

// ticksOf converts a duration to control ticks (at least 2).
func (h *hand) ticksOf(d time.Duration) int {
	return max(2, int(d*time.Duration(h.hz)/time.Second))
}

// HandoffStart is the handoff_start request.
type HandoffStart struct {
	To             string   `json:"to"`
	Peer           string   `json:"peer"`
	ProbationMS    int64    `json:"probation_ms"`
	SwitchWindowMS int64    `json:"switch_window_ms"`
	AllowedPhases  []string `json:"allowed_phases"`
	UpdateID       string   `json:"update_id"`
}

func (h *hand) start(ctx context.Context, req *Request) (any, error) {
	var a HandoffStart
	if err := json.Unmarshal(req.Raw, &a); err != nil {
		return nil, fmt.Errorf("flightctl: handoff_start: %w", err)
	}
	if a.To == "" {
		return nil, fmt.Errorf("flightctl: handoff_start: no standby socket (to)")
	}
	if p, ok := h.progress(); ok && !p.Phase.Terminal() {
		return nil, fmt.Errorf("flightctl: handoff_start: a handoff is running (phase %v)", p.Phase)
	}
	if !h.lock.Held() {
		return nil, fmt.Errorf("flightctl: handoff_start: this controller is not the active one")
	}
	allowed := []Mode{ModeHover}
	if len(a.AllowedPhases) > 0 {
		allowed = allowed[:0]
		for _, s := range a.AllowedPhases {
			for m := ModeDisarmed; m < numModes; m++ {
				if m.String() == s && m != ModeDisarmed && m != ModeArmed {
					allowed = append(allowed, m)
				}
			}
		}
		if len(allowed) == 0 {
			return nil, fmt.Errorf("flightctl: handoff_start: no flight phase of %q allows a switch", a.AllowedPhases)
		}
	}
	path := a.To
	if !filepath.IsAbs(path) {
		path = filepath.Join(h.runDir, filepath.Clean("/" + path)[1:])
	}
	t := handoff.Timeouts{Shadow: h.ticksOf(h.o.Shadow), Probation: h.ticksOf(h.o.Probation), Window: h.ticksOf(h.o.Window),
		Ack: h.ticksOf(h.o.Ack)}
	if a.ProbationMS > 0 {
		t.Probation = h.ticksOf(time.Duration(a.ProbationMS) * time.Millisecond)
	}
	if a.SwitchWindowMS > 0 {
		t.Window = h.ticksOf(time.Duration(a.SwitchWindowMS) * time.Millisecond)
	}
	conn, err := handoff.Dial(path)
	if err != nil {
		return nil, fmt.Errorf("flightctl: handoff_start: %w", err)
	}
	if h.o.CorruptFrame != 0 {
		conn.CorruptFrame(h.o.CorruptFrame)
	}
	o, err := handoff.NewOutgoing(conn, handoff.OutgoingConfig{
		Version: h.version, Schema: h.schema, Fields: StateFields(h.schema), ControlHz: h.hz,
		Authority: lockAuthority{h.lock},
		Snapshot: func(dst []byte) ([]byte, uint64, error) {
			if h.schema != SchemaVersion && h.schema != SchemaV2 {
				return nil, 0, fmt.Errorf("flightctl: cannot encode state schema %d", h.schema)
			}
			return AppendStateSchema(dst, &h.l.St, h.schema), h.l.St.Tick, nil
		},
		CanSwitch: h.canSwitch,
		Follow:    h.follow,
		Envelope:  h.envelope,
		Timeouts:  t,
		Logger:    h.log,
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("flightctl: handoff_start: %w", err)
	}
	err = h.l.Exec(ctx, func(l *Loop) {
		h.allowed = allowed
		h.reset(o, true, a.Peer, a.UpdateID)
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("flightctl: handoff_start: %w", err)
	}
	h.log.Info("handoff started", "to", path, "peer", a.Peer, "update_id", a.UpdateID, "probation_ticks", t.Probation)
	p, _ := h.progress()
	return p, nil
}

// --- v2 ---

// listen serves the standby's handoff socket: one handoff, from the first
// v1 that connects.
func (h *hand) listen(ctx context.Context, path string) error {
	ln, err := handoff.Listen(path)
	if err != nil {
		return fmt.Errorf("flightctl: handoff socket: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("flightctl: handoff socket: %w", err)
	}
	if h.o.CorruptFrame != 0 {
		conn.CorruptFrame(h.o.CorruptFrame)
	}
	reg := NewRegistry()
	in, err := handoff.NewIncoming(conn, handoff.IncomingConfig{
		Version: h.version, Schema: h.schema, Needs: NeededFields, Warmup: h.o.Warmup, ControlHz: h.hz,
		Registry: reg, Authority: lockAuthority{h.lock},
		Install:    h.install,
		Step:       h.shadowStep,
		Divergence: h.divergence,
		Tolerance:  h.o.Tolerance,
		Failover:   true,
		Timeouts:   handoff.Timeouts{Probation: h.ticksOf(h.o.Probation)},
		Logger:     h.log,
	})
	if err != nil {
		conn.Close()
		return fmt.Errorf("flightctl: handoff: %w", err)
	}
	if err := h.l.Exec(ctx, func(l *Loop) { h.reset(in, false, "", "") }); err != nil {
		conn.Close()
		return nil
	}
	h.log.Info("handoff: v1 connected", "socket", path)
	return nil
}

func (h *hand) install(state []byte, tick uint64) error {
	var st State
	if err := DecodeStateSchema(state, &st, h.schema); err != nil {
		return err
	}
	if st.Tick != tick {
		return fmt.Errorf("flightctl: snapshot of tick %d labelled %d", st.Tick, tick)
	}
	h.l.St = st
	h.baseN = 0
	return nil
}

// shadowStep steps the standby on v1's forwarded inputs (allocation-free).
func (h *hand) shadowStep(tick uint64, inputs, dst []byte) ([]byte, error) {
	if err := DecodeInputs(inputs, &h.fin); err != nil {
		return nil, err
	}
	Step(&h.l.St, &h.l.P, &h.fin, &h.fout)
	if h.l.St.Tick != tick {
		return nil, errFollowTick
	}
	h.baseline()
	return AppendOutputs(dst, &h.fout), nil
}

func (h *hand) divergence(mine, theirs []byte) float64 {
	if t := writeTime(theirs); t != 0 {
		h.peerWrite = t
	}
	return PulseDivergence(mine, theirs)
}

// --- control socket ---

func (h *hand) register(s *ControlServer) {
	s.Handle("handoff_start", h.start)
	s.Handle("handoff_progress", func(ctx context.Context, req *Request) (any, error) {
		if p, ok := h.progress(); ok {
			return p, nil
		}
		r := handoff.Report{Role: handoff.RoleActive, Phase: handoff.PhaseIdle, Version: h.version, Schema: h.schema}
		if h.l.CurrentRole() == RoleStandby {
			r.Role = handoff.RoleStandby
		}
		return HandoffProgress{Report: r}, nil
	})
	s.Handle("handoff_abort", func(ctx context.Context, req *Request) (any, error) {
		var a struct {
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(req.Raw, &a); err != nil {
			return nil, fmt.Errorf("flightctl: handoff_abort: %w", err)
		}
		h.mu.Lock()
		cur := h.cur
		h.mu.Unlock()
		if cur == nil {
			return nil, errors.New("flightctl: handoff_abort: no handoff")
		}
		if cur.Progress().Phase.Terminal() {
			return nil, errors.New("flightctl: handoff_abort: the handoff has ended")
		}
		if a.Reason == "" {
			a.Reason = "operator"
		}
		cur.Abort(a.Reason)
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			r := cur.Progress()
			if r.Phase.Terminal() && (r.Writing || r.Phase != handoff.PhaseRolledBack || r.Role == handoff.RoleStandby) {
				break
			}
			select {
			case <-ctx.Done():
				deadline = time.Time{}
			case <-time.After(2 * time.Millisecond):
			}
		}
		p, _ := h.progress()
		return p, nil
	})
}
