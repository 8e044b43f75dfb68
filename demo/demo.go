package demo

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/inflight-ota/inflight/agent"
	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/docker"
	"github.com/inflight-ota/inflight/agent/runtime/imagebuild"
	"github.com/inflight-ota/inflight/agent/runtime/process"
	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/ground"
	"github.com/inflight-ota/inflight/ground/broker"
	groundcli "github.com/inflight-ota/inflight/ground/cli"
	"github.com/inflight-ota/inflight/ground/keys"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/trace"
)

// LabelRun is put on every image the demo builds (and so on every container
// started from them), with the run's id as its value: cleanup removes
// exactly these.
const LabelRun = "org.inflight.demo"

// ErrDemo wraps the failures of the demo itself (as opposed to an update
// that did not commit, which is a result).
var ErrDemo = errors.New("demo")

// Options configure Run. The zero value runs the demo as make demo does.
type Options struct {
	// Runtime is "auto" (default: Docker when an engine answers or can be
	// installed and started, else the process runtime), "docker" or
	// "process".
	Runtime string
	// Via is how v2 reaches the drone: "registry" (default: pull by digest
	// from an in-process registry on 127.0.0.1) or "mqtt" (chunks over the
	// broker).
	Via string
	// Versions of the two images; default 1.0.0 and 2.0.0.
	V1Version, V2Version string
	// Extra images/build flags per image (e.g. the build tags that give v2
	// its visible feature).
	V1BuildArgs, V2BuildArgs []string
	AltM                     float64       // hover altitude; default 2 m
	Baseline                 time.Duration // hover with v1 before the push; default 2 s
	After                    time.Duration // hover with v2 after the commit; default 3 s
	Probation                time.Duration // hot-standby window after the switch; default 4 s
	NoRT                     bool          // do not ask flightctl for SCHED_FIFO (--rt)
	// PlotPath is where the plot of the whole flight goes (.png or .svg);
	// default inflight-demo.png in the working directory.
	PlotPath string
	// TracePath keeps the drone's trace (JSON Lines) there; default: not
	// kept.
	TracePath string
	// SourceDir is inside the inflight module (images/build compiles
	// flightctl from it); default the working directory.
	SourceDir string
	Go        string        // the go command; default "go"
	Timeout   time.Duration // the whole demo; default 3 min
	Stdout    io.Writer     // the story and groundctl's output; default os.Stdout
	Stderr    io.Writer     // apt-get, groundctl's diagnostics, logs on failure; default os.Stderr
	// Logger receives the agent's, the runtime's and the drone's logs;
	// default: kept in memory and its tail printed when the demo fails.
	Logger *slog.Logger
}

