package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/mqttapi"
)

// Config is the agent's configuration, read from a TOML file
// (docs/agent.md, agent/agent.example.toml) and overridden by flags.
type Config struct {
	Drone  string   `toml:"drone"`
	Fleets []string `toml:"fleets"`
	// Arch overrides the host platform the agent checks images against,
	// e.g. "linux/arm/v6" on a Pi Zero whose kernel says armv7l.
	Arch string `toml:"arch"`

	MQTT       MQTTConfig       `toml:"mqtt"`
	Keys       KeysConfig       `toml:"keys"`
	Paths      PathsConfig      `toml:"paths"`
	Runtime    RuntimeConfig    `toml:"runtime"`
	Controller ControllerConfig `toml:"controller"`
	Policy     PolicyConfig     `toml:"policy"`
	Timeouts   TimeoutsConfig   `toml:"timeouts"`
	Telemetry  TelemetryConfig  `toml:"telemetry"`
}

// MQTTConfig says how to reach the broker.
type MQTTConfig struct {
	Broker       string `toml:"broker"`    // tcp://host:1883 or ssl://host:8883
	ClientID     string `toml:"client_id"` // default inflight-agent-<drone>
	Username     string `toml:"username"`
	Password     string `toml:"password"`      // prefer password_file
	PasswordFile string `toml:"password_file"` // first line is the password
	CAFile       string `toml:"ca_file"`
	CertFile     string `toml:"cert_file"`
	KeyFile      string `toml:"key_file"`
	ServerName   string `toml:"server_name"`
	TopicRoot    string `toml:"topic_root"` // default "inflight"
}

// KeysConfig names the trusted ground-station keys.
type KeysConfig struct {
	// Trusted is a PEM file of public keys or a directory of *.pub/*.pem.
	Trusted string `toml:"trusted"`
}

// PathsConfig are the agent's directories.
type PathsConfig struct {
	RunDir   string `toml:"run_dir"`   // shared with the controllers; default /run/inflight
	StateDir string `toml:"state_dir"` // the journal; default /var/lib/inflight
}

// RuntimeConfig selects the container runtime.
type RuntimeConfig struct {
	Kind       string `toml:"kind"`        // "docker" (default) or "process"
	ProcessDir string `toml:"process_dir"` // process runtime's store; default <state_dir>/process
	NamePrefix string `toml:"name_prefix"` // controller names; default "inflight-ctl"
	// HandoffProtocol is the handoff protocol version a v2 image must speak
	// (its org.inflight.handoff.protocol label); default 1.
	HandoffProtocol int `toml:"handoff_protocol"`
	// PruneLabels limits the pruning after a commit to controller images
	// carrying all these labels. Default: every image with an
	// org.inflight.version label — right on a drone, where the agent owns
	// the engine; a bench whose engine other programs share narrows it.
	PruneLabels map[string]string `toml:"prune_labels"`
}

// ControllerConfig says how controllers are started.
type ControllerConfig struct {
	// Image is started cold when no controller runs (first start): an
	// image ID, name:tag of a local image, or repo@sha256:… to pull.
	Image string `toml:"image"`
	// Args after the image's entrypoint. {role}, {name} and {run_dir} are
	// replaced by the controller's role, name and run directory as it sees
	// it.
	Args     []string `toml:"args"`
	Env      []string `toml:"env"`
	Devices  []string `toml:"devices"`
	MemoryMB int64    `toml:"memory_mb"` // default 128
	User     string   `toml:"user"`
	GroupAdd []string `toml:"group_add"`
	RealTime bool     `toml:"realtime"`
}

// PolicyConfig says when an update may switch controllers.
type PolicyConfig struct {
	// AllowedPhases are the flight phases (status "phase", else "mode") in
	// which an in-air switch may start; default ["hover"].
	AllowedPhases []string `toml:"allowed_phases"`
	// BatteryFloorPct: no in-air switch below this charge (a manifest may
	// raise it); 0 disables the check.
	BatteryFloorPct float64 `toml:"battery_floor_pct"`
	// RequireBattery refuses the in-air switch when the controller does
	// not report a charge; otherwise an unknown charge passes.
	RequireBattery bool `toml:"require_battery"`
	// GroundSwap: when disarmed on the ground, stop v1 and start v2 cold
	// instead of a handoff (a manifest may forbid it). Default true.
	GroundSwap *bool `toml:"ground_swap"`
	// Probation is the hot-standby window after the switch; default 10s.
	Probation time.Duration `toml:"probation"`
	// MaxAttempts bounds how often an update interrupted before the
	// switch by an agent restart is started again; default 2.
	MaxAttempts int `toml:"max_attempts"`
}

