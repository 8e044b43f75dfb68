package agent

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/ctlsock/ctlsocktest"
	"github.com/inflight-ota/inflight/internal/testsvc"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// testClock is the real clock shifted by what the test advanced it: phase
// deadlines pass when the test says so, without sleeping.
type testClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// fakeCtl is a stand-in controller: a ctlsocktest server whose status and
// handoff the test steers. As v1, each handoff_progress moves one step along
// script, stopping at hold.
type fakeCtl struct {
	mu      sync.Mutex
	srv     *ctlsocktest.Server
	name    string
	st      ctlsock.Status
	script  []string
	step    int
	hold    string
	phase   string
	started *ctlsock.HandoffStart
	aborts  []string
}

var fullScript = []string{"hello", "sync", "shadow", "switch", "probation", "done"}

func (f *fakeCtl) status() ctlsock.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeCtl) set(fn func(f *fakeCtl)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *fakeCtl) progress() ctlsock.Progress {
	p := ctlsock.Progress{Role: "v1", Phase: f.phase, Version: f.st.Version, SwitchTick: 4242, MaxDivergence: 0.002, TicksShadowed: 800,
		ControlGapMS: 2.6, ControlPeriodMS: 2.5, MaxAttDevDeg: 0.4, MaxAltDevM: 0.03, Durations: ctlsock.Durations{Sync: 30 * time.Millisecond}}
	return p
}

func (f *fakeCtl) serve() {
	f.srv.Handle(ctlsock.CmdStatus, func(json.RawMessage) (any, error) { return f.status(), nil })
	f.srv.Handle(ctlsock.CmdHandoffStart, func(raw json.RawMessage) (any, error) {
		var req ctlsock.HandoffStart
		json.Unmarshal(raw, &req)
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.started != nil {
			return nil, &ctlsock.Error{Msg: "handoff already running", Reason: "busy"}
		}
		f.started = &req
		f.step, f.phase = 0, f.script[0]
		return f.progress(), nil
	})
	f.srv.Handle(ctlsock.CmdHandoffProgress, func(json.RawMessage) (any, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.started == nil {
			return ctlsock.Progress{Phase: "idle"}, nil
		}
		if f.phase != f.hold && f.step+1 < len(f.script) && f.phase != ctlsock.PhaseAborted && f.phase != ctlsock.PhaseRolledBack {
			f.step++
			f.phase = f.script[f.step]
		}
		return f.progress(), nil
	})
	f.srv.Handle(ctlsock.CmdHandoffAbort, func(raw json.RawMessage) (any, error) {
		var req ctlsock.HandoffAbort
		json.Unmarshal(raw, &req)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.aborts = append(f.aborts, req.Reason)
		switch f.phase {
		case "probation":
			f.phase = ctlsock.PhaseRolledBack
		case "done", ctlsock.PhaseAborted, ctlsock.PhaseRolledBack:
			return nil, &ctlsock.Error{Msg: "handoff over", Reason: "terminal"}
		default:
			f.phase = ctlsock.PhaseAborted
		}
		return f.progress(), nil
	})
}

// fakeRuntime keeps images and controllers in memory; a started controller
// is a fakeCtl on its control socket.
type fakeRuntime struct {
	t  *testing.T
	mu sync.Mutex

	images  map[string]runtime.ImageInfo // by ref and by ID
	ctls    map[string]*runtime.Controller
	fakes   map[string]*fakeCtl
	pulls   int
	starts  []runtime.Spec
	pullErr error
	// startFail, when set, may fail a Start before anything is made;
	// tries counts every Start asked for, by name.
	startFail func(spec runtime.Spec) error
	tries     map[string]int
	// newCtl sets up each started controller's status and script.
	newCtl func(spec runtime.Spec, f *fakeCtl)
}

var _ Runtime = (*fakeRuntime)(nil)

func newFakeRuntime(t *testing.T) *fakeRuntime {
	r := &fakeRuntime{t: t, images: map[string]runtime.ImageInfo{}, ctls: map[string]*runtime.Controller{}, fakes: map[string]*fakeCtl{}}
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, f := range r.fakes {
			f.srv.Close()
		}
	})
	return r
}

