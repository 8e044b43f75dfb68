package handoff

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// DefaultMaxSnapshot is the default bound on a snapshot's size.
const DefaultMaxSnapshot = 128 << 10

// MaxSnapshotLimit is the largest MaxSnapshot either side accepts: v1 sends
// the whole snapshot in the tick it captures it, so it must fit in half of the
// receiver's ring.
const MaxSnapshotLimit = RingSlots / 2 * MaxChunk

// OutgoingConfig configures the active side (v1). The callbacks run on the
// tick loop, inside Tick or Wrote, and must not block.
type OutgoingConfig struct {
	Version   string   // program version, for the HELLO
	Schema    int      // state schema version of Snapshot's bytes
	Fields    []string // the state fields the snapshot provides
	ControlHz int      // control rate; v2 must run at the same rate
	// MaxWarmup is the largest warm-up (ticks) v1 accepts from v2; 0 means
	// Timeouts.Shadow.
	MaxWarmup int
	// MaxSnapshot bounds the snapshot (default DefaultMaxSnapshot, at most
	// MaxSnapshotLimit).
	MaxSnapshot int

	Authority Authority
	// Snapshot appends the controller's whole state to dst and returns it,
	// with the last tick the state includes (the tick just written): the next
	// Wrote must be for tick+1.
	Snapshot func(dst []byte) (state []byte, tick uint64, err error)
	// CanSwitch reports whether the flight phase allows the switch now
	// (stable hover or cruise, battery above the floor). Called after a write,
	// only once v2 is ready.
	CanSwitch func() bool
	// Follow advances v1's state in probation from v2's forwarded tick: the
	// inputs v2 used and the outputs it wrote. v1 writes nothing. An error
	// means v2's stream cannot be followed, and rolls back.
	Follow func(tick uint64, inputs, outputs []byte) error
	// Envelope checks, after Follow, that the drone is inside the safety
	// envelope (tilt, rates, altitude error); an error rolls back.
	Envelope func(tick uint64) error

	Timeouts Timeouts
	// WriteTimeout bounds each send (default DefaultWriteTimeout).
	WriteTimeout time.Duration
	// Now is the clock for durations (default time.Now); Progress calls it
	// from the caller's goroutine, so it must be safe for concurrent use.
	Now    func() time.Time
	Logger *slog.Logger
}

// Outgoing is the active side's state machine (v1). The tick loop calls Tick
// once per control tick, before deciding whether to write, and Wrote right
// after each PWM write. Progress and Abort may be called from any goroutine;
// everything else belongs to the tick loop.
type Outgoing struct {
	cfg  OutgoingConfig
	t    Timeouts
	conn *Conn
	log  *slog.Logger
	now  func() time.Time
	pub  publisher
	rep  Report

	rx, tx  Frame
	hello   Frame
	snap    []byte
	writing bool

	phaseTicks int // ticks in the current phase
	silent     int // ticks without a frame from v2
	nextTick   uint64

	switchSent bool
	switchT    uint64
	releasedAt time.Time
	ackWait    int

	peerNext uint64 // probation: the next tick v2 must forward
	stall    int
	sinceHB  int

	retaking    bool
	retakeTries int
}

