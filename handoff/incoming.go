package handoff

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// IncomingConfig configures the standby side (v2). The callbacks run on the
// tick loop, inside Tick, and must not block.
type IncomingConfig struct {
	Version   string   // program version, for the HELLO
	Schema    int      // the state schema version Install takes
	Needs     []string // the state fields v2 needs v1's snapshot to provide
	Warmup    int      // consecutive ticks within Tolerance before v2 is ready (at least 1)
	ControlHz int      // control rate; v1 must run at the same rate
	// Registry migrates v1's schema to Schema; nil allows only equal schemas.
	Registry *Registry
	// MaxSnapshot bounds the snapshot v2 accepts (default DefaultMaxSnapshot,
	// at most MaxSnapshotLimit); the buffer is allocated up front.
	MaxSnapshot int

	Authority Authority
	// Install replaces the controller's state with state (already migrated
	// to Schema), whose last tick is tick. Called once, in the tick the last
	// snapshot chunk arrives.
	Install func(state []byte, tick uint64) error
	// Step runs the control step on forwarded inputs, in shadow, without
	// writing: it appends the outputs it would have written to dst and
	// returns them.
	Step func(tick uint64, inputs, dst []byte) ([]byte, error)
	// Divergence measures v2's would-be outputs against v1's real ones (any
	// unit; NaN counts as out of tolerance).
	Divergence func(mine, theirs []byte) float64
	Tolerance  float64
	// Failover lets v2 take over when v1's connection ends without ABORT or
	// BYE (v1 crashed) while v2 shadows with its last tick within tolerance:
	// v2 then tries Acquire(false) for up to Timeouts.Ack ticks (the kernel
	// frees a dead v1's lock; a live v1 keeps it, and v2 aborts) and flies on
	// from the next tick. Without it a standby never takes the authority
	// without a SWITCH (and a v1 crash before the switch leaves no
	// controller).
	Failover bool

	Timeouts Timeouts
	// WriteTimeout bounds each send (default DefaultWriteTimeout).
	WriteTimeout time.Duration
	// Now is the clock for durations (default time.Now); Progress calls it
	// from the caller's goroutine, so it must be safe for concurrent use.
	Now    func() time.Time
	Logger *slog.Logger
}

// Incoming is the standby side's state machine (v2). The tick loop calls Tick
// once per control tick, before deciding whether to write, and Wrote right
// after each PWM write. In standby v2 reads no sensors: Tick runs Step on the
// inputs v1 forwards. Progress and Abort may be called from any goroutine;
// everything else belongs to the tick loop.
type Incoming struct {
	cfg  IncomingConfig
	t    Timeouts
	conn *Conn
	log  *slog.Logger
	now  func() time.Time
	pub  publisher
	rep  Report

	rx, tx  Frame
	hello   Frame
	needs   Names
	asm     Reassembler
	mine    []byte
	writing bool

	phaseTicks int
	silent     int
	helloSent  bool
	lastTick   uint64 // shadow: the last tick stepped
	within     int    // consecutive ticks within tolerance
	stepped    int    // ticks stepped in the current Tick call

	switching  bool // SWITCH received, authority not yet acquired
	switchT    uint64
	switchAt   time.Time
	acqTries   int
	pendingAck bool
	nextWrite  uint64
	failover   bool // taking over from a v1 that died before the switch
}

