package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/agent/journal"
	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/internal/buildinfo"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// LabelDrone is put on every controller the agent starts, so that List
// finds only this drone's controllers (several agents may share a Docker
// Engine on a bench).
const LabelDrone = "org.inflight.drone"

// Runtime is what the agent needs of a container runtime; runtime/docker and
// runtime/process provide it.
type Runtime interface {
	Name() string
	Pull(ctx context.Context, ref string, progress func(runtime.Progress)) (runtime.ImageInfo, error)
	Load(ctx context.Context, r io.Reader, progress func(runtime.Progress)) (runtime.ImageInfo, error)
	Inspect(ctx context.Context, ref string) (runtime.ImageInfo, error)
	Prune(ctx context.Context, opts runtime.PruneOptions) ([]string, error)
	Start(ctx context.Context, spec runtime.Spec) (runtime.Controller, error)
	List(ctx context.Context, labels map[string]string) ([]runtime.Controller, error)
	Stop(ctx context.Context, id string, timeout time.Duration) error
	Remove(ctx context.Context, id string) error
}

// Controller is what the agent asks a controller over its control socket;
// *ctlsock.Client provides it.
type Controller interface {
	Status(ctx context.Context) (*ctlsock.Status, error)
	HandoffStart(ctx context.Context, req ctlsock.HandoffStart) (*ctlsock.Progress, error)
	HandoffProgress(ctx context.Context) (*ctlsock.Progress, error)
	HandoffAbort(ctx context.Context, reason string) (*ctlsock.Progress, error)
}

var _ Controller = (*ctlsock.Client)(nil)

// Archives fetches an image archive sent in chunks over MQTT (manifest
// transfer "mqtt"). By default the agent receives it with package transfer
// over its own connection (the Messenger must then also implement
// transfer.Conn, as *mqttc.Client does).
type Archives interface {
	Fetch(ctx context.Context, m *mqttapi.Manifest, progress func(done, total int64)) (io.ReadCloser, error)
}

// Messenger publishes and subscribes; *mqttc.Client provides it.
type Messenger interface {
	Publish(ctx context.Context, m mqttc.Message) error
	Subscribe(ctx context.Context, filter string, qos byte, h func(mqttc.Message)) error
}

// Clock gives the time phase deadlines and signatures are checked against.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Options configure an Agent. Config and Runtime are required.
type Options struct {
	Config  *Config
	Runtime Runtime
	// Keyring of trusted keys; loaded from Config.Keys.Trusted when nil.
	Keyring  *mqttapi.Keyring
	Archives Archives
	Clock    Clock        // default: the real clock
	Logger   *slog.Logger // default: discard
	// Platform the images are checked against; Config.Arch, else the host.
	Platform runtime.Platform
	// PollInterval paces handoff polling and deadline checks; default 100ms.
	PollInterval time.Duration
	// Dial returns the client of a control socket; ctlsock.New by default.
	Dial func(path string) Controller
	// Messenger, when set, is used instead of connecting to Config.MQTT
	// (the caller then publishes the status and calls Agent.Reconnected).
	Messenger Messenger
	// Version of the agent in reports; buildinfo.Version by default.
	Version string
	// StartRetry is the delay before retrying a failed start-up (first
	// start or recovery), doubling up to StartRetryMax; 1s and 30s by
	// default.
	StartRetry, StartRetryMax time.Duration
}

// Agent is the update agent of one drone.
type Agent struct {
	o      Options
	cfg    *Config
	log    *slog.Logger
	clock  Clock
	rt     Runtime
	kr     *mqttapi.Keyring
	store  *journal.Store
	topics mqttapi.DroneTopics
	fleets map[string]string // desired topic → fleet

	inbox chan mqttc.Message
	wake  chan struct{}

	pubMu      sync.Mutex // orders events: seq, backlog, publish (taken before mu)
	mu         sync.Mutex
	j          *journal.Journal
	mq         Messenger
	mqttClient *mqttc.Client
	backlog    []mqttc.Message // events published before the first connect
	seq        uint64
	startedAt  time.Time
	cur        *run
	pending    *mqttc.Message // newest desired manifest waiting for the current update
	clients    map[string]Controller
	// needStart: the start-up (recovery or first start) failed and is
	// retried with backoff until it succeeds or an update commits.
	needStart bool
	// ground is set while nothing runs because the first start failed: a
	// manifest then starts v2 cold with no v1, and retries start
	// ground.prev (as firstStart's prev).
	ground *grounded
	// try is the start-up attempt under way (1 for the first) and the
	// delay before the next one should it fail, for the events.
	try struct {
		n    int
		next time.Duration
	}
}

