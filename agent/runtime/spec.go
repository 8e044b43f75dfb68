package runtime

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"time"
)

// Image labels every controller image carries.
const (
	LabelVersion         = "org.inflight.version"          // controller version, e.g. "1.2.0"
	LabelHandoffProtocol = "org.inflight.handoff.protocol" // handoff protocol versions spoken: "1" or "1,2"
	LabelStateSchema     = "org.inflight.state.schema"     // flight-state schema version, e.g. "3"
)

// Labels the runtime puts on every controller it starts.
const (
	LabelController = "org.inflight.controller" // always "true"; List only sees these
	LabelRole       = "org.inflight.role"       // the role it was started in
	LabelUpdate     = "org.inflight.update"     // update ID that started it, if any
	LabelName       = "org.inflight.name"       // Spec.Name
	LabelRealTime   = "org.inflight.realtime"   // what of Spec.RealTime was granted (RealTime values)
)

// RunDirInContainer is where the shared run directory appears inside a
// controller container. The process runtime gives the host path instead;
// either way the controller finds it in the EnvRunDir variable.
const RunDirInContainer = "/run/inflight"

// Environment variables the runtime sets for every controller.
const (
	EnvRunDir = "INFLIGHT_RUN_DIR" // the shared run directory as the controller sees it
	EnvRole   = "INFLIGHT_ROLE"    // the role it was started in
	EnvName   = "INFLIGHT_NAME"    // Spec.Name
)

// Role is the role a controller is started in. The live role changes during
// a handoff and is reported by the controller itself over its control socket;
// the label only records the starting role.
type Role string

// Roles.
const (
	RoleCold    Role = "cold"    // first start on the ground: initialises the chips
	RoleStandby Role = "standby" // started beside the active one, waits for the handoff
	RoleActive  Role = "active"
)

// Spec says how to start a controller.
type Spec struct {
	Name   string   // unique name, also the container name
	Image  string   // image ID or reference, already checked with CheckImage
	Role   Role     // required
	Args   []string // appended to the image's entrypoint (replacing its Cmd)
	Env    []string // KEY=VALUE; nothing of the agent's environment is passed
	RunDir string   // host directory shared by the controllers (handoff socket, PWM lock)
	// Devices to map, "host[:container]", e.g. "/dev/i2c-1". Ignored by
	// the process runtime (the process sees the host's /dev).
	Devices []string
	// Labels added to the runtime's own; must not override them.
	Labels   map[string]string
	UpdateID string
	// MemoryBytes limits memory (and swap) when > 0; DefaultMemoryBytes otherwise.
	MemoryBytes int64
	// PidsLimit limits the number of tasks; DefaultPidsLimit when 0.
	PidsLimit int64
	// User overrides the image's user ("uid[:gid]"); GroupAdd adds
	// supplementary groups, e.g. the gid owning /dev/i2c-1.
	User     string
	GroupAdd []string
	// RealTime grants CAP_SYS_NICE and rtprio/memlock limits so the
	// controller may use SCHED_FIFO and mlockall. Off by default. A
	// runtime that cannot raise the limits starts the controller without
	// them rather than failing; Controller.RealTime says what was granted.
	RealTime bool
}

// RealTime is what a runtime granted of Spec.RealTime (LabelRealTime).
type RealTime string

// What a runtime granted of Spec.RealTime.
const (
	RealTimeOff RealTime = "" // not asked for
	// RealTimeGranted: CAP_SYS_NICE plus RLIMIT_RTPRIO 99 and unlimited
	// RLIMIT_MEMLOCK.
	RealTimeGranted RealTime = "granted"
	// RealTimeNoRlimits: the engine may not raise the limits (it lacks
	// CAP_SYS_RESOURCE), so the controller got CAP_SYS_NICE only. Whether
	// SCHED_FIFO then works depends on the kernel, the cgroup's RT budget
	// and whether the engine makes the capability effective for a
	// non-root user (Docker 20.10 does not); the controller runs on with
	// ordinary scheduling when it does not.
	RealTimeNoRlimits RealTime = "no-rlimits"
	// RealTimeHost: the process runtime, whose controllers have the
	// host's own limits and the agent's capabilities.
	RealTimeHost RealTime = "host"
)

// Defaults applied by both runtimes.
const (
	DefaultMemoryBytes = 128 << 20
	DefaultPidsLimit   = 64
)

// State of a controller.
type State string

// States.
const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateExited  State = "exited"
)