// NewIncoming returns v2's state machine over conn (usually from
// Listener.Accept). It takes ownership of conn.
func NewIncoming(conn *Conn, cfg IncomingConfig) (*Incoming, error) {
	if conn == nil || cfg.Authority == nil || cfg.Install == nil || cfg.Step == nil || cfg.Divergence == nil {
		return nil, errors.New("handoff: incoming: need a conn, an authority and the Install, Step and Divergence callbacks")
	}
	if cfg.MaxSnapshot <= 0 {
		cfg.MaxSnapshot = DefaultMaxSnapshot
	}
	if cfg.MaxSnapshot > MaxSnapshotLimit {
		return nil, fmt.Errorf("handoff: incoming: MaxSnapshot %d exceeds %d", cfg.MaxSnapshot, MaxSnapshotLimit)
	}
	if cfg.Warmup < 1 {
		cfg.Warmup = 1
	}
	if len(cfg.Version) > MaxVersionLen {
		return nil, fmt.Errorf("handoff: incoming: version longer than %d bytes", MaxVersionLen)
	}
	needs, err := AppendNames(nil, cfg.Needs...)
	if err != nil {
		return nil, err
	}
	in := &Incoming{
		cfg:   cfg,
		t:     cfg.Timeouts.withDefaults(cfg.ControlHz),
		conn:  conn,
		log:   cfg.Logger,
		now:   cfg.Now,
		needs: needs,
		asm:   Reassembler{Max: cfg.MaxSnapshot, buf: make([]byte, 0, cfg.MaxSnapshot)},
		mine:  make([]byte, 0, 1024),
	}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	if in.now == nil {
		in.now = time.Now
	}
	if cfg.WriteTimeout > 0 {
		conn.SetWriteTimeout(cfg.WriteTimeout)
	}
	in.hello = Frame{Type: TypeHello, Hello: Hello{
		Role: RoleStandby, Schema: uint32(cfg.Schema), Warmup: uint32(cfg.Warmup), ControlHz: uint32(cfg.ControlHz),
		Version: []byte(cfg.Version), Fields: needs,
	}}
	in.rep = Report{Role: RoleStandby, Version: cfg.Version, Schema: cfg.Schema}
	in.pub.publish(&in.rep)
	return in, nil
}

// Writing reports whether v2 holds the authority and writes (as the last
// Tick returned).
func (in *Incoming) Writing() bool { return in.writing }

// Phase is the current phase (tick loop only; other goroutines use Progress).
func (in *Incoming) Phase() Phase { return in.rep.Phase }

// Progress returns a copy of the report; safe from any goroutine.
func (in *Incoming) Progress() Report { return in.pub.report().at(in.now()) }

// Abort asks the tick loop to abort the handoff at its next Tick. After the
// switch v2 then gives the authority back (v1 retakes it). Safe from any
// goroutine.
func (in *Incoming) Abort(reason string) { in.pub.requestAbort(reason) }

// Tick runs v2's state machine for one control tick. In shadow it steps the
// controller on every tick v1 forwarded since the last call. It returns true
// when v2 holds the authority and must read its sensors, compute and write
// this tick (then call Wrote): the first such tick is T, the tick SWITCH
// named. It never blocks longer than a send's write timeout and does not
// allocate in the steady phases.
func (in *Incoming) Tick() bool {
	in.rep.Ticks++
	defer in.publish()
	if in.rep.Phase.Terminal() {
		return in.writing
	}
	if in.rep.Phase == PhaseIdle {
		in.rep.Started = in.now()
		in.enter(PhaseHello)
	}
	if msg, ok := in.pub.takeAbort(); ok {
		in.end(CodeOperator, "abort requested: "+msg, true)
		return in.writing
	}
	in.phaseTicks++
	in.silent++
	in.stepped = 0
	in.receive()
	if in.rep.Phase.Terminal() {
		return in.writing
	}
	if in.switching {
		in.tryAcquire()
		if in.rep.Phase.Terminal() {
			return in.writing
		}
	}
	if in.rep.Phase == PhaseShadow && in.stepped > 0 && !in.switching {
		if !in.sendReport() {
			return in.writing
		}
	}
	in.checkTimeouts()
	return in.writing
}

