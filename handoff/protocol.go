package handoff

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Phase is where a handoff stands, on either side.
type Phase uint8

// Phases. Outgoing (v1) goes Idle → Hello → Sync → Shadow → Switch →
// Probation → Done; Incoming (v2) goes Idle → Hello → Sync → Shadow →
// Active → Committed. Either may end Aborted or RolledBack instead.
const (
	PhaseIdle       Phase = iota // constructed, first Tick not yet run
	PhaseHello                   // exchanging HELLOs
	PhaseSync                    // v1 sent the snapshot and streams ticks; v2 reassembles and installs it
	PhaseShadow                  // v2 computes on v1's inputs until ready
	PhaseSwitch                  // v1: waiting for a tick the flight phase allows, then for SWITCH_ACK
	PhaseProbation               // v1: hot standby following v2's stream
	PhaseActive                  // v2: holds the authority, streams its ticks to v1
	PhaseDone                    // v1: probation passed, v1 said BYE and exits
	PhaseCommitted               // v2: probation passed (or v1 is gone after the switch); v2 flies on
	PhaseAborted                 // the handoff ended before a switch completed; v1 flies
	PhaseRolledBack              // the switch was undone: v1 flies again, v2 stops writing
	numPhases
)

var phaseNames = [...]string{"idle", "hello", "sync", "shadow", "switch", "probation", "active", "done", "committed", "aborted", "rolled-back"}

func (p Phase) String() string {
	if p < numPhases {
		return phaseNames[p]
	}
	return fmt.Sprintf("Phase(%d)", uint8(p))
}

// Terminal reports whether the handoff is over in this phase.
func (p Phase) Terminal() bool { return p >= PhaseDone }

// MarshalText makes phases readable in JSON.
func (p Phase) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Code is the reason code of a REFUSE, ABORT or ROLLBACK, and of a report.
type Code uint16

// Reason codes.
const (
	CodeNone         Code = 0
	CodeOperator     Code = 1  // an abort command (the agent, the operator)
	CodeIncompatible Code = 2  // schema not migratable, a needed field missing, rate or role mismatch
	CodeTimeout      Code = 3  // a phase ran out of ticks
	CodeProtocol     Code = 4  // a malformed, out-of-sequence or unexpected frame
	CodePeerLost     Code = 5  // the connection ended, or the peer went silent
	CodeSendFailed   Code = 6  // the socket stayed full (or failed) for a send
	CodeNoAck        Code = 7  // v2 did not acknowledge the switch in time
	CodeStall        Code = 8  // v2's tick stream stalled in probation
	CodeEnvelope     Code = 9  // v2 left the safety envelope in probation
	CodeAuthority    Code = 10 // the PWM authority could not be released or taken
	CodeNotReady     Code = 11 // SWITCH arrived while v2 was not ready
	CodeLocal        Code = 12 // this side's snapshot, install or step failed
	CodeFlightPhase  Code = 13 // the flight phase never allowed a switch within the window
)

var codeNames = [...]string{"none", "operator", "incompatible", "timeout", "protocol", "peer-lost", "send-failed", "no-ack", "stall", "envelope", "authority", "not-ready", "local", "flight-phase"}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("Code(%d)", uint16(c))
}

// MarshalText makes codes readable in JSON.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// ErrAuthorityBusy is what Authority.Acquire returns when another controller
// holds the authority and seize is false.
var ErrAuthorityBusy = errors.New("handoff: PWM authority held by another controller")

// Authority is the PWM authority as the handoff sees it: the controller adapts
// its kernel lock (hw's PWM lock) to it. The state machines call it from the
// tick loop, so neither method may block for more than a small fraction of a
// tick.
//
// The rules that keep exactly one writer (docs/handoff.md, "Exactly one
// writer"):
//
//  1. The controller writes PWM only while it holds the authority, and only on
//     a tick for which Tick returned true.
//  2. Release gives the authority up for good: once it returns nil the caller
//     writes nothing until it acquires it again. v1 calls it only right after
//     writing tick T-1 and sending SWITCH; v2 only on ROLLBACK, ABORT, or its
//     own failure after the switch.
//  3. Acquire(false) takes the authority only when nobody holds it and returns
//     ErrAuthorityBusy otherwise. v2 calls it only after a SWITCH frame; v1
//     only after sending ABORT or ROLLBACK to v2.
//  4. Acquire(true) (seize) takes the authority even from a live holder, and
//     must fence it: every later write of the previous holder fails. Only v1
//     seizes, only after ABORT or ROLLBACK and after Timeouts.SeizeAfter ticks
//     of polite attempts.
//  5. A process that dies loses the authority at once (flock does this).
type Authority interface {
	Release() error
	Acquire(seize bool) error
}

