package mqttapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Phase is the phase of an update, as reported in events and reported
// state. The normal path is received → verified → fetching → fetched →
// starting → hello → sync → shadow → waiting (for the flight phase or
// battery policy) → switching → probation → committed.
type Phase string

// Update phases.
const (
	PhaseIdle        Phase = "idle"
	PhaseReceived    Phase = "received"
	PhaseRejected    Phase = "rejected" // verification failed; nothing changed
	PhaseVerified    Phase = "verified"
	PhaseFetching    Phase = "fetching" // registry pull or MQTT transfer in progress
	PhaseFetched     Phase = "fetched"
	PhaseStarting    Phase = "starting" // v2 container created and started as standby
	PhaseHello       Phase = "hello"
	PhaseSync        Phase = "sync"
	PhaseShadow      Phase = "shadow"
	PhaseWaiting     Phase = "waiting" // ready, waiting for an allowed flight phase
	PhaseSwitching   Phase = "switching"
	PhaseProbation   Phase = "probation"
	PhaseCommitted   Phase = "committed"
	PhaseRollingBack Phase = "rolling_back"
	PhaseRolledBack  Phase = "rolled_back"
	PhaseAborted     Phase = "aborted" // failed or cancelled before the switch; v1 untouched
	PhaseFailed      Phase = "failed"
)

// Terminal reports whether p ends an update.
func (p Phase) Terminal() bool {
	switch p {
	case PhaseRejected, PhaseCommitted, PhaseRolledBack, PhaseAborted, PhaseFailed:
		return true
	}
	return false
}

// Results of an update ("result"), a subset of the terminal phases.
const (
	ResultCommitted  = "committed"
	ResultRolledBack = "rolled_back"
	ResultAborted    = "aborted"
	ResultRejected   = "rejected"
	ResultFailed     = "failed"
)

// Running describes a controller version the drone runs.
type Running struct {
	Version string    `json:"version"`
	Image   string    `json:"image"`            // repo@sha256:... as applied
	Since   time.Time `json:"since,omitzero"`   // when it became active
	Serial  uint64    `json:"serial,omitempty"` // manifest that installed it; 0 for the first start
}

// UpdateState is the update in progress, if any.
type UpdateState struct {
	Serial  uint64    `json:"serial"`
	Version string    `json:"version"`
	Phase   Phase     `json:"phase"`
	Started time.Time `json:"started"`
	Changed time.Time `json:"changed"` // when Phase was entered
}

// Result is how the last update ended.
type Result struct {
	Serial  uint64    `json:"serial"`
	Version string    `json:"version,omitempty"`
	Result  string    `json:"result"`           // ResultCommitted, ...
	Reason  string    `json:"reason,omitempty"` // Reason(err) code or agent reason
	Error   string    `json:"error,omitempty"`  // human-readable detail
	At      time.Time `json:"at"`
	Figures *Figures  `json:"figures,omitempty"`
}

// Reported is the drone's retained state on its reported topic.
type Reported struct {
	V            int          `json:"v"`
	Drone        string       `json:"drone"`
	Fleets       []string     `json:"fleets,omitempty"`
	AgentVersion string       `json:"agent_version"`
	Runtime      string       `json:"runtime,omitempty"` // "docker" or "process"
	Arch         string       `json:"arch,omitempty"`    // e.g. "linux/arm64"
	Online       bool         `json:"online"`            // true while the agent publishes; see the status topic for liveness
	Active       *Running     `json:"active,omitempty"`
	Standby      *Running     `json:"standby,omitempty"` // the previous version during probation
	Update       *UpdateState `json:"update,omitempty"`
	LastResult   *Result      `json:"last_result,omitempty"`
	// LastSerial is the serial of the last manifest applied (committed,
	// rolled back or aborted: an update is never retried under the same
	// serial). LastRequestSerial is that of the last request.
	LastSerial        uint64    `json:"last_serial"`
	LastRequestSerial uint64    `json:"last_request_serial,omitempty"`
	StartedAt         time.Time `json:"started_at,omitzero"` // agent start
	UpdatedAt         time.Time `json:"updated_at"`
}