// Wrote tells v2's state machine that the controller wrote tick tick with
// these inputs and outputs. The first write after the switch must be tick T:
// v2 then acknowledges the switch. While v1 is in probation every tick is
// forwarded to it; a failed send is counted and never stops the flight.
func (in *Incoming) Wrote(tick uint64, inputs, outputs []byte) {
	if !in.writing || in.rep.Phase != PhaseActive {
		return
	}
	defer in.publish()
	if tick != in.nextWrite {
		in.end(CodeLocal, fmt.Sprintf("wrote tick %d, expected %d", tick, in.nextWrite), true)
		return
	}
	in.nextWrite++
	if in.failover {
		in.pendingAck = false
		in.rep.AckDelay = in.now().Sub(in.switchAt)
		return
	}
	if in.pendingAck {
		in.pendingAck = false
		in.rep.AckTicks = in.acqTries
		in.rep.AckDelay = in.now().Sub(in.switchAt)
		in.tx = Frame{Type: TypeSwitchAck, Tick: in.switchT}
		in.send(&in.tx)
		in.log.Info("handoff: switched", "tick", tick, "ack_delay", in.rep.AckDelay)
	}
	in.tx = Frame{Type: TypeTick, Tick: tick, Inputs: inputs, Outputs: outputs}
	if in.send(&in.tx) == nil {
		in.rep.Probation++
	}
}

func (in *Incoming) receive() {
	if in.failover {
		if in.rep.Phase == PhaseActive && in.writing && !in.pendingAck {
			in.rep.Code = CodePeerLost
			in.enter(PhaseCommitted)
			in.conn.Close()
			in.log.Warn("handoff: failover complete, flying on", "tick", in.nextWrite-1)
		}
		return
	}
	for i := 0; i < RingSlots; i++ {
		ok, err := in.conn.Poll(&in.rx)
		if err != nil {
			if errors.Is(err, ErrClosed) {
				in.peerLost(err.Error())
			} else {
				in.end(CodeProtocol, err.Error(), true)
			}
			return
		}
		if !ok {
			return
		}
		in.silent = 0
		in.rep.FramesReceived++
		in.handle(&in.rx)
		if in.rep.Phase.Terminal() {
			return
		}
	}
}

// peerLost: v1's connection ended. Before the switch v2 stays standby and
// stops (it never takes the authority without a SWITCH); after it, v1 is gone
// and v2, holding the authority, flies on.
func (in *Incoming) peerLost(detail string) {
	if in.cfg.Failover && in.rep.Phase == PhaseShadow && in.within > 0 && !in.switching {
		in.rep.PeerLost = true
		in.rep.Detail = "v1 gone while shadowing, failover: " + detail
		in.switching = true
		in.failover = true
		in.switchT = in.lastTick + 1
		in.rep.SwitchTick = in.switchT
		in.switchAt = in.now()
		in.acqTries = 0
		in.enter(PhaseSwitch)
		in.log.Warn("handoff: v1 gone while shadowing: failover", "tick", in.switchT, "detail", detail)
		in.tryAcquire()
		return
	}
	if in.rep.Phase == PhaseActive && in.writing {
		in.rep.PeerLost = true
		in.rep.Code = CodePeerLost
		in.rep.Detail = "v1 gone after the switch: " + detail
		in.enter(PhaseCommitted)
		in.conn.Close()
		in.log.Warn("handoff: v1 gone after the switch, flying on", "detail", detail)
		return
	}
	in.end(CodePeerLost, detail, false)
}