type grounded struct{ prev *journal.Instance }

// New checks the options and returns an agent; Run starts it.
func New(o Options) (*Agent, error) {
	if o.Config == nil || o.Runtime == nil {
		return nil, fmt.Errorf("agent: Config and Runtime are required")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	cfg := o.Config
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 100 * time.Millisecond
	}
	if o.StartRetry <= 0 {
		o.StartRetry = time.Second
	}
	if o.StartRetryMax < o.StartRetry {
		o.StartRetryMax = max(30*time.Second, o.StartRetry)
	}
	if o.Version == "" {
		o.Version = buildinfo.Version
	}
	if o.Platform == (runtime.Platform{}) {
		if cfg.Arch != "" {
			o.Platform, _ = runtime.ParsePlatform(cfg.Arch)
		} else {
			o.Platform = runtime.HostPlatform()
		}
	}
	if o.Dial == nil {
		to := cfg.Timeouts.Call
		o.Dial = func(path string) Controller { return ctlsock.New(path, to) }
	}
	kr := o.Keyring
	if kr == nil {
		var err error
		if kr, err = mqttapi.LoadKeyring(cfg.Keys.Trusted); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	tp, err := mqttapi.NewTopics(cfg.MQTT.TopicRoot)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	dt, err := tp.Drone(cfg.Drone)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	fleets := map[string]string{}
	for _, f := range cfg.Fleets {
		t, err := tp.FleetDesired(f)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		fleets[t] = f
	}
	store, err := journal.NewStore(cfg.Paths.StateDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{
		o: o, cfg: cfg, log: o.Logger.With("drone", cfg.Drone), clock: o.Clock, rt: o.Runtime, kr: kr,
		store: store, topics: dt, fleets: fleets,
		inbox: make(chan mqttc.Message, 256), wake: make(chan struct{}, 1),
		clients: map[string]Controller{},
	}
	if a.o.Archives == nil {
		a.o.Archives = mqttArchives{a}
	}
	return a, nil
}

// Run runs the agent until ctx ends: it recovers from its journal and the
// running controllers, connects to the broker, and applies updates. An
// update in progress when ctx ends is left as the journal says, exactly as
// after a crash, for the next start to finish.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	a.startedAt = a.clock.Now().UTC()
	a.mu.Unlock()
	if err := a.loadJournal(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		a.mu.Lock()
		c := a.mqttClient
		a.mu.Unlock()
		if c != nil {
			a.goOffline(c)
		}
	}()

	if a.o.Messenger != nil {
		a.setMessenger(a.o.Messenger)
		if err := a.subscribe(ctx, a.o.Messenger); err != nil {
			return err
		}
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.connect(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("mqtt: giving up", "err", err)
			}
		}()
	}

	// A failed start-up is retried with backoff, each attempt reported;
	// an update (a desired manifest) takes precedence.
	retry := backoff{min: a.o.StartRetry, max: a.o.StartRetryMax}
	var retryC <-chan time.Time
	var retryT *time.Timer
	defer func() {
		if retryT != nil {
			retryT.Stop()
		}
	}()
	arm := func(d time.Duration) {
		if retryT == nil {
			retryT = time.NewTimer(d)
		} else {
			retryT.Reset(d)
		}
		retryC = retryT.C
	}
	startUp := func() {
		a.mu.Lock()
		a.try.n++
		a.try.next = retry.peek()
		a.mu.Unlock()
		err := a.recover(ctx)
		a.mu.Lock()
		if err == nil || ctx.Err() != nil || !retryable(err) {
			a.needStart, a.try.n = false, 0
			a.mu.Unlock()
			if err != nil && ctx.Err() == nil {
				a.log.Error("start-up failed, not retried: waiting for a desired manifest", "err", err)
			}
			retry.reset()
			return
		}
		a.needStart = true
		a.mu.Unlock()
		d := retry.next()
		a.log.Error("start-up failed", "err", err, "retry_in", d)
		arm(d)
	}
	startUp()
	if a.cfg.Telemetry.RateHz > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); a.relayTelemetry(ctx) }()
	}
	for {
		select {
		case <-ctx.Done():
			a.mu.Lock()
			r := a.cur
			a.mu.Unlock()
			if r != nil {
				<-r.done
			}
			return nil
		case m := <-a.inbox:
			a.handle(ctx, m)
		case <-a.wake:
			a.startPending(ctx)
		case <-retryC:
			retryC = nil
			a.mu.Lock()
			need, busy := a.needStart, a.cur != nil || a.j.Update != nil
			a.mu.Unlock()
			switch {
			case !need: // an update committed meanwhile: it flies
				retry.reset()
			case busy: // the update goes first; look again after it
				arm(retry.cur)
			default:
				startUp()
			}
		}
	}
}

