package ctlsock

import (
	"path/filepath"
	"time"
)

// Version is the control protocol version, "v" in every request and response.
const Version = 1

// SocketName is the control socket of a controller started without a name
// (a controller run by hand): <run-dir>/control.sock.
const SocketName = "control.sock"

// SocketPath is the control socket of the controller called name in runDir:
// <run-dir>/control.<name>.sock, so that two controllers sharing the run
// directory during a handoff each have their own. An empty name gives
// <run-dir>/control.sock.
func SocketPath(runDir, name string) string {
	if name == "" {
		return filepath.Join(runDir, SocketName)
	}
	return filepath.Join(runDir, "control."+name+".sock")
}

// HandoffSocketName is the file name, relative to the run directory, of the
// handoff socket a standby controller called name listens on:
// handoff.<name>.sock. The agent passes it as HandoffStart.To.
func HandoffSocketName(name string) string {
	if name == "" {
		return "handoff.sock"
	}
	return "handoff." + name + ".sock"
}

// Commands.
const (
	CmdStatus          = "status"
	CmdHandoffStart    = "handoff_start"
	CmdHandoffProgress = "handoff_progress"
	CmdHandoffAbort    = "handoff_abort"
)

// Live roles a controller reports in Status.Role.
const (
	RoleCold    = "cold"    // started cold on the ground; holds the authority
	RoleActive  = "active"  // drives the motors
	RoleStandby = "standby" // waits for, or follows, a handoff
)

// Status is the result of "status". The fields up to Ticks are those of
// docs/flightctl.md; Authority, Phase and BatteryPct are what the agent
// additionally expects (see docs/agent.md) and are optional: when absent,
// Authority is derived from Role and the battery counts as unknown.
type Status struct {
	Version        string     `json:"version"`
	Schema         int        `json:"schema"`
	Name           string     `json:"name,omitempty"`
	Role           string     `json:"role"`
	Mode           string     `json:"mode"` // "disarmed", "armed", "takeoff", "hover", "land", ...
	Armed          bool       `json:"armed"`
	Airborne       bool       `json:"airborne"`
	Failsafe       string     `json:"failsafe,omitempty"`
	Reason         string     `json:"reason,omitempty"`
	Tick           uint64     `json:"tick"`
	TimeS          float64    `json:"time_s"`
	RollDeg        float64    `json:"roll_deg"`
	PitchDeg       float64    `json:"pitch_deg"`
	YawDeg         float64    `json:"yaw_deg"`
	AltM           float64    `json:"alt_m"`
	VZMS           float64    `json:"vz_ms"`
	TargetAltM     float64    `json:"target_alt_m"`
	MotorsUS       [4]float64 `json:"motors_us"`
	GyroCalibrated bool       `json:"gyro_calibrated"`
	IMUOK          bool       `json:"imu_ok"`
	BaroOK         bool       `json:"baro_ok"`
	Mission        string     `json:"mission,omitempty"`
	MissionStep    int        `json:"mission_step"`
	MissionActive  bool       `json:"mission_active"`
	MissionDone    bool       `json:"mission_done"`
	BatteryV       *float64   `json:"battery_v"`
	Ticks          TickStats  `json:"ticks"`

	// Authority: this controller holds the PWM authority now.
	Authority *bool `json:"authority,omitempty"`
	// Phase is the flight phase the switch policy looks at ("hover",
	// "cruise", "ground", ...); Mode when absent.
	Phase string `json:"phase,omitempty"`
	// BatteryPct is the charge, 0..100; nil when not measured.
	BatteryPct *float64 `json:"battery_pct,omitempty"`
}

// HoldsAuthority reports whether the controller says it holds the PWM
// authority: the Authority field when present, else a cold or active role.
func (s *Status) HoldsAuthority() bool {
	if s.Authority != nil {
		return *s.Authority
	}
	return s.Role == RoleCold || s.Role == RoleActive
}

// FlightPhase is Phase, or Mode when the controller does not report one.
func (s *Status) FlightPhase() string {
	if s.Phase != "" {
		return s.Phase
	}
	return s.Mode
}

// TickStats are the control loop figures in Status.Ticks.
type TickStats struct {
	Ticks         uint64  `json:"ticks"`
	RateHz        float64 `json:"rate_hz"`
	PeriodUS      float64 `json:"period_us"`
	JitterP50US   float64 `json:"jitter_p50_us"`
	JitterP99US   float64 `json:"jitter_p99_us"`
	MaxGapUS      float64 `json:"max_gap_us"`
	Missed        uint64  `json:"missed"`
	MissedPercent float64 `json:"missed_percent"`
	Overruns      uint64  `json:"overruns"`
	MeanWorkUS    float64 `json:"mean_work_us"`
	MaxWorkUS     float64 `json:"max_work_us"`
	WriteErrors   uint64  `json:"write_errors"`
	ReadErrors    uint64  `json:"read_errors"`
}