func (in *Incoming) handle(f *Frame) {
	switch f.Type {
	case TypeHeartbeat:
		return
	case TypeAbort:
		in.end(f.Reason.Code, "v1 aborted: "+string(f.Reason.Text), false)
		return
	case TypeRollback:
		in.end(f.Reason.Code, "v1 rolled back: "+string(f.Reason.Text), false)
		return
	case TypeBye:
		in.peerLost("v1 said BYE")
		return
	case TypeRefuse:
		if in.rep.Phase == PhaseHello {
			in.end(CodeIncompatible, "v1 refused: "+string(f.Reason.Text), false)
			return
		}
	}
	switch in.rep.Phase {
	case PhaseHello:
		switch {
		case f.Type == TypeHello && !in.helloSent:
			in.onHello(f)
			return
		case f.Type == TypeHelloAck && in.helloSent:
			in.enter(PhaseSync)
			return
		}
	case PhaseSync:
		if f.Type == TypeSnapshot {
			in.onSnapshot(f)
			return
		}
	case PhaseShadow:
		switch {
		case f.Type == TypeTick:
			in.onTick(f)
			return
		case f.Type == TypeSwitch:
			in.onSwitch(f)
			return
		}
	case PhaseActive:
		if f.Type == TypeCommit {
			in.rep.Code = CodeNone
			in.enter(PhaseCommitted)
			in.conn.Close()
			in.log.Info("handoff: committed", "probation_ticks", in.rep.Probation)
			return
		}
	}
	in.end(CodeProtocol, fmt.Sprintf("unexpected %v in phase %v", f.Type, in.rep.Phase), true)
}

func (in *Incoming) onHello(f *Frame) {
	h := &f.Hello
	in.rep.PeerVersion = string(h.Version)
	in.rep.PeerSchema = int(h.Schema)
	var why string
	switch {
	case h.Role != RoleActive:
		why = fmt.Sprintf("peer role %v, want active", h.Role)
	case in.cfg.ControlHz != 0 && h.ControlHz != 0 && int(h.ControlHz) != in.cfg.ControlHz:
		why = fmt.Sprintf("control rate %d Hz, v2 runs at %d Hz", h.ControlHz, in.cfg.ControlHz)
	case !in.cfg.Registry.CanMigrate(int(h.Schema), in.cfg.Schema):
		why = fmt.Sprintf("no migration from state schema %d to %d", h.Schema, in.cfg.Schema)
	default:
		if name, missing := h.Fields.Missing(in.needs); missing {
			why = fmt.Sprintf("v1 does not provide state field %q", name)
		}
	}
	if why != "" {
		in.tx = Frame{Type: TypeRefuse, Reason: Reason{Code: CodeIncompatible, Text: []byte(why)}}
		in.send(&in.tx)
		in.end(CodeIncompatible, why, false)
		return
	}
	if err := in.send(&in.hello); err != nil {
		in.end(CodeSendFailed, "send HELLO: "+err.Error(), true)
		return
	}
	in.helloSent = true
}

func (in *Incoming) onSnapshot(f *Frame) {
	if f.Snapshot.Schema != uint32(in.rep.PeerSchema) {
		in.end(CodeProtocol, fmt.Sprintf("snapshot of schema %d, v1 said %d", f.Snapshot.Schema, in.rep.PeerSchema), true)
		return
	}
	done, err := in.asm.Add(f)
	in.rep.SnapshotChunks++
	if err != nil {
		in.end(CodeProtocol, err.Error(), true)
		return
	}
	if !done {
		return
	}
	state, tick := in.asm.Bytes(), in.asm.Tick()
	in.rep.SnapshotBytes = len(state)
	in.rep.SnapshotTick = tick
	migrated, err := in.cfg.Registry.Migrate(state, in.rep.PeerSchema, in.cfg.Schema)
	if err != nil {
		in.end(CodeIncompatible, err.Error(), true)
		return
	}
	in.rep.MigratedBytes = len(migrated)
	if err := in.cfg.Install(migrated, tick); err != nil {
		in.end(CodeLocal, "install the snapshot: "+err.Error(), true)
		return
	}
	in.lastTick = tick
	in.enter(PhaseShadow)
	in.log.Info("handoff: snapshot installed", "bytes", len(state), "migrated_bytes", len(migrated), "from_schema", in.rep.PeerSchema, "to_schema", in.cfg.Schema, "tick", tick)
	in.sendReport() // tells v1 the snapshot is installed
}