func (o *Options) defaults() error {
	if o.Runtime == "" {
		o.Runtime = "auto"
	}
	switch o.Runtime {
	case "auto", "docker", "process":
	default:
		return fmt.Errorf("%w: runtime %q: want auto, docker or process", ErrDemo, o.Runtime)
	}
	if o.Via == "" {
		o.Via = mqttapi.TransferRegistry
	}
	if o.Via != mqttapi.TransferRegistry && o.Via != mqttapi.TransferMQTT {
		return fmt.Errorf("%w: via %q: want registry or mqtt", ErrDemo, o.Via)
	}
	if o.V1Version == "" {
		o.V1Version = "1.0.0"
	}
	if o.V2Version == "" {
		o.V2Version = "2.0.0"
	}
	if o.AltM == 0 {
		o.AltM = 2
	}
	if o.Baseline == 0 {
		o.Baseline = 2 * time.Second
	}
	if o.After == 0 {
		o.After = 3 * time.Second
	}
	if o.Probation == 0 {
		o.Probation = 4 * time.Second
	}
	if o.PlotPath == "" {
		o.PlotPath = "inflight-demo.png"
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	return nil
}

// Summary is the demo's result; benchsim demo prints it as its last line
// (docs/demo.md describes every field).
type Summary struct {
	Result          string             `json:"result"` // committed, rolled_back, aborted, failed, rejected, error, interrupted
	RunID           string             `json:"run_id"`
	Reason          string             `json:"reason,omitempty"`
	Error           string             `json:"error,omitempty"`
	FromVersion     string             `json:"from_version"`
	ToVersion       string             `json:"to_version"`
	Runtime         string             `json:"runtime"`
	RuntimeNote     string             `json:"runtime_note,omitempty"`
	Via             string             `json:"via"`
	Crashed         bool               `json:"crashed"`
	CrashReason     string             `json:"crash_reason,omitempty"`
	Landed          bool               `json:"landed"`
	SwitchGapMS     float64            `json:"switch_gap_ms"`
	ControlPeriodMS float64            `json:"control_period_ms"`
	ControllerGapMS float64            `json:"controller_gap_ms,omitempty"`
	MissedTicks     int                `json:"missed_ticks"`
	MaxAttDevDeg    float64            `json:"max_att_dev_deg"`
	MaxAltDevM      float64            `json:"max_alt_dev_m"`
	BaseAttDevDeg   float64            `json:"baseline_att_dev_deg"`
	BaseAltDevM     float64            `json:"baseline_alt_dev_m"`
	HoverAltRMSEV1  float64            `json:"hover_alt_rmse_v1_m"`
	HoverAltRMSEV2  float64            `json:"hover_alt_rmse_v2_m"`
	Handovers       int                `json:"handovers"`
	Attempts        int                `json:"attempts"`          // pushes made: another follows an abort or a rollback (at most 3)
	Earlier         []string           `json:"earlier,omitempty"` // how the earlier attempts ended
	TwoWriterEvents int                `json:"two_writer_events"`
	ReinitEvents    int                `json:"reinit_events"`
	MaxPWMGapMS     float64            `json:"max_pwm_gap_ms"`
	PhasesMS        map[string]float64 `json:"phases_ms,omitempty"`
	Timeline        Timeline           `json:"timeline_s"`
	V2Changes       []string           `json:"v2_changes"`
	Plot            string             `json:"plot,omitempty"`
	Trace           string             `json:"trace,omitempty"`
	WallS           float64            `json:"wall_s"`
}

// Timeline is when each step happened, seconds on the drone's clock (the
// plot's time axis); -1 when it did not happen.
type Timeline struct {
	Takeoff   float64 `json:"takeoff"`
	Hover     float64 `json:"hover"`
	Push      float64 `json:"push"`
	Switch    float64 `json:"switch"`
	Committed float64 `json:"committed"`
	Land      float64 `json:"land"`
	Landed    float64 `json:"landed"`
}

// OK reports whether the demo succeeded: the update committed in the air,
// nothing crashed, the drone landed, and the PWM chip saw the writer switch
// within two control periods.
func (s Summary) OK() bool {
	return s.Result == mqttapi.ResultCommitted && !s.Crashed && s.Landed &&
		s.SwitchGapMS > 0 && s.ControlPeriodMS > 0 && s.SwitchGapMS <= 2*s.ControlPeriodMS
}

// JSON is the summary as one line.
func (s Summary) JSON() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// run is one demo's state.
type run struct {
	o       Options
	id      string
	drone   string
	repo    string // image repository, unique to the run
	started time.Time
	work    string
	runDir  string
	log     *slog.Logger
	logTail *tailBuffer

	rt      runtime.Runtime
	simT0   time.Time
	droneMu sync.Mutex
	sim     *sim.Drone

	clientsMu sync.Mutex
	clients   map[string]*ctlsock.Client

	stopDroneFn func() (*trace.Trace, error)
	stopAgent   func()
	ground      *groundView
}

// say prints one step of the story with the wall time since the start.
func (d *run) say(format string, a ...any) {
	fmt.Fprintf(d.o.Stdout, "[%5.1fs] %s\n", time.Since(d.started).Seconds(), fmt.Sprintf(format, a...))
}

func (d *run) client(name string) *ctlsock.Client {
	d.clientsMu.Lock()
	defer d.clientsMu.Unlock()
	c, ok := d.clients[name]
	if !ok {
		c = ctlsock.New(ctlsock.SocketPath(d.runDir, name), 2*time.Second)
		d.clients[name] = c
	}
	return c
}

func (d *run) crashed() bool {
	d.droneMu.Lock()
	s := d.sim
	d.droneMu.Unlock()
	if s == nil {
		return false
	}
	_, c := s.State()
	return c
}

// simNow is the drone's clock, seconds.
func (d *run) simNow() float64 { return time.Since(d.simT0).Seconds() }

// simAt maps a wall-clock instant (an agent event) onto the drone's clock.
func (d *run) simAt(t time.Time) float64 {
	if t.IsZero() {
		return -1
	}
	return t.Sub(d.simT0).Seconds()
}

// cleanupFunc is undone in reverse order at the end.
type cleanupFunc struct {
	what string
	f    func(ctx context.Context) error
}

// Run runs the demo and returns its summary. The error is set when the demo
// could not run to its end (the summary then says how far it got); an
// update that did not commit is a result, see Summary.OK.
func Run(ctx context.Context, o Options) (sum Summary, err error) {
	sum = Summary{Result: "error", V2Changes: []string{}, Timeline: Timeline{-1, -1, -1, -1, -1, -1, -1}}
	if err := o.defaults(); err != nil {
		return sum, err
	}
	idb := make([]byte, 3)
	rand.Read(idb)
	id := hex.EncodeToString(idb)
	sum.Via = o.Via
	sum.RunID = id
	sum.FromVersion, sum.ToVersion = o.V1Version, o.V2Version
	d := &run{o: o, id: id, drone: "demo-" + id, repo: "inflight-demo-" + id + "/flightctl", started: time.Now(),
		clients: map[string]*ctlsock.Client{}}
	if o.Logger != nil {
		d.log = o.Logger
	} else {
		d.logTail = &tailBuffer{max: 60}
		d.log = slog.New(slog.NewTextHandler(d.logTail, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	var cleanups []cleanupFunc
	defer func() {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
		defer ccancel()
		var done []string
		for i := len(cleanups) - 1; i >= 0; i-- {
			c := cleanups[i]
			if err := c.f(cctx); err != nil {
				fmt.Fprintf(o.Stderr, "demo: cleanup %s: %v\n", c.what, err)
			} else if c.what != "" {
				done = append(done, c.what)
			}
		}
		if len(done) > 0 {
			d.say("cleaned up: %s", strings.Join(done, ", "))
		}
		sum.WallS = r3(time.Since(d.started).Seconds())
	}()
	onExit := func(what string, f func(ctx context.Context) error) {
		cleanups = append(cleanups, cleanupFunc{what, f})
	}

	fmt.Fprintf(o.Stdout, "inflight demo (run %s): one in-air update of the bench drone, from %s to %s\n", id, o.V1Version, o.V2Version)
	err = d.main(ctx, &sum, onExit)
	if err != nil {
		sum.Error = err.Error()
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) || errors.Is(err, context.Canceled) {
			sum.Result = "interrupted"
		}
		if d.logTail != nil && len(d.logTail.lines) > 0 {
			fmt.Fprintf(o.Stderr, "demo: the last lines the agent and the drone logged:\n%s", d.logTail.String())
		}
		d.controllerLogs(context.WithoutCancel(ctx))
	}
	return sum, err
}

// main is the demo's body; every resource it makes is registered with
// onExit before it is used.
func (d *run) main(ctx context.Context, sum *Summary, onExit func(string, func(context.Context) error)) error {
	o := &d.o
	work, err := os.MkdirTemp("", "inflight-demo-")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	d.work = work
	onExit("temporary directory", func(context.Context) error { return os.RemoveAll(work) })
	d.runDir = filepath.Join(work, "run")
	for _, p := range []string{d.runDir, filepath.Join(work, "state"), filepath.Join(work, "keys"), filepath.Join(work, "ground")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrDemo, err)
		}
	}
	// Controllers in containers run as nobody and share the run directory.
	if err := os.Chmod(d.runDir, 0o777); err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}

	// The runtime: Docker where we can, else local processes.
	kind, note, dd, err := d.chooseRuntime(ctx)
	if err != nil {
		return err
	}
	if dd != nil {
		onExit("dockerd", func(ctx context.Context) error {
			if othersUse(ctx, d.id) {
				d.say("dockerd (pid %d) left running: other containers use it", dd.pid)
				return nil
			}
			dd.stop(nil)
			return nil
		})
	}
	sum.Runtime, sum.RuntimeNote = kind, note
	d.say("runtime: %s (%s)", kind, note)

	// The images.
	v1img, v2img, err := d.buildImages(ctx)
	if err != nil {
		return err
	}
	d.say("images: flightctl %s (%s) and %s (%s) for %s, built with images/build", o.V1Version, short12(v1img.ID), o.V2Version, short12(v2img.ID), v1img.Platform)

	switch kind {
	case "docker":
		rt, err := docker.New(&docker.Options{Logger: d.log})
		if err != nil {
			return fmt.Errorf("%w: %v", ErrDemo, err)
		}
		d.rt = rt
		onExit("", func(context.Context) error { return rt.Close() })
	default:
		rt, err := process.New(process.Options{Dir: filepath.Join(work, "process"), Logger: d.log})
		if err != nil {
			return fmt.Errorf("%w: %v", ErrDemo, err)
		}
		d.rt = rt
	}
	onExit("images", func(ctx context.Context) error {
		_, err := d.rt.Prune(ctx, runtime.PruneOptions{Labels: map[string]string{LabelRun: d.id}})
		return err
	})
	onExit("controllers", func(ctx context.Context) error { return d.removeControllers(ctx) })

	// The broker.
	brk, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Logger: d.log.With("component", "broker")})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	onExit("broker", func(context.Context) error { return brk.Close() })
	d.say("broker: embedded MQTT broker on %s", brk.URL())

	// v2's way to the drone.
	pushArgs := []string{"push", "--drone", d.drone}
	if o.Via == mqttapi.TransferRegistry {
		reg, err := startRegistry()
		if err != nil {
			return err
		}
		onExit("registry", func(ctx context.Context) error { return reg.Shutdown(ctx) })
		ref := reg.addr + "/" + d.repo + ":" + sanitizeTag(o.V2Version)
		img, err := tarball.ImageFromPath(v2img.File, nil)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrDemo, err)
		}
		if _, err := imagebuild.Push(ctx, img, ref); err != nil {
			return fmt.Errorf("%w: %v", ErrDemo, err)
		}
		d.say("registry: in-process OCI registry on %s holds %s", reg.addr, ref)
		pushArgs = append(pushArgs, "--image", ref)
	} else {
		pushArgs = append(pushArgs, "--via", "mqtt", "--image-file", v2img.File)
		d.say("transfer: v2 goes over MQTT in chunks from %s", filepath.Base(v2img.File))
	}

	// The ground's signing key; the drone trusts its public half.
	keyPath := filepath.Join(work, "ground", "ground.key")
	keyID, err := keys.Keygen(keyPath, filepath.Join(work, "keys", "ground.pub"), false, rand.Reader)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	d.say("ground key %s made; the drone trusts its public half", keyID)

	// The bench drone.
	if err := d.startDrone(ctx, sum, onExit); err != nil {
		return err
	}

	// v1, as flashed onto the drone: loaded into the runtime.
	f, err := os.Open(v1img.File)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	v1info, err := d.rt.Load(ctx, f, nil)
	f.Close()
	if err != nil {
		return fmt.Errorf("%w: load v1: %v", ErrDemo, err)
	}

	// The ground's view: the drone's events, telemetry and the update's
	// timeline.
	g, err := d.connectGround(ctx, brk.URL())
	if err != nil {
		return err
	}
	onExit("", func(context.Context) error { g.close(); return nil })

	// The agent, in this process, with v1.
	if err := d.startAgent(ctx, brk.URL(), v1info.ID, onExit); err != nil {
		return err
	}
	p := pilot{d}
	v1name, v1st, err := p.waitFlying(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	sum.FromVersion = v1st.Version
	if v1st.Ticks.PeriodUS > 0 {
		sum.ControlPeriodMS = r3(v1st.Ticks.PeriodUS / 1000)
	}
	d.say("agent: drone %s started v1 cold: %s, version %s, role %s", d.drone, v1name, v1st.Version, v1st.Role)

	// Take off and hover.
	sum.Timeline.Takeoff = r3(d.simNow())
	d.say("takeoff to %g m", o.AltM)
	if err := p.takeoff(ctx, o.AltM); err != nil {
		return err
	}
	sum.Timeline.Hover = r3(d.simNow())
	d.say("hovering at %g m with v1; baseline for %v", o.AltM, o.Baseline)
	if err := sleep(ctx, o.Baseline); err != nil {
		return err
	}
	v1raw, err := p.rawStatus(ctx, v1name)
	if err != nil {
		return fmt.Errorf("%w: status of v1: %v", ErrDemo, err)
	}

	// Push v2 with groundctl, and watch it as groundctl does.
	pushArgs = append(pushArgs, "--probation", o.Probation.String(), "--watch", "--timeout", "90s")
	shown := append([]string{"groundctl"}, pushArgs...)
	pushArgs = append(pushArgs, "--broker", "tcp://"+strings.TrimPrefix(brk.URL(), "tcp://"), "--key", keyPath)
	sum.Timeline.Push = r3(d.simNow())
	var oc ground.Outcome
	for attempt := 1; ; attempt++ {
		d.say("$ %s", strings.Join(shown, " "))
		watched := g.follow(ctx)
		code := groundcli.Run(ctx, pushArgs, d.o.Stdout, d.o.Stderr)
		out := <-watched
		if out.err != nil && out.outcome.Result == "" {
			return fmt.Errorf("%w: groundctl push exited %d; watching the update: %v", ErrDemo, code, out.err)
		}
		oc = out.outcome
		sum.Attempts = attempt
		// An abort before the switch leaves v1 flying untouched, a
		// rollback in probation hands the flight back to it: either way v1
		// flies, and an operator would push again; so does the demo, and
		// says so in the summary.
		retry := oc.Result == mqttapi.ResultAborted || oc.Result == mqttapi.ResultRolledBack
		if !retry || attempt >= maxAttempts || ctx.Err() != nil || d.crashed() {
			break
		}
		sum.Earlier = append(sum.Earlier, fmt.Sprintf("%s (%s): %s", oc.Result, oc.Reason, oc.Error))
		d.say("the update %s (%s) and v1 flies on. Pushing again, as an operator would", oc.Result, oc.Reason)
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
	sum.Result, sum.Reason = oc.Result, oc.Reason
	if oc.Version != "" {
		sum.ToVersion = oc.Version
	}
	if f := oc.Figures; f != nil {
		sum.PhasesMS = f.PhaseMS
		sum.ControllerGapMS = f.ControlGapMS
		sum.MissedTicks = f.MissedTicks
		if sum.ControlPeriodMS == 0 {
			sum.ControlPeriodMS = f.ControlPeriodMS
		}
	}
	received, committed, ended := -1.0, -1.0, d.simAt(oc.At)
	for _, ph := range oc.Phases {
		switch ph.Phase {
		case mqttapi.PhaseReceived:
			received = d.simAt(ph.At)
		case mqttapi.PhaseCommitted:
			committed = d.simAt(ph.At)
		}
	}
	if committed < 0 && oc.Committed() {
		committed = d.simAt(oc.At)
	}
	if received < 0 {
		received = sum.Timeline.Push
	}
	if committed >= 0 {
		sum.Timeline.Committed = r3(committed)
	}

	// v2 flies (or v1 still does); look at it, then land.
	name, st, err := p.waitFlying(ctx, 10*time.Second)
	if err != nil {
		return err
	}
	if oc.Committed() {
		d.say("v2 flies: %s, version %s, role %s, mode %s at %.2f m", name, st.Version, st.Role, st.Mode, st.AltM)
		if raw, err := p.rawStatus(ctx, name); err == nil {
			sum.V2Changes = append(sum.V2Changes, changedIdentity(v1raw, raw)...)
			for _, k := range newKeys(v1raw, raw) {
				sum.V2Changes = append(sum.V2Changes, "status adds "+k)
			}
		}
	} else {
		d.say("the update did not commit (%s %s): %s flies on, version %s", oc.Result, oc.Reason, name, st.Version)
	}
	if err := sleep(ctx, o.After); err != nil {
		return err
	}
	sum.Timeline.Land = r3(d.simNow())
	d.say("landing")
	landErr := p.land(ctx)
	if landErr == nil {
		sum.Timeline.Landed = r3(d.simNow())
		d.say("landed")
	}
	sum.V2Changes = append(sum.V2Changes, g.telemetryChanges()...)

	// Stop the agent and the controllers, then the drone: the trace is
	// complete.
	d.stopAgent()
	if err := d.removeControllers(ctx); err != nil {
		d.log.Warn("remove controllers", "err", err)
	}
	tr, err := d.stopDrone()
	if err != nil {
		return err
	}
	d.figures(tr, sum, received, committed, v1name, name)
	upd, prob := window{received, sum.Timeline.Switch}, window{sum.Timeline.Switch, committed}
	if sum.Timeline.Switch < 0 {
		upd = window{received, ended} // aborted before the switch
	} else if committed < 0 {
		prob = window{sum.Timeline.Switch, ended} // rolled back
	}
	title := fmt.Sprintf("update %s → %s, %s, %s", sum.FromVersion, sum.ToVersion, sum.Runtime, sum.Result)
	if err := drawPlot(tr, o.PlotPath, title, upd, prob); err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	if abs, err := filepath.Abs(o.PlotPath); err == nil {
		sum.Plot = abs
	} else {
		sum.Plot = o.PlotPath
	}
	d.report(sum)
	return landErr
}

// chooseRuntime picks docker or process as asked.
func (d *run) chooseRuntime(ctx context.Context) (kind, note string, dd *dockerd, err error) {
	if d.o.Runtime == "process" {
		return "process", "asked for; controllers are local processes", nil, nil
	}
	dd, derr := ensureDocker(ctx, d.o.Stderr, func(f string, a ...any) { d.say(f, a...) })
	if derr == nil {
		note = "Docker Engine answers"
		if dd != nil {
			note = fmt.Sprintf("dockerd started by the demo, pid %d", dd.pid)
		}
		return "docker", note, dd, nil
	}
	if d.o.Runtime == "docker" {
		return "", "", nil, fmt.Errorf("%w: Docker: %v", ErrDemo, derr)
	}
	return "process", "no Docker: " + derr.Error() + "; controllers are local processes", nil, nil
}

type registryServer struct {
	*http.Server
	addr string
}

// startRegistry serves an OCI registry on 127.0.0.1.
func startRegistry() (*registryServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("%w: registry: %v", ErrDemo, err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return &registryServer{Server: srv, addr: ln.Addr().String()}, nil
}

// startDrone starts the bench drone on the run directory's bus socket.
func (d *run) startDrone(ctx context.Context, sum *Summary, onExit func(string, func(context.Context) error)) error {
	tracePath := d.o.TracePath
	if tracePath == "" {
		tracePath = filepath.Join(d.work, "flight.jsonl")
	} else if abs, err := filepath.Abs(tracePath); err == nil {
		sum.Trace = abs
	} else {
		sum.Trace = tracePath
	}
	tf, err := os.Create(tracePath)
	if err != nil {
		return fmt.Errorf("%w: trace: %v", ErrDemo, err)
	}
	tw := bufio.NewWriterSize(tf, 1<<16)
	d.simT0 = time.Now()
	t0 := d.simT0
	drone := sim.New(&sim.Options{Seed: 1, Trace: tw, Clock: func() time.Duration { return time.Since(t0) }, Logger: d.log.With("component", "drone")})
	bus := filepath.Join(d.runDir, "bus.sock")
	ln, err := sim.Listen(bus)
	if err != nil {
		tf.Close()
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	dctx, dcancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	var runErr error
	wg.Add(2)
	go func() { defer wg.Done(); runErr = drone.Run(dctx) }()
	go func() { defer wg.Done(); _ = sim.ServeListener(dctx, ln, drone, d.log) }()
	var once sync.Once
	d.stopDroneFn = func() (*trace.Trace, error) {
		var tr *trace.Trace
		var err error
		once.Do(func() {
			dcancel()
			wg.Wait()
			if ferr := tw.Flush(); ferr != nil {
				err = ferr
			}
			tf.Close()
			if runErr != nil && err == nil {
				err = runErr
			}
			if err == nil {
				tr, err = trace.ReadFile(tracePath)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("%w: drone: %v", ErrDemo, err)
		}
		return tr, nil
	}
	onExit("drone", func(context.Context) error { _, _ = d.stopDrone(); return nil })
	d.droneMu.Lock()
	d.sim = drone
	d.droneMu.Unlock()
	d.say("drone: bench drone on unix://%s (MPU-6050, BMP280, PCA9685 at register level)", bus)
	return nil
}

func (d *run) stopDrone() (*trace.Trace, error) {
	if d.stopDroneFn == nil {
		return nil, fmt.Errorf("%w: no drone", ErrDemo)
	}
	return d.stopDroneFn()
}

// startAgent runs the update agent in this process with v1 as its image.
func (d *run) startAgent(ctx context.Context, brokerURL, v1 string, onExit func(string, func(context.Context) error)) error {
	cfg := agent.DefaultConfig()
	cfg.Drone = d.drone
	cfg.MQTT.Broker = brokerURL
	cfg.Keys.Trusted = filepath.Join(d.work, "keys")
	cfg.Paths.RunDir = d.runDir
	cfg.Paths.StateDir = filepath.Join(d.work, "state")
	cfg.Runtime.Kind = d.rt.Name()
	cfg.Runtime.ProcessDir = filepath.Join(d.work, "process")
	cfg.Runtime.NamePrefix = "inflight-demo-" + d.id
	bus := "unix://" + filepath.Join(d.runDir, "bus.sock")
	if d.rt.Name() == "docker" {
		bus = "unix://" + runtime.RunDirInContainer + "/bus.sock"
	}
	cfg.Controller.Image = v1
	cfg.Controller.Args = []string{"--role", "{role}", "--name", "{name}", "--run-dir", "{run_dir}", "--bus", bus}
	if !d.o.NoRT {
		cfg.Controller.Args = append(cfg.Controller.Args, "--rt")
		// In a container SCHED_FIFO needs the rtprio limit raised, which
		// the engine cannot do without CAP_SYS_RESOURCE (seen in nested
		// sandboxes); flightctl then flies without it and says so.
		cfg.Controller.RealTime = d.rt.Name() != "docker" || canRaiseRTPrio()
		if !cfg.Controller.RealTime {
			d.say("note: this machine cannot raise RLIMIT_RTPRIO (no CAP_SYS_RESOURCE): controllers in containers run without SCHED_FIFO")
		}
	}
	cfg.Policy.Probation = d.o.Probation
	cfg.Timeouts = agent.TimeoutsConfig{Fetch: 60 * time.Second, Check: 10 * time.Second, Start: 15 * time.Second,
		Wait: 20 * time.Second, Sync: 10 * time.Second, Switch: 10 * time.Second, Probation: 10 * time.Second,
		Stop: 5 * time.Second, Call: 2 * time.Second}
	// Prune only this run's images after the commit: others may share the
	// Docker Engine.
	cfg.Runtime.PruneLabels = map[string]string{LabelRun: d.id}
	a, err := agent.New(agent.Options{Config: &cfg, Runtime: d.rt, Logger: d.log.With("component", "agent")})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDemo, err)
	}
	actx, acancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(actx); err != nil {
			d.log.Error("agent stopped", "err", err)
		}
	}()
	d.stopAgent = func() {
		acancel()
		<-done
	}
	onExit("agent", func(context.Context) error { d.stopAgent(); return nil })
	return nil
}

// removeControllers stops and removes every controller of the demo's drone.
func (d *run) removeControllers(ctx context.Context) error {
	if d.rt == nil {
		return nil
	}
	cs, err := d.rt.List(ctx, map[string]string{agent.LabelDrone: d.drone})
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if c.Running() {
			if err := d.rt.Stop(ctx, c.ID, 5*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if err := d.rt.Remove(ctx, c.ID); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if d.rt.Name() == "docker" {
		removeContainers(ctx, agent.LabelDrone, d.drone)
	}
	return errors.Join(errs...)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func short12(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	return id
}

// sanitizeTag makes a version a valid tag, as images/build does.
func sanitizeTag(v string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			return r
		}
		return '-'
	}, v)
}

// tailBuffer keeps the last max lines written to it.
type tailBuffer struct {
	mu    sync.Mutex
	max   int
	lines []string
	part  string
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.part + string(p)
	parts := strings.Split(s, "\n")
	t.part = parts[len(parts)-1]
	for _, l := range parts[:len(parts)-1] {
		t.lines = append(t.lines, l)
	}
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	for _, l := range t.lines {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// ground is the demo's own view from the ground: the update's events (for
// the timeline) and the telemetry (to see what v2 changed).
type groundView struct {
	cl *mqttc.Client // telemetry
	ev *mqttc.Client // events
	st *ground.Station
	d  *run

	mu        sync.Mutex
	versions  []string                       // controller_version in telemetry order, deduplicated
	telemetry map[string]map[string]struct{} // keys seen per controller_version
	agentErr  string
}

type watched struct {
	outcome ground.Outcome
	err     error
}

func (d *run) connectGround(ctx context.Context, url string) (*groundView, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := mqttc.Connect(cctx, mqttc.Options{Broker: url, ClientID: "inflight-demo-ground-" + d.id, Logger: d.log})
	if err != nil {
		return nil, fmt.Errorf("%w: ground: %v", ErrDemo, err)
	}
	st, err := ground.New(ground.Options{Conn: cl, Logger: d.log})
	if err != nil {
		cl.Close(0)
		return nil, fmt.Errorf("%w: %v", ErrDemo, err)
	}
	g := &groundView{cl: cl, st: st, d: d, telemetry: map[string]map[string]struct{}{}}
	dt, err := st.Drone(d.drone)
	if err != nil {
		cl.Close(0)
		return nil, err
	}
	if err := cl.Subscribe(ctx, dt.Telemetry, 0, g.onTelemetry); err != nil {
		cl.Close(0)
		return nil, fmt.Errorf("%w: ground: %v", ErrDemo, err)
	}
	// A second connection for the agent's events: paho keeps one handler
	// per filter and client, and Station.Watch subscribes to them too.
	cctx2, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	ev, err := mqttc.Connect(cctx2, mqttc.Options{Broker: url, ClientID: "inflight-demo-events-" + d.id, Logger: d.log})
	if err != nil {
		cl.Close(0)
		return nil, fmt.Errorf("%w: ground: %v", ErrDemo, err)
	}
	g.ev = ev
	if err := ev.Subscribe(ctx, dt.Events, 1, g.onEvent); err != nil {
		g.close()
		return nil, fmt.Errorf("%w: ground: %v", ErrDemo, err)
	}
	d.ground = g
	return g, nil
}

func (g *groundView) close() {
	g.cl.Close(100 * time.Millisecond)
	if g.ev != nil {
		g.ev.Close(100 * time.Millisecond)
	}
}

// onEvent notes a failed start-up of the agent (e.g. v1 would not start),
// so that the demo stops waiting for v1 at once.
func (g *groundView) onEvent(m mqttc.Message) {
	ev, err := mqttapi.DecodeEvent(m.Payload)
	if err != nil || ev.Kind != agent.KindRecovery || ev.Result != "failed" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.agentErr == "" {
		g.agentErr = ev.Error
	}
}

// agentFailed is the error of a failed agent start-up, or "".
func (g *groundView) agentFailed() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.agentErr
}

func (g *groundView) onTelemetry(m mqttc.Message) {
	var t map[string]json.RawMessage
	if json.Unmarshal(m.Payload, &t) != nil {
		return
	}
	v := unquote(t["controller_version"])
	keys := map[string]struct{}{}
	for k, val := range t {
		keys[k] = struct{}{}
		if k == "extra" {
			var ex map[string]json.RawMessage
			if json.Unmarshal(val, &ex) == nil {
				for e := range ex {
					keys["extra."+e] = struct{}{}
				}
			}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := len(g.versions); n == 0 || g.versions[n-1] != v {
		g.versions = append(g.versions, v)
	}
	if g.telemetry[v] == nil {
		g.telemetry[v] = map[string]struct{}{}
	}
	for k := range keys {
		g.telemetry[v][k] = struct{}{}
	}
}

// follow watches the next update of the drone to its end.
func (g *groundView) follow(ctx context.Context) <-chan watched {
	ch := make(chan watched, 1)
	w, err := g.st.Watch(ctx, g.d.drone)
	if err != nil {
		ch <- watched{err: err}
		return ch
	}
	go func() {
		defer w.Close()
		wctx, cancel := context.WithTimeout(ctx, 100*time.Second)
		defer cancel()
		out, err := w.Wait(wctx, 0, nil)
		ch <- watched{out, err}
	}()
	return ch
}

// telemetryChanges says what the ground saw change in the telemetry.
func (g *groundView) telemetryChanges() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	if len(g.versions) >= 2 {
		out = append(out, "telemetry on the ground: controller_version "+strings.Join(g.versions, " → "))
		first, last := g.telemetry[g.versions[0]], g.telemetry[g.versions[len(g.versions)-1]]
		var added []string
		for k := range last {
			if _, ok := first[k]; !ok {
				added = append(added, k)
			}
		}
		if len(added) > 0 {
			slices.Sort(added)
			out = append(out, "telemetry adds "+strings.Join(added, ", "))
		}
	}
	return out
}

// maxAttempts bounds the pushes of v2 (the first, and more after an abort
// or a rollback that left v1 flying).
const maxAttempts = 3

// DefaultV2BuildArgs are the images/build flags that give the v2 image its
// visible feature.
var DefaultV2BuildArgs = []string{"--state-schema", "2", "--env", "INFLIGHT_STATE_SCHEMA=2"}

// canRaiseRTPrio reports whether this process (and so, on this machine, the
// Docker daemon beside it) may set an rtprio limit of 99: the hard limit
// allows it already, or it holds CAP_SYS_RESOURCE.
func canRaiseRTPrio() bool {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_RTPRIO, &rl) == nil && rl.Max >= 99 {
		return true
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// controllerLogs prints the last lines of every controller of the run.
func (d *run) controllerLogs(ctx context.Context) {
	if d.rt == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cs, err := d.rt.List(ctx, map[string]string{agent.LabelDrone: d.drone})
	if err != nil {
		return
	}
	for _, c := range cs {
		rc, err := d.rt.Logs(ctx, c.ID, runtime.LogOptions{Tail: 15})
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(rc, 1<<16))
		rc.Close()
		fmt.Fprintf(d.o.Stderr, "demo: the last lines of controller %s (%s):\n", c.Name, c.State)
		for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			fmt.Fprintf(d.o.Stderr, "  %s\n", l)
		}
	}
}
