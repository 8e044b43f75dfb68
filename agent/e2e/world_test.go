package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/inflight-ota/inflight/agent"
	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/imagebuild"
	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/ground/keys"
	"github.com/inflight-ota/inflight/internal/testsvc"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/trace"
)

// LabelRun marks the images a test run built, so that the agent prunes only
// those and the test removes exactly those.
const LabelRun = "org.inflight.e2e.run"

const module = "github.com/inflight-ota/inflight"

// buildDir holds the binaries built once per test binary.
var buildDir string

func TestMain(m *testing.M) {
	testsvc.Main(m, func() {
		if buildDir != "" {
			os.RemoveAll(buildDir)
		}
	})
}

var builds struct {
	mu   sync.Mutex
	bins map[string]string
}

// goBuild builds pkg once per test binary (static, for a FROM-scratch image)
// with version stamped in, and returns the binary's path.
func goBuild(t testing.TB, pkg, version string, env ...string) string {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	key := pkg + "@" + version + strings.Join(env, ",")
	if p, ok := builds.bins[key]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "inflight-e2e-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
		builds.bins = map[string]string{}
	}
	out := filepath.Join(buildDir, fmt.Sprintf("%s-%d", filepath.Base(pkg), len(builds.bins)))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X "+module+"/internal/buildinfo.Version="+version, "-o", out, module+"/"+pkg)
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	builds.bins[key] = out
	return out
}

// img is a controller image pushed to the test's registry.
type img struct {
	Ref     string // repo@sha256:…, what a manifest pins
	ID      string // config digest, Docker's image ID
	Version string
}

// imageOpts vary an image from the plain flightctl one.
type imageOpts struct {
	Arch   string   // GOARCH of the image config (the binary stays this machine's); default this machine's
	Env    []string // image config Env (Docker merges it under the container's)
	Labels map[string]string
	Tags   string // go build tags
	// Args are put after the entrypoint, before the agent's arguments
	// (which replace the image's Cmd): flags of this version, e.g.
	// --state-schema 2 or a debug fault.
	Args []string
}

// world is one test's drone: broker, registry, run dir, bench drone, keys,
// agent, ground client.
type world struct {
	t        *testing.T // the running (sub)test
	top      *testing.T // the test that owns the world and its cleanups
	run      string
	drone    string
	root     string
	runDir   string
	stateDir string
	cli      *client.Client
	broker   string
	registry string
	signer   *keys.Signer
	keysPath string
	topics   mqttapi.DroneTopics

	sim       *sim.Drone
	traceFile *os.File
	traceBuf  *bufio.Writer
	simStop   func()

	agentBin string
	agent    *agentProc
	cfg      agentConfig

	g      *groundClient
	serial uint64
}

type agentConfig struct {
	Image     string
	Probation time.Duration
}