func (in *Incoming) onTick(f *Frame) {
	if f.Tick != in.lastTick+1 {
		in.end(CodeProtocol, fmt.Sprintf("v1 forwarded tick %d, expected %d", f.Tick, in.lastTick+1), true)
		return
	}
	mine, err := in.cfg.Step(f.Tick, f.Inputs, in.mine[:0])
	if err != nil {
		in.end(CodeLocal, fmt.Sprintf("step tick %d: %v", f.Tick, err), true)
		return
	}
	d := in.cfg.Divergence(mine, f.Outputs)
	in.mine = mine[:0]
	in.lastTick = f.Tick
	in.stepped++
	in.rep.TicksShadowed++
	in.rep.Divergence = d
	if d > in.rep.MaxDivergence || math.IsNaN(d) {
		in.rep.MaxDivergence = d
	}
	if d <= in.cfg.Tolerance { // false for NaN
		in.within++
	} else {
		in.within = 0
	}
	in.rep.Ready = in.within >= in.cfg.Warmup
}

func (in *Incoming) sendReport() bool {
	in.tx = Frame{Type: TypeShadowReport, Tick: in.lastTick, Shadow: ShadowReport{
		Ticks: in.rep.TicksShadowed, Divergence: in.rep.Divergence, MaxDivergence: in.rep.MaxDivergence, Ready: in.rep.Ready,
	}}
	if err := in.send(&in.tx); err != nil {
		in.end(CodeSendFailed, "send SHADOW_REPORT: "+err.Error(), true)
		return false
	}
	return true
}

func (in *Incoming) onSwitch(f *Frame) {
	if !in.rep.Ready || f.Tick != in.lastTick+1 {
		in.end(CodeNotReady, fmt.Sprintf("SWITCH at tick %d while ready=%v after tick %d", f.Tick, in.rep.Ready, in.lastTick), true)
		return
	}
	in.switching = true
	in.switchT = f.Tick
	in.rep.SwitchTick = f.Tick
	in.switchAt = in.now()
	in.acqTries = 0
	in.enter(PhaseSwitch)
	in.tryAcquire()
}

// tryAcquire takes the authority v1 released with its SWITCH. v1 releases
// right after sending SWITCH, so an attempt may find it still held: v2 tries
// again on the next ticks, up to Timeouts.Ack.
func (in *Incoming) tryAcquire() {
	err := in.cfg.Authority.Acquire(false)
	if err != nil {
		in.acqTries++
		if in.acqTries >= in.t.Ack || !errors.Is(err, ErrAuthorityBusy) {
			in.switching = false
			in.end(CodeAuthority, fmt.Sprintf("take the authority after %d tries: %v", in.acqTries, err), true)
		}
		return
	}
	in.switching = false
	in.writing = true
	in.rep.Writing = true
	in.pendingAck = true
	in.nextWrite = in.switchT
	in.enter(PhaseActive)
}

func (in *Incoming) checkTimeouts() {
	switch p := in.rep.Phase; {
	case p == PhaseActive:
		if !in.rep.Overdue && in.phaseTicks > in.t.Probation+in.t.Ack+in.t.Silence {
			// v1 should have said PROBATION_END by now. v2 holds the
			// authority and flies on; closing on v1 could provoke a late
			// rollback, so it waits for v1 to end or vanish (the agent
			// removes a hung v1).
			in.rep.Overdue = true
			in.log.Warn("handoff: probation overdue", "ticks", in.phaseTicks)
		}
	case p == PhaseSwitch:
		// bounded by tryAcquire
	case in.silent > in.t.Silence:
		in.end(CodePeerLost, fmt.Sprintf("v1 silent for %d ticks in %v", in.silent, p), true)
	case p == PhaseHello && in.phaseTicks > in.t.Hello:
		in.end(CodeTimeout, fmt.Sprintf("hello: not completed within %d ticks", in.t.Hello), true)
	case p == PhaseSync && in.phaseTicks > in.t.Sync:
		in.end(CodeTimeout, fmt.Sprintf("sync: snapshot not complete within %d ticks", in.t.Sync), true)
	case p == PhaseShadow && in.phaseTicks > in.t.Shadow+in.t.Window+in.t.Ack:
		in.end(CodeTimeout, fmt.Sprintf("shadow: no SWITCH within %d ticks", in.t.Shadow+in.t.Window+in.t.Ack), true)
	}
}