// HandoffStart is the request of "handoff_start", sent to the ACTIVE
// controller (v1): hand the flight over to the standby listening on To.
type HandoffStart struct {
	// To is the standby's handoff socket: a file name relative to the run
	// directory (HandoffSocketName), since the controller may see the run
	// directory at another path than the agent.
	To string `json:"to"`
	// Peer is the standby's name, for logs and reports.
	Peer string `json:"peer,omitempty"`
	// Probation is how long v1 stays a hot standby after the switch;
	// zero: the controller's default.
	ProbationMS int64 `json:"probation_ms,omitempty"`
	// SwitchWindowMS bounds the wait for a tick the flight phase allows,
	// once v2 is ready; zero: the controller's default.
	SwitchWindowMS int64 `json:"switch_window_ms,omitempty"`
	// AllowedPhases are the flight phases in which the switch may happen;
	// empty: the controller's own rule.
	AllowedPhases []string `json:"allowed_phases,omitempty"`
	// UpdateID names the update, for the controller's logs.
	UpdateID string `json:"update_id,omitempty"`
}

// HandoffAbort is the request of "handoff_abort": before the switch, end
// the handoff with v1 flying on; in probation, take the authority back
// (a rollback). After the handoff ended it is refused.
type HandoffAbort struct {
	Reason string `json:"reason,omitempty"`
}

// Handoff phases, in Progress.Phase. v1 goes hello → sync → shadow → switch
// → probation → done; v2 goes hello → sync → shadow → active → committed.
// Either may end aborted or rolled-back.
const (
	PhaseIdle       = "idle"
	PhaseHello      = "hello"
	PhaseSync       = "sync"
	PhaseShadow     = "shadow"
	PhaseSwitch     = "switch"
	PhaseProbation  = "probation"
	PhaseActive     = "active"
	PhaseDone       = "done"
	PhaseCommitted  = "committed"
	PhaseAborted    = "aborted"
	PhaseRolledBack = "rolled-back"
)

// Progress is the result of "handoff_progress" (and of handoff_start and
// handoff_abort): one side's view of the handoff. Its JSON is that of the
// handoff package's Report, so a controller returns that as it is.
type Progress struct {
	Role   string `json:"role"` // "v1" or "v2" side, as the controller names it
	Phase  string `json:"phase"`
	Code   string `json:"code"`
	Detail string `json:"detail,omitempty"`

	Version     string `json:"version"`
	Schema      int    `json:"schema"`
	PeerVersion string `json:"peer_version,omitempty"`
	PeerSchema  int    `json:"peer_schema"`

	Writing bool `json:"writing"`

	Started   time.Time `json:"started"`
	Durations Durations `json:"durations"`
	Ticks     uint64    `json:"ticks"`

	SnapshotBytes  int    `json:"snapshot_bytes"`
	SnapshotChunks int    `json:"snapshot_chunks"`
	SnapshotTick   uint64 `json:"snapshot_tick"`
	MigratedBytes  int    `json:"migrated_bytes,omitempty"`

	TicksShadowed uint64  `json:"ticks_shadowed"`
	Divergence    float64 `json:"divergence"`
	MaxDivergence float64 `json:"max_divergence"`
	Ready         bool    `json:"ready"`

	SwitchTick uint64        `json:"switch_tick"`
	AckTicks   int           `json:"ack_ticks"`
	AckDelay   time.Duration `json:"ack_delay"`
	Retakes    int           `json:"retake_ticks"`
	Seized     bool          `json:"seized"`
	Probation  uint64        `json:"probation_ticks"`
	PeerLost   bool          `json:"peer_lost,omitempty"`
	Overdue    bool          `json:"overdue,omitempty"`

	FramesSent     uint64 `json:"frames_sent"`
	FramesReceived uint64 `json:"frames_received"`
	SendErrors     uint64 `json:"send_errors"`

	// Figures the agent forwards when the controller measures them: the
	// longest gap between PWM writes across the switch, the control period,
	// ticks missed, attitude and altitude deviation from the pre-handoff
	// baseline.
	ControlGapMS    float64 `json:"control_gap_ms,omitempty"`
	ControlPeriodMS float64 `json:"control_period_ms,omitempty"`
	MissedTicks     int     `json:"missed_ticks,omitempty"`
	MaxAttDevDeg    float64 `json:"max_att_dev_deg,omitempty"`
	MaxAltDevM      float64 `json:"max_alt_dev_m,omitempty"`
}

// Terminal reports whether the handoff is over on this side.
func (p *Progress) Terminal() bool {
	switch p.Phase {
	case PhaseDone, PhaseCommitted, PhaseAborted, PhaseRolledBack:
		return true
	}
	return false
}

// Switched reports whether the switch happened as far as this side knows:
// v1 in probation or done, v2 active or committed, or rolled back after it.
func (p *Progress) Switched() bool {
	switch p.Phase {
	case PhaseProbation, PhaseActive, PhaseDone, PhaseCommitted, PhaseRolledBack:
		return true
	}
	return false
}

// Durations is the time spent in each handoff phase, nanoseconds in JSON.
type Durations struct {
	Hello     time.Duration `json:"hello"`
	Sync      time.Duration `json:"sync"`
	Shadow    time.Duration `json:"shadow"`
	Switch    time.Duration `json:"switch"`
	Probation time.Duration `json:"probation"`
}