func (r *fakeRuntime) addImage(ref, version string, plat runtime.Platform) runtime.ImageInfo {
	id := "sha256:" + strings.Repeat(fmt.Sprintf("%x", len(r.images)+1), 64)[:64]
	info := runtime.ImageInfo{ID: id, OS: plat.OS, Arch: plat.Arch, Variant: plat.Variant,
		Labels: map[string]string{runtime.LabelVersion: version, runtime.LabelHandoffProtocol: "1", runtime.LabelStateSchema: "1"}}
	r.mu.Lock()
	r.images[ref], r.images[id] = info, info
	r.mu.Unlock()
	return info
}

func (r *fakeRuntime) Name() string { return "fake" }

func (r *fakeRuntime) Pull(ctx context.Context, ref string, progress func(runtime.Progress)) (runtime.ImageInfo, error) {
	r.mu.Lock()
	r.pulls++
	info, ok := r.images[ref]
	err := r.pullErr
	r.mu.Unlock()
	if err != nil {
		return info, err
	}
	if !ok {
		return info, fmt.Errorf("fake: pull %s: %w", ref, runtime.ErrNotFound)
	}
	if progress != nil {
		progress(runtime.Progress{Phase: "download", Current: 512, Total: 1024})
		progress(runtime.Progress{Phase: "done", Current: 1024, Total: 1024})
	}
	return info, nil
}

// Load reads the archive and returns the image registered as
// "load:<archive bytes>" (the test knows what it sends).
func (r *fakeRuntime) Load(ctx context.Context, rd io.Reader, progress func(runtime.Progress)) (runtime.ImageInfo, error) {
	b, err := io.ReadAll(rd)
	if err != nil {
		return runtime.ImageInfo{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	info, ok := r.images["load:"+string(b)]
	if !ok {
		return info, fmt.Errorf("fake: load of %d unknown bytes", len(b))
	}
	if progress != nil {
		progress(runtime.Progress{Phase: "load", Current: int64(len(b)), Total: int64(len(b))})
	}
	return info, nil
}

func (r *fakeRuntime) Inspect(ctx context.Context, ref string) (runtime.ImageInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	info, ok := r.images[ref]
	if !ok {
		return info, fmt.Errorf("fake: image %s: %w", ref, runtime.ErrNotFound)
	}
	return info, nil
}

func (r *fakeRuntime) Prune(ctx context.Context, opts runtime.PruneOptions) ([]string, error) {
	return nil, nil
}

func (r *fakeRuntime) Start(ctx context.Context, spec runtime.Spec) (runtime.Controller, error) {
	if err := spec.Validate(); err != nil {
		return runtime.Controller{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tries == nil {
		r.tries = map[string]int{}
	}
	r.tries[spec.Name]++
	if r.startFail != nil {
		if err := r.startFail(spec); err != nil {
			return runtime.Controller{}, err
		}
	}
	if _, ok := r.ctls[spec.Name]; ok {
		return runtime.Controller{}, fmt.Errorf("fake: %s: %w", spec.Name, runtime.ErrExists)
	}
	info, ok := r.images[spec.Image]
	if !ok {
		return runtime.Controller{}, fmt.Errorf("fake: image %s: %w", spec.Image, runtime.ErrNotFound)
	}
	r.starts = append(r.starts, spec)
	c := &runtime.Controller{ID: "id-" + spec.Name, Name: spec.Name, Image: info.ID, Labels: spec.ControllerLabels(), State: runtime.StateRunning, StartedAt: time.Now()}
	c.Labels[runtime.LabelVersion] = info.Version()
	c.FillFromLabels()
	f := &fakeCtl{name: spec.Name, script: fullScript, st: ctlsock.Status{Version: info.Version(), Role: string(spec.Role), Mode: "hover", Armed: true, Airborne: true, AltM: 2}}
	if spec.Role == runtime.RoleStandby {
		f.st.Mode, f.st.Armed = "standby", false
	}
	if r.newCtl != nil {
		r.newCtl(spec, f)
	}
	srv, err := ctlsocktest.Listen(ctlsock.SocketPath(spec.RunDir, spec.Name), f.st)
	if err != nil {
		return runtime.Controller{}, err
	}
	f.srv = srv
	f.serve()
	r.ctls[spec.Name], r.fakes[spec.Name] = c, f
	return *c, nil
}

func (r *fakeRuntime) List(ctx context.Context, labels map[string]string) ([]runtime.Controller, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []runtime.Controller
	for _, c := range r.ctls {
		if runtime.HasLabels(c.Labels, labels) {
			cc := *c
			cc.Labels = maps.Clone(c.Labels)
			out = append(out, cc)
		}
	}
	return out, nil
}

func (r *fakeRuntime) find(id string) (*runtime.Controller, *fakeCtl) {
	for name, c := range r.ctls {
		if c.ID == id || c.Name == id {
			return c, r.fakes[name]
		}
	}
	return nil, nil
}

func (r *fakeRuntime) Stop(ctx context.Context, id string, timeout time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, f := r.find(id)
	if c == nil {
		return fmt.Errorf("fake: %s: %w", id, runtime.ErrNotFound)
	}
	c.State = runtime.StateExited
	f.srv.Close()
	return nil
}

func (r *fakeRuntime) Remove(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, f := r.find(id)
	if c == nil {
		return fmt.Errorf("fake: %s: %w", id, runtime.ErrNotFound)
	}
	f.srv.Close()
	delete(r.ctls, c.Name)
	delete(r.fakes, c.Name)
	return nil
}

func (r *fakeRuntime) triesOf(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tries[name]
}

func (r *fakeRuntime) ctl(name string) *fakeCtl {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fakes[name]
}

func (r *fakeRuntime) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n []string
	for k, c := range r.ctls {
		if c.Running() {
			n = append(n, k)
		}
	}
	return n
}

// startBroker runs an in-process mochi broker on 127.0.0.1:0.
func startBroker(t *testing.T) string {
	t.Helper()
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler), InlineClient: true})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testsvc.CloseBroker(srv) })
	return "tcp://" + l.Address()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// bench is one drone: broker, fake runtime, keys, config, a ground client.