// TimeoutsConfig bounds every phase.
type TimeoutsConfig struct {
	Fetch     time.Duration `toml:"fetch"`     // pull or transfer + load; default 10m
	Check     time.Duration `toml:"check"`     // inspect the image, check platform and labels; default 30s
	Start     time.Duration `toml:"start"`     // v2 started and answering its control socket; default 30s
	Wait      time.Duration `toml:"wait"`      // waiting for an allowed flight phase and battery; default 2m
	Sync      time.Duration `toml:"sync"`      // hello + sync + shadow; default 30s
	Switch    time.Duration `toml:"switch"`    // the switch itself, once v2 is ready; default 30s
	Probation time.Duration `toml:"probation"` // margin past the probation window; default 15s
	Stop      time.Duration `toml:"stop"`      // SIGTERM to SIGKILL; default 10s
	Call      time.Duration `toml:"call"`      // one control-socket call; default 2s
}

// TelemetryConfig sets the relay.
type TelemetryConfig struct {
	RateHz float64 `toml:"rate_hz"` // default 4; 0 in the file means the default, negative disables
}

// DefaultConfig returns the defaults (no drone, broker or keys: those are
// required).
func DefaultConfig() Config {
	t := true
	return Config{
		MQTT:    MQTTConfig{TopicRoot: mqttapi.DefaultRoot},
		Paths:   PathsConfig{RunDir: "/run/inflight", StateDir: "/var/lib/inflight"},
		Runtime: RuntimeConfig{Kind: "docker", NamePrefix: "inflight-ctl", HandoffProtocol: 1},
		Controller: ControllerConfig{
			MemoryMB: runtime.DefaultMemoryBytes >> 20,
		},
		Policy: PolicyConfig{AllowedPhases: []string{"hover"}, GroundSwap: &t, Probation: 10 * time.Second, MaxAttempts: 2},
		Timeouts: TimeoutsConfig{
			Fetch: 10 * time.Minute, Check: 30 * time.Second, Start: 30 * time.Second, Wait: 2 * time.Minute,
			Sync: 30 * time.Second, Switch: 30 * time.Second, Probation: 15 * time.Second, Stop: 10 * time.Second, Call: 2 * time.Second,
		},
		Telemetry: TelemetryConfig{RateHz: 4},
	}
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("agent: bad configuration")

// LoadConfig reads a TOML file over the defaults. Unknown keys are errors
// (a typo must not silently leave a default in place).
func LoadConfig(path string) (*Config, error) {
	c := DefaultConfig()
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%w: %s: unknown keys: %s", ErrConfig, path, strings.Join(keys, ", "))
	}
	return &c, nil
}

// GroundSwapAllowed is the policy's ground_swap (default true).
func (p PolicyConfig) GroundSwapAllowed() bool { return p.GroundSwap == nil || *p.GroundSwap }