// Timeouts bounds every phase, in control ticks (the tick loop's own ticks,
// counted by calls to Tick). Zero fields take DefaultTimeouts' values.
type Timeouts struct {
	Hello      int // start → handshake complete (v1: HELLO_ACK sent; v2: HELLO_ACK received)
	Sync       int // handshake → snapshot installed (v1: first SHADOW_REPORT)
	Shadow     int // snapshot installed → v2 ready
	Window     int // v2 ready → a tick the flight phase allows for the switch
	Ack        int // SWITCH sent → SWITCH_ACK (v1 retakes after this many ticks); also v2's attempts to acquire
	Probation  int // length of the probation window
	Stall      int // probation: ticks without a TICK from v2 before rollback
	Silence    int // any other phase: ticks without any frame from the peer before giving up
	SeizeAfter int // ticks of polite Acquire(false) before v1 seizes
	Heartbeat  int // v1 in probation: a HEARTBEAT every this many ticks
}

// DefaultTimeouts returns the default timeouts for a control rate: HELLO and
// sync 1 s each, shadow 10 s, switch window 10 s, ack 20 ms, probation 5 s,
// probation stall 20 ms, silence 250 ms, seize after 2 ticks, a heartbeat
// every 100 ms. Every tick bound is at least 2 ticks.
func DefaultTimeouts(hz int) Timeouts {
	if hz <= 0 {
		hz = 400
	}
	t := func(d time.Duration) int {
		n := int(d * time.Duration(hz) / time.Second)
		if n < 2 {
			n = 2
		}
		return n
	}
	return Timeouts{
		Hello:      t(time.Second),
		Sync:       t(time.Second),
		Shadow:     t(10 * time.Second),
		Window:     t(10 * time.Second),
		Ack:        t(20 * time.Millisecond),
		Probation:  t(5 * time.Second),
		Stall:      t(20 * time.Millisecond),
		Silence:    t(250 * time.Millisecond),
		SeizeAfter: 2,
		Heartbeat:  t(100 * time.Millisecond),
	}
}

func (t Timeouts) withDefaults(hz int) Timeouts {
	d := DefaultTimeouts(hz)
	fill := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	fill(&t.Hello, d.Hello)
	fill(&t.Sync, d.Sync)
	fill(&t.Shadow, d.Shadow)
	fill(&t.Window, d.Window)
	fill(&t.Ack, d.Ack)
	fill(&t.Probation, d.Probation)
	fill(&t.Stall, d.Stall)
	fill(&t.Silence, d.Silence)
	if t.SeizeAfter < 0 {
		t.SeizeAfter = 0
	} else if t.SeizeAfter == 0 {
		t.SeizeAfter = d.SeizeAfter
	}
	fill(&t.Heartbeat, d.Heartbeat)
	return t
}

// Durations are the time spent in each phase, measured with the injected
// clock. The current phase counts up to the moment of the report.
type Durations struct {
	Hello     time.Duration `json:"hello"`
	Sync      time.Duration `json:"sync"`
	Shadow    time.Duration `json:"shadow"`
	Switch    time.Duration `json:"switch"`
	Probation time.Duration `json:"probation"` // v1's probation, or v2's active time until commit
}

func (d *Durations) add(p Phase, x time.Duration) {
	switch p {
	case PhaseHello:
		d.Hello += x
	case PhaseSync:
		d.Sync += x
	case PhaseShadow:
		d.Shadow += x
	case PhaseSwitch:
		d.Switch += x
	case PhaseProbation, PhaseActive:
		d.Probation += x
	}
}