type bench struct {
	t      *testing.T
	broker string
	rt     *fakeRuntime
	clock  *testClock
	priv   ed25519.PrivateKey
	kr     *mqttapi.Keyring
	cfg    *Config
	topics mqttapi.DroneTopics
	ground *mqttc.Client
	events chan mqttapi.Event
	v1     runtime.ImageInfo
	serial uint64
	reqSer uint64

	lastRaw, lastManifest []byte
}

func newBench(t *testing.T) *bench {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	dir, err := os.MkdirTemp("", "ag")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	keyFile := dir + "/keys.pem"
	os.WriteFile(keyFile, []byte("unused"), 0o600)
	b := &bench{t: t, broker: startBroker(t), rt: newFakeRuntime(t), clock: &testClock{}, priv: priv, kr: mqttapi.NewKeyring(pub), serial: 100}
	b.v1 = b.rt.addImage("local/flightctl:1", "1.0.0", runtime.HostPlatform())
	c := DefaultConfig()
	c.Drone, c.Fleets = "d1", []string{"alpha"}
	c.MQTT.Broker = b.broker
	c.Keys.Trusted = keyFile
	c.Paths.RunDir, c.Paths.StateDir = dir+"/run", dir+"/state"
	os.MkdirAll(c.Paths.RunDir, 0o755)
	c.Runtime.NamePrefix = "c"
	c.Controller.Image = "local/flightctl:1"
	c.Policy.Probation = 5 * time.Second
	c.Telemetry.RateHz = 20
	b.cfg = &c
	b.topics, _ = mqttapi.Topics{}.Drone("d1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.events = make(chan mqttapi.Event, 256)
	g, err := mqttc.Connect(ctx, mqttc.Options{Broker: b.broker, ClientID: "ground"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(0) })
	b.ground = g
	if err := g.Subscribe(ctx, b.topics.Events, 1, func(m mqttc.Message) {
		e, err := mqttapi.DecodeEvent(m.Payload)
		if err != nil {
			t.Errorf("undecodable event: %v", err)
			return
		}
		b.events <- *e
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

// agent is one agent process; stop it to simulate a crash (it leaves the
// journal and the controllers as they are).
type runningAgent struct {
	a    *Agent
	stop func()
}

func (b *bench) start() *runningAgent {
	b.t.Helper()
	a, err := New(Options{Config: b.cfg, Runtime: b.rt, Keyring: b.kr, Clock: b.clock, PollInterval: 10 * time.Millisecond,
		StartRetry: 5 * time.Millisecond, StartRetryMax: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(testWriter{b.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		b.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	ra := &runningAgent{a: a}
	var once sync.Once
	ra.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				b.t.Errorf("Run: %v", err)
			}
		})
	}
	b.t.Cleanup(ra.stop)
	return ra
}

func (b *bench) manifest(version, ref string, mut func(m *mqttapi.Manifest)) []byte {
	b.t.Helper()
	defer func() { b.lastManifest = b.lastRaw }()
	b.serial++
	now := b.clock.Now()
	m := mqttapi.Manifest{Kind: mqttapi.KindUpdate, Drone: "d1", Serial: b.serial, Version: version,
		Image: mqttapi.Image{Ref: ref}, IssuedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour)}
	if mut != nil {
		mut(&m)
	}
	b.lastRaw = b.sign(m.Marshal())
	return b.lastRaw
}

func (b *bench) sign(payload []byte, err error) []byte {
	b.t.Helper()
	if err != nil {
		b.t.Fatal(err)
	}
	env, err := mqttapi.Sign(b.priv, payload)
	if err != nil {
		b.t.Fatal(err)
	}
	raw, err := env.Marshal()
	if err != nil {
		b.t.Fatal(err)
	}
	return raw
}

func (b *bench) request(kind string) []byte {
	b.reqSer++
	now := b.clock.Now()
	r := mqttapi.Request{Kind: kind, Drone: "d1", Serial: b.reqSer, Reason: "test", IssuedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour)}
	return b.sign(r.Marshal())
}

func (b *bench) publish(topic string, payload []byte, retain bool) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.ground.Publish(ctx, mqttc.Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain}); err != nil {
		b.t.Fatal(err)
	}
}