// Validate fills what is derived and checks everything, returning all
// problems at once.
func (c *Config) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	def := DefaultConfig()
	if err := mqttapi.ValidateID(c.Drone); err != nil {
		bad("drone %q: 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit", c.Drone)
	}
	for _, f := range c.Fleets {
		if mqttapi.ValidateID(f) != nil {
			bad("fleets: %q is not a valid fleet name", f)
		}
	}
	if c.Arch != "" {
		if _, err := runtime.ParsePlatform(c.Arch); err != nil {
			bad("arch: %v", err)
		}
	}
	m := &c.MQTT
	switch {
	case m.Broker == "":
		bad("mqtt.broker: required, e.g. tcp://127.0.0.1:1883 or ssl://broker:8883")
	case !strings.Contains(m.Broker, "://"):
		bad("mqtt.broker %q: want a URL such as tcp://host:1883 or ssl://host:8883", m.Broker)
	}
	if m.TopicRoot == "" {
		m.TopicRoot = mqttapi.DefaultRoot
	}
	if _, err := mqttapi.NewTopics(m.TopicRoot); err != nil {
		bad("mqtt.topic_root %q: levels of A-Z a-z 0-9 . _ -", m.TopicRoot)
	}
	if m.ClientID == "" && c.Drone != "" {
		m.ClientID = "inflight-agent-" + c.Drone
	}
	if (m.CertFile == "") != (m.KeyFile == "") {
		bad("mqtt.cert_file and mqtt.key_file go together")
	}
	if m.Password != "" && m.PasswordFile != "" {
		bad("mqtt.password and mqtt.password_file: give one")
	}
	for k, f := range map[string]string{"mqtt.ca_file": m.CAFile, "mqtt.cert_file": m.CertFile, "mqtt.key_file": m.KeyFile, "mqtt.password_file": m.PasswordFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				bad("%s: %v", k, err)
			}
		}
	}
	if c.Keys.Trusted == "" {
		bad("keys.trusted: required, a PEM file or a directory of ground-station public keys")
	} else if _, err := os.Stat(c.Keys.Trusted); err != nil {
		bad("keys.trusted: %v", err)
	}
	for k, p := range map[string]*string{"paths.run_dir": &c.Paths.RunDir, "paths.state_dir": &c.Paths.StateDir} {
		if *p == "" {
			bad("%s: required", k)
		} else if !filepath.IsAbs(*p) {
			bad("%s %q: must be an absolute path", k, *p)
		}
	}
	r := &c.Runtime
	switch r.Kind {
	case "":
		r.Kind = "docker"
	case "docker", "process":
	default:
		bad("runtime.kind %q: want docker or process", r.Kind)
	}
	if r.Kind == "process" && r.ProcessDir == "" && c.Paths.StateDir != "" {
		r.ProcessDir = filepath.Join(c.Paths.StateDir, "process")
	}
	if r.NamePrefix == "" {
		r.NamePrefix = def.Runtime.NamePrefix
	} else if mqttapi.ValidateID(r.NamePrefix) != nil || len(r.NamePrefix) > 32 {
		bad("runtime.name_prefix %q: up to 32 characters of A-Z a-z 0-9 . _ -", r.NamePrefix)
	}
	if r.HandoffProtocol == 0 {
		r.HandoffProtocol = 1
	} else if r.HandoffProtocol < 0 {
		bad("runtime.handoff_protocol %d: must be positive", r.HandoffProtocol)
	}
	ct := &c.Controller
	if ct.Image == "" {
		bad("controller.image: required, the image started cold when no controller runs")
	}
	if ct.MemoryMB == 0 {
		ct.MemoryMB = def.Controller.MemoryMB
	} else if ct.MemoryMB < 6 {
		bad("controller.memory_mb %d: at least 6", ct.MemoryMB)
	}
	for _, d := range ct.Devices {
		host, _, _ := strings.Cut(d, ":")
		if !strings.HasPrefix(filepath.Clean(host), "/dev/") {
			bad("controller.devices: %q is not under /dev", d)
		}
	}
	for _, e := range ct.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			bad("controller.env: %q is not KEY=VALUE", e)
		}
	}
	p := &c.Policy
	if len(p.AllowedPhases) == 0 {
		p.AllowedPhases = def.Policy.AllowedPhases
	}
	if p.BatteryFloorPct < 0 || p.BatteryFloorPct > 100 {
		bad("policy.battery_floor_pct %v: want 0..100", p.BatteryFloorPct)
	}
	if p.Probation == 0 {
		p.Probation = def.Policy.Probation
	} else if p.Probation < 0 {
		bad("policy.probation %v: negative", p.Probation)
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = def.Policy.MaxAttempts
	} else if p.MaxAttempts < 1 {
		bad("policy.max_attempts %d: at least 1", p.MaxAttempts)
	}
	t := &c.Timeouts
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"fetch", &t.Fetch, def.Timeouts.Fetch}, {"check", &t.Check, def.Timeouts.Check}, {"start", &t.Start, def.Timeouts.Start},
		{"wait", &t.Wait, def.Timeouts.Wait}, {"sync", &t.Sync, def.Timeouts.Sync}, {"switch", &t.Switch, def.Timeouts.Switch},
		{"probation", &t.Probation, def.Timeouts.Probation}, {"stop", &t.Stop, def.Timeouts.Stop}, {"call", &t.Call, def.Timeouts.Call},
	} {
		if *f.v == 0 {
			*f.v = f.def
		} else if *f.v < 0 {
			bad("timeouts.%s %v: negative", f.name, *f.v)
		}
	}
	if c.Telemetry.RateHz == 0 {
		c.Telemetry.RateHz = def.Telemetry.RateHz
	} else if c.Telemetry.RateHz > 50 {
		bad("telemetry.rate_hz %v: at most 50", c.Telemetry.RateHz)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w:\n  %s", ErrConfig, strings.Join(errs, "\n  "))
	}
	return nil
}