func (a *Agent) loadJournal() error {
	j, err := a.store.Load()
	now := a.clock.Now()
	if errors.Is(err, journal.ErrCorrupt) {
		to, merr := a.store.MoveAside(now)
		if merr != nil {
			return fmt.Errorf("agent: %w (and moving it aside: %v)", err, merr)
		}
		a.log.Error("journal corrupt: moved aside, recovering from the running controllers", "err", err, "moved_to", to)
		j = nil
	} else if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if j == nil {
		j = &journal.Journal{V: journal.Version, Drone: a.cfg.Drone}
	}
	if j.Drone != "" && j.Drone != a.cfg.Drone {
		return fmt.Errorf("agent: journal %s belongs to drone %q, this agent is %q", a.store.Path(), j.Drone, a.cfg.Drone)
	}
	j.Drone = a.cfg.Drone
	a.mu.Lock()
	a.j = j
	a.mu.Unlock()
	return nil
}

// saveLocked writes the journal; a.mu must be held. A failed write is
// logged and returned: the caller decides whether to go on.
func (a *Agent) saveLocked() error {
	if err := a.store.Save(a.j, a.clock.Now()); err != nil {
		a.log.Error("journal write failed", "err", err)
		return err
	}
	return nil
}

// Journal returns a copy of the journal as it stands.
func (a *Agent) Journal() *journal.Journal {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.j == nil {
		return nil
	}
	return a.j.Clone()
}