// NewOutgoing returns v1's state machine over conn (usually from Dial). It
// sends nothing until the first Tick. It takes ownership of conn.
func NewOutgoing(conn *Conn, cfg OutgoingConfig) (*Outgoing, error) {
	if conn == nil || cfg.Authority == nil || cfg.Snapshot == nil || cfg.CanSwitch == nil || cfg.Follow == nil || cfg.Envelope == nil {
		return nil, errors.New("handoff: outgoing: need a conn, an authority and the Snapshot, CanSwitch, Follow and Envelope callbacks")
	}
	if cfg.MaxSnapshot <= 0 {
		cfg.MaxSnapshot = DefaultMaxSnapshot
	}
	if cfg.MaxSnapshot > MaxSnapshotLimit {
		return nil, fmt.Errorf("handoff: outgoing: MaxSnapshot %d exceeds %d", cfg.MaxSnapshot, MaxSnapshotLimit)
	}
	if len(cfg.Version) > MaxVersionLen {
		return nil, fmt.Errorf("handoff: outgoing: version longer than %d bytes", MaxVersionLen)
	}
	fields, err := AppendNames(nil, cfg.Fields...)
	if err != nil {
		return nil, err
	}
	o := &Outgoing{
		cfg:     cfg,
		t:       cfg.Timeouts.withDefaults(cfg.ControlHz),
		conn:    conn,
		log:     cfg.Logger,
		now:     cfg.Now,
		snap:    make([]byte, 0, cfg.MaxSnapshot),
		writing: true,
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if cfg.MaxWarmup <= 0 {
		o.cfg.MaxWarmup = o.t.Shadow
	}
	if cfg.WriteTimeout > 0 {
		conn.SetWriteTimeout(cfg.WriteTimeout)
	}
	o.hello = Frame{Type: TypeHello, Hello: Hello{
		Role: RoleActive, Schema: uint32(cfg.Schema), ControlHz: uint32(cfg.ControlHz),
		Version: []byte(cfg.Version), Fields: fields,
	}}
	o.rep = Report{Role: RoleActive, Version: cfg.Version, Schema: cfg.Schema, Writing: true}
	o.pub.publish(&o.rep)
	return o, nil
}

// Writing reports whether v1 holds the authority and writes (as the last
// Tick returned).
func (o *Outgoing) Writing() bool { return o.writing }

// Phase is the current phase (tick loop only; other goroutines use Progress).
func (o *Outgoing) Phase() Phase { return o.rep.Phase }

// Progress returns a copy of the report; safe from any goroutine.
func (o *Outgoing) Progress() Report { return o.pub.report().at(o.now()) }

// Abort asks the tick loop to abort the handoff at its next Tick (a rollback
// once in probation). Safe from any goroutine.
func (o *Outgoing) Abort(reason string) { o.pub.requestAbort(reason) }

// Tick runs v1's state machine for one control tick, before the tick's write
// decision. It returns true when v1 must compute and write this tick (then
// call Wrote). It never blocks longer than a send's write timeout and does
// not allocate in the steady phases.
func (o *Outgoing) Tick() bool {
	o.rep.Ticks++
	defer o.publish()
	if o.retaking {
		o.tryRetake()
		return o.writing
	}
	if o.rep.Phase.Terminal() {
		return o.writing
	}
	if o.rep.Phase == PhaseIdle {
		o.rep.Started = o.now()
		o.enter(PhaseHello)
		if err := o.send(&o.hello); err != nil {
			o.end(CodeSendFailed, "send HELLO: "+err.Error(), true)
			return o.writing
		}
	}
	if msg, ok := o.pub.takeAbort(); ok {
		o.end(CodeOperator, "abort requested: "+msg, true)
		return o.writing
	}
	o.phaseTicks++
	o.silent++
	if o.rep.Phase == PhaseProbation {
		o.stall++
	}
	o.receive()
	if o.rep.Phase.Terminal() {
		return o.writing
	}
	o.checkTimeouts()
	return o.writing
}

// Wrote tells v1's state machine that the controller wrote tick tick with
// these inputs (the sensor samples it used) and outputs. While syncing and
// shadowing it forwards them to v2; once v2 is ready and CanSwitch allows,
// it sends SWITCH for tick+1 and releases the authority, so that v1 writes
// nothing from the next tick on. in and out are not kept.
func (o *Outgoing) Wrote(tick uint64, in, out []byte) {
	p := o.rep.Phase
	if !o.writing || (p != PhaseSync && p != PhaseShadow && p != PhaseSwitch) || o.switchSent {
		return
	}
	defer o.publish()
	if tick != o.nextTick {
		o.end(CodeLocal, fmt.Sprintf("wrote tick %d, expected %d after the snapshot", tick, o.nextTick), true)
		return
	}
	o.nextTick++
	o.tx = Frame{Type: TypeTick, Tick: tick, Inputs: in, Outputs: out}
	if err := o.send(&o.tx); err != nil {
		o.end(CodeSendFailed, "send TICK: "+err.Error(), true)
		return
	}
	if p == PhaseSwitch && o.rep.Ready && o.cfg.CanSwitch() {
		o.doSwitch(tick + 1)
	}
}

func (o *Outgoing) doSwitch(t uint64) {
	o.tx = Frame{Type: TypeSwitch, Tick: t}
	if err := o.send(&o.tx); err != nil {
		o.end(CodeSendFailed, "send SWITCH: "+err.Error(), true)
		return
	}
	if err := o.cfg.Authority.Release(); err != nil {
		// v1 still holds the authority: v2 cannot take it, and the ABORT
		// tells it to stop trying.
		o.end(CodeAuthority, "release the authority: "+err.Error(), true)
		return
	}
	o.writing = false
	o.rep.Writing = false
	o.switchSent = true
	o.switchT = t
	o.rep.SwitchTick = t
	o.releasedAt = o.now()
	o.ackWait = 0
	o.log.Info("handoff: switch", "tick", t)
}

func (o *Outgoing) receive() {
	for i := 0; i < RingSlots; i++ {
		ok, err := o.conn.Poll(&o.rx)
		if err != nil {
			code := CodeProtocol
			if errors.Is(err, ErrClosed) {
				code = CodePeerLost
			}
			o.end(code, err.Error(), code != CodePeerLost)
			return
		}
		if !ok {
			return
		}
		o.silent = 0
		o.rep.FramesReceived++
		o.handle(&o.rx)
		if o.rep.Phase.Terminal() {
			return
		}
	}
}

func (o *Outgoing) handle(f *Frame) {
	switch f.Type {
	case TypeHeartbeat:
		return
	case TypeAbort:
		o.end(f.Reason.Code, "v2 aborted: "+string(f.Reason.Text), false)
		return
	case TypeBye:
		o.end(CodePeerLost, "v2 said BYE", false)
		return
	case TypeRefuse:
		if o.rep.Phase == PhaseHello {
			o.end(CodeIncompatible, "v2 refused: "+string(f.Reason.Text), false)
			return
		}
	}
	switch o.rep.Phase {
	case PhaseHello:
		if f.Type == TypeHello {
			o.onHello(f)
			return
		}
	case PhaseSync, PhaseShadow, PhaseSwitch:
		switch {
		case f.Type == TypeShadowReport:
			o.onShadowReport(f)
			return
		case f.Type == TypeSwitchAck && o.switchSent:
			if f.Tick != o.switchT {
				o.end(CodeProtocol, fmt.Sprintf("SWITCH_ACK for tick %d, switch was at %d", f.Tick, o.switchT), true)
				return
			}
			o.rep.AckTicks = o.ackWait
			o.rep.AckDelay = o.now().Sub(o.releasedAt)
			o.peerNext = o.switchT
			o.stall = 0
			o.sinceHB = 0
			o.enter(PhaseProbation)
			o.log.Info("handoff: switch acknowledged", "tick", o.switchT, "ack_ticks", o.ackWait, "ack_delay", o.rep.AckDelay)
			return
		}
	case PhaseProbation:
		switch f.Type {
		case TypeTick:
			o.onProbationTick(f)
			return
		case TypeShadowReport:
			return // sent before v2 saw the SWITCH
		}
	}
	o.end(CodeProtocol, fmt.Sprintf("unexpected %v in phase %v", f.Type, o.rep.Phase), true)
}

func (o *Outgoing) onHello(f *Frame) {
	h := &f.Hello
	o.rep.PeerVersion = string(h.Version)
	o.rep.PeerSchema = int(h.Schema)
	var why string
	switch {
	case h.Role != RoleStandby:
		why = fmt.Sprintf("peer role %v, want standby", h.Role)
	case o.cfg.ControlHz != 0 && h.ControlHz != 0 && int(h.ControlHz) != o.cfg.ControlHz:
		why = fmt.Sprintf("control rate %d Hz, v1 runs at %d Hz", h.ControlHz, o.cfg.ControlHz)
	case int64(h.Warmup) > int64(o.cfg.MaxWarmup):
		why = fmt.Sprintf("warm-up of %d ticks exceeds %d", h.Warmup, o.cfg.MaxWarmup)
	default:
		if name, missing := o.hello.Hello.Fields.Missing(h.Fields); missing {
			why = fmt.Sprintf("v2 needs state field %q that v1 does not provide", name)
		}
	}
	if why != "" {
		o.tx = Frame{Type: TypeRefuse, Reason: Reason{Code: CodeIncompatible, Text: []byte(why)}}
		o.send(&o.tx)
		o.end(CodeIncompatible, why, false)
		return
	}
	o.tx = Frame{Type: TypeHelloAck}
	if err := o.send(&o.tx); err != nil {
		o.end(CodeSendFailed, "send HELLO_ACK: "+err.Error(), true)
		return
	}
	o.enter(PhaseSync)
	state, tick, err := o.cfg.Snapshot(o.snap[:0])
	if err != nil {
		o.end(CodeLocal, "snapshot: "+err.Error(), true)
		return
	}
	if len(state) > o.cfg.MaxSnapshot {
		o.end(CodeLocal, fmt.Sprintf("snapshot of %d bytes exceeds %d", len(state), o.cfg.MaxSnapshot), true)
		return
	}
	if cap(state) <= cap(o.snap) {
		o.snap = state[:0]
	}
	o.rep.SnapshotBytes = len(state)
	o.rep.SnapshotTick = tick
	o.nextTick = tick + 1
	chunks := 0
	for off := 0; off < len(state) || chunks == 0; off += MaxChunk {
		end := min(off+MaxChunk, len(state))
		o.tx = Frame{Type: TypeSnapshot, Tick: tick, Snapshot: Snapshot{
			Schema: uint32(o.cfg.Schema), Total: uint32(len(state)), Offset: uint32(off), Data: state[off:end],
		}}
		if end == len(state) {
			o.tx.Flags = FlagLastChunk
		}
		if err := o.send(&o.tx); err != nil {
			o.end(CodeSendFailed, "send SNAPSHOT: "+err.Error(), true)
			return
		}
		chunks++
	}
	o.rep.SnapshotChunks = chunks
	o.log.Info("handoff: snapshot sent", "bytes", len(state), "chunks", chunks, "tick", tick, "peer_version", o.rep.PeerVersion, "peer_schema", h.Schema)
}

func (o *Outgoing) onShadowReport(f *Frame) {
	s := &f.Shadow
	o.rep.TicksShadowed = s.Ticks
	o.rep.Divergence = s.Divergence
	o.rep.MaxDivergence = s.MaxDivergence
	o.rep.Ready = s.Ready
	switch o.rep.Phase {
	case PhaseSync:
		o.enter(PhaseShadow) // the first report says v2 installed the snapshot
		if s.Ready {
			o.enter(PhaseSwitch)
		}
	case PhaseShadow:
		if s.Ready {
			o.enter(PhaseSwitch)
		}
	}
}

func (o *Outgoing) onProbationTick(f *Frame) {
	if f.Tick != o.peerNext {
		o.end(CodeProtocol, fmt.Sprintf("v2 forwarded tick %d, expected %d", f.Tick, o.peerNext), true)
		return
	}
	o.peerNext++
	o.stall = 0
	o.rep.Probation++
	if err := o.cfg.Follow(f.Tick, f.Inputs, f.Outputs); err != nil {
		o.end(CodeProtocol, "follow v2's tick: "+err.Error(), true)
		return
	}
	if err := o.cfg.Envelope(f.Tick); err != nil {
		o.end(CodeEnvelope, err.Error(), true)
	}
}

func (o *Outgoing) checkTimeouts() {
	switch p := o.rep.Phase; {
	case p == PhaseProbation:
		if o.stall >= o.t.Stall {
			o.end(CodeStall, fmt.Sprintf("no tick from v2 for %d ticks", o.stall), true)
			return
		}
		if o.phaseTicks >= o.t.Probation {
			o.finish()
			return
		}
		o.sinceHB++
		if o.sinceHB >= o.t.Heartbeat {
			o.sinceHB = 0
			o.tx = Frame{Type: TypeHeartbeat, Tick: o.peerNext - 1}
			o.send(&o.tx) // v2 flies either way; a failure is only counted
		}
	case o.switchSent:
		o.ackWait++
		if o.ackWait >= o.t.Ack {
			o.end(CodeNoAck, fmt.Sprintf("no SWITCH_ACK for tick %d within %d ticks", o.switchT, o.ackWait), true)
		}
	case o.silent > o.t.Silence:
		o.end(CodePeerLost, fmt.Sprintf("v2 silent for %d ticks in %v", o.silent, p), true)
	case p == PhaseHello && o.phaseTicks > o.t.Hello:
		o.end(CodeTimeout, fmt.Sprintf("hello: no answer within %d ticks", o.t.Hello), true)
	case p == PhaseSync && o.phaseTicks > o.t.Sync:
		o.end(CodeTimeout, fmt.Sprintf("sync: snapshot not installed within %d ticks", o.t.Sync), true)
	case p == PhaseShadow && o.phaseTicks > o.t.Shadow:
		o.end(CodeTimeout, fmt.Sprintf("shadow: v2 not ready within %d ticks (divergence %g, max %g)", o.t.Shadow, o.rep.Divergence, o.rep.MaxDivergence), true)
	case p == PhaseSwitch && o.phaseTicks > o.t.Window:
		if o.rep.Ready {
			o.end(CodeFlightPhase, fmt.Sprintf("switch: the flight phase did not allow a switch within %d ticks", o.t.Window), true)
		} else {
			o.end(CodeTimeout, fmt.Sprintf("switch: v2 not ready again within %d ticks", o.t.Window), true)
		}
	}
}

// finish ends a successful probation: PROBATION_END, BYE, and v1 exits.
func (o *Outgoing) finish() {
	o.tx = Frame{Type: TypeCommit, Tick: o.peerNext - 1}
	o.send(&o.tx)
	o.tx = Frame{Type: TypeBye, Tick: o.peerNext - 1}
	o.send(&o.tx)
	o.conn.Close()
	o.enter(PhaseDone)
	o.log.Info("handoff: probation passed", "probation_ticks", o.rep.Probation, "durations", o.rep.Durations)
}

// end stops the handoff for a reason. Before the switch v1 still holds the
// authority and simply says ABORT; after it, v1 says ABORT (no ack yet) or
// ROLLBACK (probation) and takes the authority back. tell is false when the
// peer already knows (it sent the ABORT, REFUSE or BYE).
func (o *Outgoing) end(code Code, detail string, tell bool) {
	if o.rep.Phase.Terminal() {
		return
	}
	o.rep.Code = code
	o.rep.Detail = detail
	typ, final := TypeAbort, PhaseAborted
	if o.rep.Phase == PhaseProbation {
		typ, final = TypeRollback, PhaseRolledBack
	}
	if tell || o.switchSent {
		o.tx = Frame{Type: typ, Tick: o.peerNext, Reason: Reason{Code: code, Text: []byte(detail)}}
		o.send(&o.tx)
	}
	o.enter(final)
	o.log.Warn("handoff: "+final.String(), "code", code, "detail", detail, "writing", o.writing)
	if o.writing {
		o.conn.Close()
		return
	}
	o.retaking = true
	o.retakeTries = 0
	o.tryRetake()
}

func (o *Outgoing) tryRetake() {
	o.retakeTries++
	seize := false
	err := o.cfg.Authority.Acquire(false)
	if errors.Is(err, ErrAuthorityBusy) && o.retakeTries > o.t.SeizeAfter {
		seize = true
		err = o.cfg.Authority.Acquire(true)
	}
	if err != nil {
		o.rep.Retakes++
		if o.rep.Retakes == 1 || !errors.Is(err, ErrAuthorityBusy) {
			o.log.Warn("handoff: retaking the authority", "seize", seize, "err", err)
		}
		return
	}
	o.retaking = false
	o.drainPeer()
	o.writing = true
	o.rep.Writing = true
	o.rep.Seized = seize
	o.conn.Close()
	o.log.Info("handoff: authority retaken", "seized", seize, "retake_ticks", o.rep.Retakes, "peer_next", o.peerNext)
}

// drainPeer follows, right after v1 retook the authority and before it
// writes, every tick v2 wrote that v1 has not followed yet. v2 sends each
// TICK right after its write and releases the authority only in a later
// Tick (on the ROLLBACK or ABORT, or on its own failure), so by the time
// v1's Acquire succeeds every tick v2 wrote is on the socket: v2 may have
// written ticks after v1's last poll (v2's tick running while v1 decided to
// roll back, or while v1 was retrying the lock), and without them v1 would
// write a tick number v2 already wrote. A seized v2 (hung) may have written
// a tick it never sent; nothing can follow that one.
//
// SWITCH_ACK(T) (an ABORT for no-ack that crossed the ack) starts the
// stream at T. Other frames are skipped; the end of the connection or an
// error ends the drain.
func (o *Outgoing) drainPeer() {
	if !o.switchSent {
		return // v2 never held the authority
	}
	acked := o.rep.Phase == PhaseRolledBack || o.peerNext != 0
	for i := 0; i < 4*RingSlots; i++ {
		ok, err := o.conn.pollWait(&o.rx)
		if err != nil || !ok {
			return
		}
		o.rep.FramesReceived++
		switch f := &o.rx; {
		case f.Type == TypeSwitchAck && f.Tick == o.switchT && !acked:
			acked = true
			o.peerNext = o.switchT
		case f.Type == TypeTick && acked:
			if f.Tick != o.peerNext {
				o.log.Error("handoff: draining v2's ticks after the retake: out of step", "tick", f.Tick, "expected", o.peerNext)
				return
			}
			if err := o.cfg.Follow(f.Tick, f.Inputs, f.Outputs); err != nil {
				o.log.Error("handoff: draining v2's ticks after the retake: follow", "tick", f.Tick, "err", err)
				return
			}
			o.peerNext++
			o.rep.Drained++
		}
	}
}

func (o *Outgoing) enter(p Phase) {
	o.rep.enter(p, o.now())
	o.phaseTicks = 0
	o.silent = 0
}

func (o *Outgoing) send(f *Frame) error {
	err := o.conn.Send(f)
	if err != nil {
		o.rep.SendErrors++
		return err
	}
	o.rep.FramesSent++
	return nil
}

func (o *Outgoing) publish() { o.pub.publish(&o.rep) }