// waitEvent returns the first event for which match is true, failing after
// 10 s; the events before it are returned too.
func (b *bench) waitEvent(what string, match func(e mqttapi.Event) bool) (mqttapi.Event, []mqttapi.Event) {
	b.t.Helper()
	var seen []mqttapi.Event
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-b.events:
			seen = append(seen, e)
			if match(e) {
				return e, seen
			}
		case <-deadline:
			var ph []string
			for _, e := range seen {
				ph = append(ph, string(e.Phase)+"/"+e.Reason)
			}
			b.t.Fatalf("no %s event within 10s; saw %v", what, ph)
			return mqttapi.Event{}, nil
		}
	}
}

func (b *bench) waitPhase(serial uint64, p mqttapi.Phase) (mqttapi.Event, []mqttapi.Event) {
	b.t.Helper()
	return b.waitEvent(string(p), func(e mqttapi.Event) bool { return e.Serial == serial && e.Phase == p })
}

// phases lists the phases of evs in seq order (the ground's client may hand
// events over out of order), without repeats.
func phases(evs []mqttapi.Event) []mqttapi.Phase {
	evs = slices.Clone(evs)
	slices.SortStableFunc(evs, func(a, b mqttapi.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	var out []mqttapi.Phase
	for _, e := range evs {
		if len(out) == 0 || out[len(out)-1] != e.Phase {
			out = append(out, e.Phase)
		}
	}
	return out
}

// settle waits for stragglers (the ground's client may hand events over out
// of order) and returns seen plus them, in seq order.
func (b *bench) settle(seen []mqttapi.Event) []mqttapi.Event {
	time.Sleep(100 * time.Millisecond)
	seen = append(slices.Clone(seen), drain(b.events)...)
	slices.SortStableFunc(seen, func(a, b mqttapi.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	return seen
}

func drain(c chan mqttapi.Event) []mqttapi.Event {
	var out []mqttapi.Event
	for {
		select {
		case e := <-c:
			out = append(out, e)
		default:
			return out
		}
	}
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}