// Figures are the measurements attached to events and results. Absent
// (zero) fields were not measured in that phase.
type Figures struct {
	PullBytes       int64              `json:"pull_bytes,omitempty"`
	PullTotal       int64              `json:"pull_total,omitempty"`
	SyncMS          float64            `json:"sync_ms,omitempty"`
	ShadowTicks     uint64             `json:"shadow_ticks,omitempty"`
	Divergence      float64            `json:"divergence,omitempty"` // max |v2 - v1| of motor outputs over the shadow window
	SwitchTick      uint64             `json:"switch_tick,omitempty"`
	ControlGapMS    float64            `json:"control_gap_ms,omitempty"` // max gap between PWM writes across the switch
	ControlPeriodMS float64            `json:"control_period_ms,omitempty"`
	MissedTicks     int                `json:"missed_ticks,omitempty"`
	MaxAttDevDeg    float64            `json:"max_att_dev_deg,omitempty"`
	MaxAltDevM      float64            `json:"max_alt_dev_m,omitempty"`
	PhaseMS         map[string]float64 `json:"phase_ms,omitempty"` // time spent in each phase
	Extra           map[string]float64 `json:"extra,omitempty"`    // anything else, by name
}

// Event is one phase change or result on a drone's events topic.
type Event struct {
	V      int    `json:"v"`
	Drone  string `json:"drone"`
	Seq    uint64 `json:"seq"` // grows by one per event since the agent started
	Serial uint64 `json:"serial,omitempty"`
	// Kind of the message the event is about: "update", "rollback" or
	// "cancel".
	Kind      string    `json:"kind,omitempty"`
	Version   string    `json:"version,omitempty"`
	Phase     Phase     `json:"phase"`
	Prev      Phase     `json:"prev,omitempty"`
	At        time.Time `json:"at"`
	ElapsedMS float64   `json:"elapsed_ms,omitempty"` // since the update was received
	Figures   *Figures  `json:"figures,omitempty"`
	Result    string    `json:"result,omitempty"` // set on terminal phases
	Reason    string    `json:"reason,omitempty"` // e.g. Reason(err): "bad_signature"
	Error     string    `json:"error,omitempty"`
	// Topic is where a rejected message arrived.
	Topic string `json:"topic,omitempty"`
}

// RejectionEvent builds the event an agent publishes when Verify or
// VerifyRequest rejects a message that arrived on topic. Callers should not
// publish one for ErrAlreadyApplied or ErrCleared, which are no-ops (see
// IsNoop).
func RejectionEvent(drone string, seq uint64, topic string, err error, now time.Time) Event {
	return Event{
		V:      Version,
		Drone:  drone,
		Seq:    seq,
		Phase:  PhaseRejected,
		At:     now.UTC(),
		Result: ResultRejected,
		Reason: Reason(err),
		Error:  err.Error(),
		Topic:  topic,
	}
}

// IsNoop reports whether a Verify or VerifyRequest error means "nothing to
// do" rather than a rejection: the serial was already applied, or the
// retained topic was cleared. No event is published for these.
func IsNoop(err error) bool {
	return errors.Is(err, ErrAlreadyApplied) || errors.Is(err, ErrCleared)
}