func newWorld(t *testing.T) *world {
	t.Helper()
	cli := testsvc.Docker(t)
	broker := testsvc.Mosquitto(t)
	reg := testsvc.Registry(t)
	b := make([]byte, 4)
	rand.Read(b)
	run := hex.EncodeToString(b)
	w := &world{t: t, top: t, run: run, drone: "e2e-" + run, cli: cli, broker: broker, registry: reg}
	var err error
	if w.root, err = os.MkdirTemp("", "inflight-e2e-"+run+"-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(w.root) })
	// The controllers run as nobody: the run dir must let them in.
	w.runDir = filepath.Join(w.root, "run")
	w.stateDir = filepath.Join(w.root, "state")
	for _, d := range []string{w.runDir, w.stateDir, filepath.Join(w.root, "keys")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Chmod(w.root, 0o755))
	must(t, os.Chmod(w.runDir, 0o777))

	t.Cleanup(w.removeImages)

	// The bench drone, in this process.
	w.traceFile, err = os.Create(filepath.Join(w.root, "trace.jsonl"))
	must(t, err)
	w.traceBuf = bufio.NewWriterSize(w.traceFile, 1<<16)
	w.sim = sim.New(&sim.Options{Trace: w.traceBuf, Logger: slog.New(slog.DiscardHandler)})
	ln, err := sim.Listen(filepath.Join(w.runDir, "bus.sock"))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); w.sim.Run(ctx) }()
	go func() { defer wg.Done(); sim.ServeListener(ctx, ln, w.sim, nil) }()
	var once sync.Once
	w.simStop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			w.traceBuf.Flush()
			w.traceFile.Close()
		})
	}
	t.Cleanup(w.simStop)
	t.Cleanup(w.removeContainers)

	// Keys.
	priv, err := keys.Generate(rand.Reader)
	must(t, err)
	w.signer, err = keys.NewSigner(priv)
	must(t, err)
	w.keysPath = filepath.Join(w.root, "keys", "ground.pub")
	must(t, keys.WriteKeyPair(priv, filepath.Join(w.root, "keys", "ground.key"), w.keysPath, false))
	tp, _ := mqttapi.NewTopics(mqttapi.DefaultRoot)
	w.topics, err = tp.Drone(w.drone)
	must(t, err)

	w.agentBin = goBuild(t, "cmd/inflight-agent", "e2e")
	w.g = newGround(t, "tcp://"+broker, w.topics)
	t.Cleanup(func() {
		if t.Failed() {
			w.dumpLogs()
		}
	})
	return w
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// image builds flightctl at version into an image FROM scratch, pushes it
// to the registry and returns it pinned by digest.
func (w *world) image(version string, o imageOpts) img {
	t := w.t
	t.Helper()
	var env []string
	if o.Tags != "" {
		env = append(env, "GOFLAGS=-tags="+o.Tags)
	}
	bin := goBuild(t, "cmd/flightctl", version, env...)
	labels := map[string]string{
		runtime.LabelVersion:         version,
		runtime.LabelHandoffProtocol: "1",
		runtime.LabelStateSchema:     "1",
		LabelRun:                     w.run,
	}
	for k, v := range o.Labels {
		labels[k] = v
	}
	im, err := imagebuild.Build(imagebuild.Config{
		Binary: bin, Entrypoint: "/flightctl", Cmd: []string{"--run-dir", runtime.RunDirInContainer},
		Env: o.Env, Labels: labels, Arch: o.Arch,
	})
	must(t, err)
	if len(o.Args) > 0 {
		cf, err := im.ConfigFile()
		must(t, err)
		cf = cf.DeepCopy()
		cf.Config.Entrypoint = append(cf.Config.Entrypoint, o.Args...)
		im, err = mutate.ConfigFile(im, cf)
		must(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tag := strings.ReplaceAll(version, "+", "-")
	ref, err := imagebuild.Push(ctx, im, w.registry+"/flightctl:"+tag)
	must(t, err)
	id, err := im.ConfigName()
	must(t, err)
	return img{Ref: ref, ID: id.String(), Version: version}
}

// ---- the agent, a separate process ----

type agentProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func (w *world) writeConfig() string {
	c := w.cfg
	if c.Probation == 0 {
		c.Probation = 2 * time.Second
	}
	q := strconv.Quote
	conf := fmt.Sprintf(`drone = %s

[mqtt]
broker = %s

[keys]
trusted = %s

[paths]
run_dir = %s
state_dir = %s

[runtime]
kind = "docker"
name_prefix = %s
prune_labels = { %s = %s }

[controller]
image = %s
args = ["--role", "{role}", "--name", "{name}", "--run-dir", "{run_dir}", "--bus", "unix:///run/inflight/bus.sock", "--rate", "400", "--rt"]
memory_mb = 64
# realtime = true asks Docker for hard rtprio 99; an engine without
# CAP_SYS_RESOURCE (this sandbox, CI) refuses it, and the runtime starts the
# controllers without the rlimits instead (docs/agent.md).
realtime = true

[policy]
probation = %s

[timeouts]
fetch = "1m"
start = "20s"
wait = "30s"
sync = "20s"
switch = "15s"
probation = "15s"
stop = "5s"

[telemetry]
rate_hz = 5
`, q(w.drone), q("tcp://"+w.broker), q(w.keysPath), q(w.runDir), q(w.stateDir), q(w.drone), q(LabelRun), q(w.run), q(c.Image), q(c.Probation.String()))
	p := filepath.Join(w.root, "agent.toml")
	must(w.t, os.WriteFile(p, []byte(conf), 0o600))
	// The test's config must pass the agent's own checks.
	if _, err := agent.LoadConfig(p); err != nil {
		w.t.Fatal(err)
	}
	return p
}

// startAgent runs inflight-agent with a config file the test writes.
func (w *world) startAgent() {
	t := w.t
	t.Helper()
	p := w.writeConfig()
	logf, err := os.OpenFile(filepath.Join(w.root, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	must(t, err)
	cmd := exec.Command(w.agentBin, "--config", p)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	must(t, cmd.Start())
	ap := &agentProc{cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(ap.exited) }()
	if w.agent == nil {
		w.top.Cleanup(func() { w.stopAgent() })
	}
	w.agent = ap
}

// stopAgent sends SIGTERM and waits (SIGKILL after 15 s).
func (w *world) stopAgent() {
	ap := w.agent
	if ap == nil {
		return
	}
	ap.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ap.exited:
	case <-time.After(15 * time.Second):
		w.t.Errorf("agent ignored SIGTERM for 15 s")
		ap.cmd.Process.Kill()
		<-ap.exited
	}
}

// killAgent sends SIGKILL and waits.
func (w *world) killAgent() {
	ap := w.agent
	ap.cmd.Process.Kill()
	<-ap.exited
}

// agentRSS reads VmRSS and VmHWM (KiB) of the agent process.
func (w *world) agentRSS() (rss, hwm int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.agent.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return rss, hwm
}

// ---- the ground side ----

type groundClient struct {
	c        *mqttc.Client
	topics   mqttapi.DroneTopics
	mu       sync.Mutex
	events   []mqttapi.Event
	arrived  []time.Time
	reported *mqttapi.Reported
	tele     int
	lastTele *mqttapi.Telemetry
}

func newGround(t *testing.T, broker string, tp mqttapi.DroneTopics) *groundClient {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mqttc.Connect(ctx, mqttc.Options{Broker: broker, ClientID: "e2e-ground-" + tp.ID})
	must(t, err)
	t.Cleanup(func() { c.Close(100 * time.Millisecond) })
	g := &groundClient{c: c, topics: tp}
	must(t, c.Subscribe(ctx, tp.Events, 1, func(m mqttc.Message) {
		e, err := mqttapi.DecodeEvent(m.Payload)
		if err != nil {
			t.Errorf("event does not decode: %v: %s", err, m.Payload)
			return
		}
		g.mu.Lock()
		g.events = append(g.events, *e)
		g.arrived = append(g.arrived, time.Now())
		g.mu.Unlock()
	}))
	must(t, c.Subscribe(ctx, tp.Reported, 1, func(m mqttc.Message) {
		r, err := mqttapi.DecodeReported(m.Payload)
		if err != nil {
			t.Errorf("reported does not decode: %v: %s", err, m.Payload)
			return
		}
		g.mu.Lock()
		g.reported = r
		g.mu.Unlock()
	}))
	must(t, c.Subscribe(ctx, tp.Telemetry, 0, func(m mqttc.Message) {
		tm, err := mqttapi.DecodeTelemetry(m.Payload)
		if err != nil {
			t.Errorf("telemetry does not decode: %v: %s", err, m.Payload)
			return
		}
		g.mu.Lock()
		g.tele++
		g.lastTele = tm
		g.mu.Unlock()
	}))
	return g
}

func (g *groundClient) publish(t testing.TB, topic string, payload []byte, retain bool) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	at := time.Now()
	must(t, g.c.Publish(ctx, mqttc.Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain}))
	return at
}

func (g *groundClient) eventsSnapshot() []mqttapi.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]mqttapi.Event(nil), g.events...)
}