func (a *Agent) connect(ctx context.Context) error {
	m := a.cfg.MQTT
	pw, err := m.password()
	if err != nil {
		return err
	}
	will := &mqttc.Message{Topic: a.topics.Status, Payload: mqttapi.OfflineWill(), QoS: 1, Retain: true}
	c, err := mqttc.Connect(ctx, mqttc.Options{
		Broker: m.Broker, ClientID: m.ClientID, Username: m.Username, Password: pw,
		CAFile: m.CAFile, CertFile: m.CertFile, KeyFile: m.KeyFile, ServerName: m.ServerName,
		Will: will, ConnectRetry: true, MaxReconnectInterval: 5 * time.Second,
		Logger:    a.log,
		OnConnect: func(c *mqttc.Client) { a.Reconnected(ctx, c) },
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.mqttClient = c
	a.mu.Unlock()
	// Subscribe before events go out directly, so that no request sent in
	// answer to an event is missed.
	if err := a.subscribe(ctx, c); err != nil {
		return err
	}
	a.setMessenger(c)
	a.Reconnected(ctx, c) // the first OnConnect ran before the messenger was set
	return nil
}

func (a *Agent) setMessenger(m Messenger) {
	a.mu.Lock()
	a.mq = m
	a.mu.Unlock()
}

func (a *Agent) subscribe(ctx context.Context, m Messenger) error {
	h := func(msg mqttc.Message) {
		msg.Payload = append([]byte(nil), msg.Payload...)
		select {
		case a.inbox <- msg:
		default:
			a.log.Error("inbox full: message dropped", "topic", msg.Topic)
		}
	}
	filters := []string{a.topics.Desired, a.topics.Requests}
	for t := range a.fleets {
		filters = append(filters, t)
	}
	for _, f := range filters {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := m.Subscribe(sctx, f, 1, h)
		cancel()
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	return nil
}

// Reconnected publishes the online status, the retained reported state and
// the events held back while no connection existed. The MQTT client calls it
// after every (re)connect.
func (a *Agent) Reconnected(ctx context.Context, m Messenger) {
	a.mu.Lock()
	if a.mq == nil {
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	st, _ := mqttapi.Status{Online: true, AgentVersion: a.o.Version, At: a.clock.Now().UTC()}.Marshal()
	a.publish(ctx, m, mqttc.Message{Topic: a.topics.Status, Payload: st, QoS: 1, Retain: true})
	a.pubMu.Lock()
	a.mu.Lock()
	backlog := a.backlog
	a.backlog = nil
	a.mu.Unlock()
	for _, e := range backlog {
		a.publish(ctx, m, e)
	}
	a.pubMu.Unlock()
	a.publishReported(ctx)
}

func (a *Agent) goOffline(c *mqttc.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, _ := mqttapi.Status{Online: false, AgentVersion: a.o.Version, At: a.clock.Now().UTC()}.Marshal()
	a.publish(ctx, c, mqttc.Message{Topic: a.topics.Status, Payload: st, QoS: 1, Retain: true})
	c.Close(250 * time.Millisecond)
}

func (a *Agent) publish(ctx context.Context, m Messenger, msg mqttc.Message) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := m.Publish(pctx, msg); err != nil {
		a.log.Warn("publish failed", "topic", msg.Topic, "err", err)
	}
}

// emit publishes an event (QoS 1), holding it back until connected. Events
// go out in the order of their seq, held-back ones first.
func (a *Agent) emit(ctx context.Context, e mqttapi.Event) {
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	a.mu.Lock()
	a.seq++
	e.Seq = a.seq
	e.Drone = a.cfg.Drone
	if e.At.IsZero() {
		e.At = a.clock.Now().UTC()
	}
	m := a.mq
	b, err := e.Marshal()
	if err != nil {
		a.mu.Unlock()
		a.log.Error("event", "err", err)
		return
	}
	msg := mqttc.Message{Topic: a.topics.Events, Payload: b, QoS: 1}
	if m == nil {
		if len(a.backlog) < 256 {
			a.backlog = append(a.backlog, msg)
		}
		a.mu.Unlock()
		return
	}
	held := a.backlog // connected, but Reconnected has not sent them yet
	a.backlog = nil
	a.mu.Unlock()
	for _, h := range held {
		a.publish(ctx, m, h)
	}
	a.log.Info("event", "phase", e.Phase, "serial", e.Serial, "kind", e.Kind, "result", e.Result, "reason", e.Reason, "err", e.Error)
	a.publish(ctx, m, msg)
}

func (a *Agent) reported() mqttapi.Reported {
	a.mu.Lock()
	defer a.mu.Unlock()
	j := a.j
	r := mqttapi.Reported{
		Drone: a.cfg.Drone, Fleets: a.cfg.Fleets, AgentVersion: a.o.Version, Runtime: a.rt.Name(),
		Arch: a.o.Platform.String(), Online: true, LastSerial: j.LastSerial, LastRequestSerial: j.LastRequestSerial,
		StartedAt: a.startedAt, UpdatedAt: a.clock.Now().UTC(),
	}
	running := func(in *journal.Instance) *mqttapi.Running {
		if in == nil {
			return nil
		}
		return &mqttapi.Running{Version: in.Image.Version, Image: in.Image.Ref, Since: in.Since, Serial: in.Serial}
	}
	r.Active = running(j.Active)
	if u := j.Update; u != nil {
		r.Update = &mqttapi.UpdateState{Serial: u.Serial, Version: u.Version, Phase: u.Phase, Started: u.Started, Changed: u.Changed}
		if u.Switched && u.V2 != nil {
			r.Active, r.Standby = running(u.V2), running(u.V1)
		}
	}
	if n := len(j.History); n > 0 {
		last := j.History[n-1]
		r.LastResult = &last
	}
	return r
}

func (a *Agent) publishReported(ctx context.Context) {
	a.mu.Lock()
	m := a.mq
	a.mu.Unlock()
	if m == nil {
		return
	}
	b, err := a.reported().Marshal()
	if err != nil {
		a.log.Error("reported", "err", err)
		return
	}
	a.publish(ctx, m, mqttc.Message{Topic: a.topics.Reported, Payload: b, QoS: 1, Retain: true})
}

// client returns the (cached) control client of controller name.
func (a *Agent) client(name string) Controller {
	path := ctlsock.SocketPath(a.cfg.Paths.RunDir, name)
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.clients[path]
	if !ok {
		c = a.o.Dial(path)
		a.clients[path] = c
	}
	return c
}

func (a *Agent) dropClient(name string) {
	path := ctlsock.SocketPath(a.cfg.Paths.RunDir, name)
	a.mu.Lock()
	c := a.clients[path]
	delete(a.clients, path)
	a.mu.Unlock()
	if cl, ok := c.(io.Closer); ok {
		cl.Close()
	}
}