// Report is the progress and the result of one handoff on one side, for the
// controller's control socket (the agent's progress command). Figures are
// fields, not prose.
type Report struct {
	Role   Role   `json:"role"`
	Phase  Phase  `json:"phase"`
	Code   Code   `json:"code"`             // why it ended, when Aborted or RolledBack (or CodePeerLost on a v2 committed because v1 vanished)
	Detail string `json:"detail,omitempty"` // the reason in words, from this side or the peer

	Version     string `json:"version"`
	Schema      int    `json:"schema"`
	PeerVersion string `json:"peer_version,omitempty"`
	PeerSchema  int    `json:"peer_schema"`

	Writing bool `json:"writing"` // this side holds the authority and writes

	Started   time.Time `json:"started"`
	Durations Durations `json:"durations"`
	Ticks     uint64    `json:"ticks"` // calls to Tick so far

	SnapshotBytes  int    `json:"snapshot_bytes"`
	SnapshotChunks int    `json:"snapshot_chunks"`
	SnapshotTick   uint64 `json:"snapshot_tick"`
	MigratedBytes  int    `json:"migrated_bytes,omitempty"` // v2: the snapshot after migration to its schema

	TicksShadowed uint64  `json:"ticks_shadowed"`
	Divergence    float64 `json:"divergence"`
	MaxDivergence float64 `json:"max_divergence"`
	Ready         bool    `json:"ready"`

	SwitchTick uint64        `json:"switch_tick"`         // T, the first tick v2 writes
	AckTicks   int           `json:"ack_ticks"`           // v1: ticks from SWITCH to SWITCH_ACK; v2: ticks from SWITCH to its first write
	AckDelay   time.Duration `json:"ack_delay"`           // v1: release → SWITCH_ACK processed; v2: SWITCH processed → first write
	Retakes    int           `json:"retake_ticks"`        // v1: ticks it spent retaking the authority (no writer of its own)
	Seized     bool          `json:"seized"`              // v1 had to seize the authority
	Drained    int           `json:"drained_ticks"`       // v1: v2's ticks followed right after the retake, before v1's first write
	Probation  uint64        `json:"probation_ticks"`     // ticks of probation (v1) or of active streaming (v2)
	PeerLost   bool          `json:"peer_lost,omitempty"` // the peer vanished (v2 committed without PROBATION_END)
	Overdue    bool          `json:"overdue,omitempty"`   // v2: no PROBATION_END long after the probation should have ended

	FramesSent     uint64 `json:"frames_sent"`
	FramesReceived uint64 `json:"frames_received"`
	SendErrors     uint64 `json:"send_errors"`

	since time.Time // when the current phase began
}

// publisher lets another goroutine (the control socket) read a consistent
// copy of a report the tick loop owns, and ask for an abort.
type publisher struct {
	mu       sync.Mutex
	pub      Report
	abortReq bool
	abortMsg string
}

func (p *publisher) publish(r *Report) {
	p.mu.Lock()
	p.pub = *r
	p.mu.Unlock()
}

func (p *publisher) report() Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pub
}

func (p *publisher) requestAbort(msg string) {
	p.mu.Lock()
	p.abortReq = true
	p.abortMsg = msg
	p.mu.Unlock()
}

func (p *publisher) takeAbort() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.abortReq {
		return "", false
	}
	p.abortReq = false
	return p.abortMsg, true
}

// enter moves r to phase p at time t, adding the time spent in the phase
// it leaves.
func (r *Report) enter(p Phase, t time.Time) {
	if !r.since.IsZero() {
		r.Durations.add(r.Phase, t.Sub(r.since))
	}
	r.since = t
	r.Phase = p
}

// at returns r with the current phase's running time added.
func (r Report) at(t time.Time) Report {
	if !r.since.IsZero() && !r.Phase.Terminal() {
		r.Durations.add(r.Phase, t.Sub(r.since))
	}
	return r
}

// UnmarshalText reads a phase's name (a report read back from JSON).
func (p *Phase) UnmarshalText(b []byte) error {
	for q := PhaseIdle; q < numPhases; q++ {
		if q.String() == string(b) {
			*p = q
			return nil
		}
	}
	return fmt.Errorf("handoff: unknown phase %q", b)
}

// UnmarshalText reads a reason code's name.
func (c *Code) UnmarshalText(b []byte) error {
	for i, n := range codeNames {
		if n == string(b) {
			*c = Code(i)
			return nil
		}
	}
	return fmt.Errorf("handoff: unknown reason code %q", b)
}