func (g *groundClient) reportedSnapshot() *mqttapi.Reported {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reported == nil {
		return nil
	}
	r := *g.reported
	return &r
}

// waitEvent waits for an event matching pred among those received from
// index from on; it returns the event and its index.
func (w *world) waitEvent(what string, timeout time.Duration, from int, pred func(e mqttapi.Event) bool) (mqttapi.Event, int) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := w.g.eventsSnapshot()
		for i := from; i < len(evs); i++ {
			if pred(evs[i]) {
				return evs[i], i
			}
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("no %s within %v; events:\n%s", what, timeout, formatEvents(evs[min(from, len(evs)):]))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReported waits until the reported state satisfies pred.
func (w *world) waitReported(what string, timeout time.Duration, pred func(r *mqttapi.Reported) bool) *mqttapi.Reported {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := w.g.reportedSnapshot()
		if r != nil && pred(r) {
			return r
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(r)
			w.t.Fatalf("reported state never %s within %v; last: %s\nevents:\n%s", what, timeout, b, formatEvents(w.g.eventsSnapshot()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func formatEvents(evs []mqttapi.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  seq=%d kind=%s serial=%d phase=%s result=%s reason=%s err=%q\n", e.Seq, e.Kind, e.Serial, e.Phase, e.Result, e.Reason, e.Error)
	}
	return b.String()
}

// manifest returns a signable update manifest for im with the next serial.
func (w *world) manifest(im img) *mqttapi.Manifest {
	now := time.Now()
	w.serial = mqttapi.NextSerial(w.serial, now)
	return &mqttapi.Manifest{
		V: mqttapi.Version, Kind: mqttapi.KindUpdate, Drone: w.drone, Serial: w.serial,
		Version: im.Version, Image: mqttapi.Image{Ref: im.Ref},
		IssuedAt: now.Add(-time.Second).UTC(), ExpiresAt: now.Add(10 * time.Minute).UTC(),
	}
}

// push signs m and publishes it retained on the drone's desired topic, as
// groundctl push does; it returns when it was published.
func (w *world) push(m *mqttapi.Manifest) time.Time {
	w.t.Helper()
	raw, err := w.signer.SignManifest(m)
	must(w.t, err)
	return w.g.publish(w.t, w.topics.Desired, raw, true)
}

// ---- the flight ----

// ctl returns a control-socket client of the controller called name.
func (w *world) ctl(name string) *ctlsock.Client {
	return ctlsock.New(ctlsock.SocketPath(w.runDir, name), 2*time.Second)
}

// status asks a controller for its status.
func (w *world) status(name string) (*ctlsock.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c := w.ctl(name)
	defer c.Close()
	return c.Status(ctx)
}

// takeOff sends v1 a mission (take off to 2 m, hover long) and waits until
// it has hovered steadily for settle.
func (w *world) takeOff(name string, settle time.Duration) {
	t := w.t
	t.Helper()
	c := w.ctl(name)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The gyro calibrates at rest first; arming is refused until then.
	for {
		err := c.Call(ctx, "mission", map[string]string{"spec": "takeoff:2m,hover:600s,land"}, nil)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("mission refused: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var hoverSince time.Time
	for {
		st, err := c.Status(ctx)
		if ctx.Err() != nil {
			t.Fatalf("no steady hover within 60 s: last status %+v, err %v", st, err)
		}
		if err == nil && st.Mode == "hover" && st.Airborne && math.Abs(st.AltM-2) < 0.1 {
			if hoverSince.IsZero() {
				hoverSince = time.Now()
			}
			if time.Since(hoverSince) >= settle {
				return
			}
		} else {
			hoverSince = time.Time{}
		}
		if _, crashed := w.sim.State(); crashed {
			t.Fatalf("the drone crashed during takeoff: %+v", w.sim.Summary())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- docker state ----

// containers lists this run's controllers (running or not) by name.
func (w *world) containers() map[string]container.Summary {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := w.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", agent.LabelDrone+"="+w.drone))})
	must(w.t, err)
	out := map[string]container.Summary{}
	for _, c := range cs {
		out[strings.TrimPrefix(c.Names[0], "/")] = c
	}
	return out
}

func (w *world) hasImage(id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := w.cli.ImageInspect(ctx, id)
	return err == nil
}

func (w *world) removeContainers() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, _ := w.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", agent.LabelDrone+"="+w.drone))})
	for _, c := range cs {
		if err := w.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			w.t.Logf("remove container %s: %v", c.Names, err)
		}
	}
}

func (w *world) removeImages() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	imgs, _ := w.cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelRun+"="+w.run))})
	for _, i := range imgs {
		if _, err := w.cli.ImageRemove(ctx, i.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			w.t.Logf("remove image %s: %v", i.ID, err)
		}
	}
}

// dumpLogs logs the agent's log and each controller's, for a failed test.
func (w *world) dumpLogs() {
	if b, err := os.ReadFile(filepath.Join(w.root, "agent.log")); err == nil {
		w.t.Logf("agent log (tail):\n%s", tail(string(b), 60))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := []string{}
	cs := w.containers()
	for n := range cs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rc, err := w.cli.ContainerLogs(ctx, cs[n].ID, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "40"})
		if err != nil {
			continue
		}
		var out strings.Builder
		stdcopy.StdCopy(&out, &out, rc)
		rc.Close()
		w.t.Logf("controller %s (%s) log (tail):\n%s", n, cs[n].State, out.String())
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- figures from the bench drone ----

// deviation is the largest true attitude (deg) and altitude (m) deviation in
// [at-before, at+after] against the mean of the hover in the second before
// that window (as bench's handoff scenario measures it).
func deviation(tr *trace.Trace, at, before, after float64) (attDeg, altM float64) {
	var n int
	var sz, sr, sp float64
	for _, s := range tr.Samples {
		if s.T >= at-before-1 && s.T < at-before {
			sz += s.Z
			sr += s.Roll
			sp += s.Pitch
			n++
		}
	}
	if n == 0 {
		return math.NaN(), math.NaN()
	}
	mz, mr, mp := sz/float64(n), sr/float64(n), sp/float64(n)
	for _, s := range tr.Samples {
		if s.T >= at-before && s.T <= at+after {
			attDeg = math.Max(attDeg, math.Hypot(s.Roll-mr, s.Pitch-mp))
			altM = math.Max(altM, math.Abs(s.Z-mz))
		}
	}
	return attDeg, altM
}

// keysGenerate returns a signer of a fresh key no drone trusts.
func keysGenerate() (*keys.Signer, error) {
	priv, err := keys.Generate(rand.Reader)
	if err != nil {
		return nil, err
	}
	return keys.NewSigner(priv)
}