// Password returns the MQTT password, reading password_file when set.
func (m MQTTConfig) password() (string, error) {
	if m.PasswordFile == "" {
		return m.Password, nil
	}
	b, err := os.ReadFile(m.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("%w: mqtt.password_file: %v", ErrConfig, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(line, "\r"), nil
}

// ConfigFromArgs parses the command line of inflight-agent: --config FILE,
// then flags that override single settings. It returns flag.ErrHelp after
// printing the usage for -h/--help. The result is validated.
func ConfigFromArgs(args []string, out io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("inflight-agent", flag.ContinueOnError)
	fs.SetOutput(out)
	path := fs.String("config", "", "TOML configuration file (see docs/agent.md); flags below override it")
	def := DefaultConfig()
	var o struct {
		drone, fleets, arch, broker, clientID, username, passwordFile, ca, cert, key, root, keys string
		runDir, stateDir, kind, image, devices                                                   string
		probation                                                                                time.Duration
		rate, floor                                                                              float64
	}
	fs.StringVar(&o.drone, "drone", "", "drone id")
	fs.StringVar(&o.fleets, "fleets", "", "comma-separated fleets the drone belongs to")
	fs.StringVar(&o.arch, "arch", "", "override the host platform, e.g. linux/arm/v6")
	fs.StringVar(&o.broker, "broker", "", "MQTT broker URL, tcp://host:1883 or ssl://host:8883")
	fs.StringVar(&o.clientID, "client-id", "", "MQTT client id (default inflight-agent-<drone>)")
	fs.StringVar(&o.username, "username", "", "MQTT user name")
	fs.StringVar(&o.passwordFile, "password-file", "", "file holding the MQTT password")
	fs.StringVar(&o.ca, "ca", "", "CA certificate (PEM) verifying the broker")
	fs.StringVar(&o.cert, "cert", "", "client certificate (PEM)")
	fs.StringVar(&o.key, "key", "", "client private key (PEM)")
	fs.StringVar(&o.root, "topic-root", "", "first topic level(s) (default "+mqttapi.DefaultRoot+")")
	fs.StringVar(&o.keys, "keys", "", "trusted ground-station public keys: a PEM file or a directory")
	fs.StringVar(&o.runDir, "run-dir", "", "run directory shared with the controllers (default "+def.Paths.RunDir+")")
	fs.StringVar(&o.stateDir, "state-dir", "", "state directory holding the journal (default "+def.Paths.StateDir+")")
	fs.StringVar(&o.kind, "runtime", "", "docker or process (default docker)")
	fs.StringVar(&o.image, "image", "", "controller image started cold when none runs")
	fs.StringVar(&o.devices, "devices", "", "comma-separated devices for the controllers, e.g. /dev/i2c-1")
	fs.DurationVar(&o.probation, "probation", 0, "probation window after a switch (default "+def.Policy.Probation.String()+")")
	fs.Float64Var(&o.rate, "telemetry-rate", 0, "telemetry relay rate, Hz (default 4; negative: off)")
	fs.Float64Var(&o.floor, "battery-floor", 0, "no in-air switch below this battery percentage")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: inflight-agent --config FILE [flags]

The on-device update agent: it hears signed updates over MQTT, starts the new
flight controller beside the running one, drives the in-air handoff, and
commits or rolls back, surviving its own crash (docs/agent.md).

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", ErrConfig, fs.Args())
	}
	var c *Config
	if *path != "" {
		var err error
		if c, err = LoadConfig(*path); err != nil {
			return nil, err
		}
	} else {
		d := DefaultConfig()
		c = &d
	}
	list := func(s string) []string {
		var r []string
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				r = append(r, f)
			}
		}
		return r
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "drone":
			c.Drone = o.drone
		case "fleets":
			c.Fleets = list(o.fleets)
		case "arch":
			c.Arch = o.arch
		case "broker":
			c.MQTT.Broker = o.broker
		case "client-id":
			c.MQTT.ClientID = o.clientID
		case "username":
			c.MQTT.Username = o.username
		case "password-file":
			c.MQTT.PasswordFile, c.MQTT.Password = o.passwordFile, ""
		case "ca":
			c.MQTT.CAFile = o.ca
		case "cert":
			c.MQTT.CertFile = o.cert
		case "key":
			c.MQTT.KeyFile = o.key
		case "topic-root":
			c.MQTT.TopicRoot = o.root
		case "keys":
			c.Keys.Trusted = o.keys
		case "run-dir":
			c.Paths.RunDir = o.runDir
		case "state-dir":
			c.Paths.StateDir = o.stateDir
		case "runtime":
			c.Runtime.Kind = o.kind
		case "image":
			c.Controller.Image = o.image
		case "devices":
			c.Controller.Devices = list(o.devices)
		case "probation":
			c.Policy.Probation = o.probation
		case "telemetry-rate":
			c.Telemetry.RateHz = o.rate
		case "battery-floor":
			c.Policy.BatteryFloorPct = o.floor
		}
	})
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}