// end stops the handoff. Before the switch v2 never held the authority: it
// says ABORT and stops. After it v2 gives the authority back (v1 retakes it)
// and stops writing.
func (in *Incoming) end(code Code, detail string, tell bool) {
	if in.rep.Phase.Terminal() {
		return
	}
	in.rep.Code = code
	in.rep.Detail = detail
	final := PhaseAborted
	if in.writing {
		final = PhaseRolledBack
	}
	if tell {
		in.tx = Frame{Type: TypeAbort, Tick: in.lastTick, Reason: Reason{Code: code, Text: []byte(detail)}}
		if in.writing {
			in.tx.Tick = in.nextWrite - 1
		}
		in.send(&in.tx)
	}
	if in.writing {
		in.writing = false
		in.rep.Writing = false
		if err := in.cfg.Authority.Release(); err != nil {
			in.log.Error("handoff: release the authority", "err", err)
		}
	}
	in.enter(final)
	in.conn.Close()
	in.log.Warn("handoff: "+final.String(), "code", code, "detail", detail)
}

func (in *Incoming) enter(p Phase) {
	in.rep.enter(p, in.now())
	in.phaseTicks = 0
	in.silent = 0
}

func (in *Incoming) send(f *Frame) error {
	err := in.conn.Send(f)
	if err != nil {
		in.rep.SendErrors++
		return err
	}
	in.rep.FramesSent++
	return nil
}

func (in *Incoming) publish() { in.pub.publish(&in.rep) }

// ErrReassembly: snapshot chunks out of order, inconsistent, or too large.
var ErrReassembly = errors.New("handoff: snapshot reassembly")

// Reassembler joins the chunks of one snapshot. The zero value with Max set
// works; its buffer grows to the snapshot's size once.
type Reassembler struct {
	Max    int // the largest snapshot accepted
	buf    []byte
	schema uint32
	total  uint32
	tick   uint64
	done   bool
}

// Add takes the next chunk (a decoded SNAPSHOT frame). Chunks must come in
// order, with the same schema, total and tick. It returns true once the
// snapshot is complete.
func (r *Reassembler) Add(f *Frame) (bool, error) {
	s := &f.Snapshot
	if r.done {
		return false, fmt.Errorf("%w: chunk after the last one", ErrReassembly)
	}
	if len(r.buf) == 0 && s.Offset == 0 {
		if int64(s.Total) > int64(r.Max) {
			return false, fmt.Errorf("%w: snapshot of %d bytes exceeds %d", ErrReassembly, s.Total, r.Max)
		}
		r.schema, r.total, r.tick = s.Schema, s.Total, f.Tick
		if cap(r.buf) < int(s.Total) {
			r.buf = make([]byte, 0, s.Total)
		}
	} else if s.Schema != r.schema || s.Total != r.total || f.Tick != r.tick || int64(s.Offset) != int64(len(r.buf)) {
		return false, fmt.Errorf("%w: chunk at %d of %d (schema %d, tick %d) does not continue %d of %d (schema %d, tick %d)",
			ErrReassembly, s.Offset, s.Total, s.Schema, f.Tick, len(r.buf), r.total, r.schema, r.tick)
	}
	r.buf = append(r.buf, s.Data...)
	if len(r.buf) == int(r.total) {
		r.done = true
	}
	return r.done, nil
}

// Bytes is the snapshot so far (all of it once Add returned true).
func (r *Reassembler) Bytes() []byte { return r.buf }

// Schema is the snapshot's schema version.
func (r *Reassembler) Schema() int { return int(r.schema) }

// Tick is the last tick the snapshot includes.
func (r *Reassembler) Tick() uint64 { return r.tick }