// Controller is a snapshot of one controller instance.
type Controller struct {
	ID       string
	Name     string
	Image    string // image ID
	Role     Role   // from LabelRole
	Version  string // from LabelVersion
	UpdateID string // from LabelUpdate
	Labels   map[string]string
	State    State
	ExitCode int // valid when State == StateExited
	Pid      int // host pid while running, 0 otherwise
	// RealTime is what was granted of Spec.RealTime (from LabelRealTime).
	RealTime   RealTime
	StartedAt  time.Time
	FinishedAt time.Time
}

// Running reports whether the controller runs.
func (c Controller) Running() bool { return c.State == StateRunning }

// Sentinel errors; implementations wrap them.
var (
	ErrNotFound         = errors.New("not found")
	ErrExists           = errors.New("already exists")
	ErrNotPinned        = errors.New("reference not pinned by digest")
	ErrWrongPlatform    = errors.New("wrong platform")
	ErrIncompatible     = errors.New("incompatible image")
	ErrInvalidSpec      = errors.New("invalid spec")
	ErrExitCodeUnknown  = errors.New("exit code unknown")
	ErrUnsupportedImage = errors.New("unsupported image")
)

// Validate checks a spec and fills in defaults. Both runtimes call it.
func (s *Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("runtime: spec %q: %s: %w", s.Name, fmt.Sprintf(format, a...), ErrInvalidSpec)
	}
	if s.Name == "" || strings.ContainsAny(s.Name, "/ \t\n:") {
		return bad("name must be non-empty without '/', ':' or spaces")
	}
	if s.Image == "" {
		return bad("no image")
	}
	switch s.Role {
	case RoleCold, RoleStandby, RoleActive:
	default:
		return bad("role %q", s.Role)
	}
	if s.RunDir == "" || !filepath.IsAbs(s.RunDir) {
		return bad("run dir %q must be an absolute path", s.RunDir)
	}
	if strings.Contains(s.RunDir, "docker.sock") {
		return bad("run dir %q", s.RunDir)
	}
	for _, d := range s.Devices {
		host, _, _ := strings.Cut(d, ":")
		if !strings.HasPrefix(filepath.Clean(host), "/dev/") {
			return bad("device %q is not under /dev", d)
		}
	}
	for _, e := range s.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			return bad("env %q is not KEY=VALUE", e)
		}
		if forbiddenEnv(k) {
			return bad("env %q looks like a credential or the agent's own settings", k)
		}
	}
	for k := range s.Labels {
		switch k {
		case LabelController, LabelRole, LabelUpdate, LabelName, LabelRealTime:
			return bad("label %q is reserved", k)
		}
	}
	if s.MemoryBytes == 0 {
		s.MemoryBytes = DefaultMemoryBytes
	}
	if s.PidsLimit == 0 {
		s.PidsLimit = DefaultPidsLimit
	}
	if s.MemoryBytes < 6<<20 {
		return bad("memory %d below the 6 MiB Docker accepts", s.MemoryBytes)
	}
	return nil
}

// forbiddenEnv refuses the variables through which broker credentials or the
// Docker socket could leak into a controller.
func forbiddenEnv(k string) bool {
	u := strings.ToUpper(k)
	for _, p := range []string{"MQTT", "BROKER", "DOCKER_", "PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE_KEY"} {
		if strings.Contains(u, p) {
			return true
		}
	}
	return false
}

// ControllerLabels returns the labels a runtime puts on the controller of s
// (after Validate): s.Labels plus the reserved ones.
func (s Spec) ControllerLabels() map[string]string {
	l := maps.Clone(s.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[LabelController] = "true"
	l[LabelRole] = string(s.Role)
	l[LabelName] = s.Name
	if s.UpdateID != "" {
		l[LabelUpdate] = s.UpdateID
	}
	return l
}

// ControllerEnv returns the environment of the controller of s, given the run
// directory as the controller sees it.
func (s Spec) ControllerEnv(runDir string) []string {
	env := make([]string, 0, len(s.Env)+3)
	env = append(env, s.Env...)
	return append(env, EnvRunDir+"="+runDir, EnvRole+"="+string(s.Role), EnvName+"="+s.Name)
}

// FillFromLabels sets Role, Version, UpdateID, RealTime and Name (when empty)
// from c.Labels.
func (c *Controller) FillFromLabels() {
	c.Role = Role(c.Labels[LabelRole])
	c.Version = c.Labels[LabelVersion]
	c.UpdateID = c.Labels[LabelUpdate]
	c.RealTime = RealTime(c.Labels[LabelRealTime])
	if c.Name == "" {
		c.Name = c.Labels[LabelName]
	}
}

// HasLabels reports whether have carries every label of want.
func HasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}