// Telemetry is the active controller's state relayed at a few Hz. Angles in
// degrees, altitude in metres above the take-off point (ENU, see
// docs/conventions.md), motors as ESC commands in [0, 1] by motor number.
type Telemetry struct {
	V                 int                `json:"v"`
	Drone             string             `json:"drone"`
	At                time.Time          `json:"at"`
	Tick              uint64             `json:"tick,omitempty"`
	Mode              string             `json:"mode"` // "disarmed", "takeoff", "hover", "land", ...
	Armed             bool               `json:"armed"`
	RollDeg           float64            `json:"roll_deg"`
	PitchDeg          float64            `json:"pitch_deg"`
	YawDeg            float64            `json:"yaw_deg"`
	AltM              float64            `json:"alt_m"`
	VSpeedMS          float64            `json:"vspeed_ms"`
	Motors            []float64          `json:"motors"`
	ControllerVersion string             `json:"controller_version"`
	Role              string             `json:"role,omitempty"` // "active"
	BatteryV          float64            `json:"battery_v,omitempty"`
	BatteryPct        float64            `json:"battery_pct,omitempty"`
	Extra             map[string]float64 `json:"extra,omitempty"` // e.g. a v2's camera frame rate
}

// Status is the retained liveness message on a drone's status topic. The
// agent registers Status{Online: false} as its last will and publishes
// Status{Online: true} on every connect.
type Status struct {
	V            int       `json:"v"`
	Online       bool      `json:"online"`
	AgentVersion string    `json:"agent_version,omitempty"`
	At           time.Time `json:"at,omitzero"` // absent in the last will, which is fixed at connect time
}

// OfflineWill is the last-will payload: {"v":1,"online":false}.
func OfflineWill() []byte { return []byte(`{"v":1,"online":false}`) }

// Marshal encodes the reported state, setting V.
func (r Reported) Marshal() ([]byte, error) {
	r.V = Version
	return marshal("reported", r, MaxStateSize)
}

// Marshal encodes the event, setting V.
func (e Event) Marshal() ([]byte, error) { e.V = Version; return marshal("event", e, MaxStateSize) }

// Marshal encodes the telemetry, setting V.
func (t Telemetry) Marshal() ([]byte, error) {
	t.V = Version
	return marshal("telemetry", t, MaxStateSize)
}

// Marshal encodes the status, setting V.
func (s Status) Marshal() ([]byte, error) { s.V = Version; return marshal("status", s, MaxStateSize) }

func marshal(what string, v any, max int) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("mqttapi: %s: %w", what, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("mqttapi: %s of %d bytes, at most %d: %w", what, len(b), max, ErrOversized)
	}
	return b, nil
}

// DecodeReported parses reported state. Unknown fields are ignored (newer
// agents may add some within v1).
func DecodeReported(raw []byte) (*Reported, error) {
	var r Reported
	if err := decode("reported", raw, MaxStateSize, &r, false); err != nil {
		return nil, err
	}
	if err := ValidateID(r.Drone); err != nil {
		return nil, fmt.Errorf("mqttapi: reported: drone: %w", err)
	}
	return &r, nil
}

// DecodeEvent parses an event. Unknown fields are ignored.
func DecodeEvent(raw []byte) (*Event, error) {
	var e Event
	if err := decode("event", raw, MaxStateSize, &e, false); err != nil {
		return nil, err
	}
	if err := ValidateID(e.Drone); err != nil {
		return nil, fmt.Errorf("mqttapi: event: drone: %w", err)
	}
	if e.Phase == "" {
		return nil, fmt.Errorf("mqttapi: event without phase: %w", ErrInvalid)
	}
	return &e, nil
}

// DecodeTelemetry parses telemetry. Unknown fields are ignored.
func DecodeTelemetry(raw []byte) (*Telemetry, error) {
	var t Telemetry
	if err := decode("telemetry", raw, MaxStateSize, &t, false); err != nil {
		return nil, err
	}
	if err := ValidateID(t.Drone); err != nil {
		return nil, fmt.Errorf("mqttapi: telemetry: drone: %w", err)
	}
	if len(t.Motors) > 16 {
		return nil, fmt.Errorf("mqttapi: telemetry with %d motors: %w", len(t.Motors), ErrInvalid)
	}
	return &t, nil
}

// DecodeStatus parses a status message (including the last will).
func DecodeStatus(raw []byte) (*Status, error) {
	var s Status
	if err := decode("status", raw, MaxStateSize, &s, false); err != nil {
		return nil, err
	}
	return &s, nil
}
