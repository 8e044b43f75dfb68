package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/agent/journal"
	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/mqttapi"
)

// PhaseChecking is the agent's phase between fetched and starting: the
// image's platform, version and handoff labels are checked.
const PhaseChecking mqttapi.Phase = "checking"

// Update paths (journal.Update.Path).
const (
	PathHandoff    = "handoff"     // in the air: v2 standby, handoff, probation
	PathGroundSwap = "ground_swap" // disarmed on the ground: stop v1, start v2 cold
	PathCold       = "cold"        // no controller ran: start v2 cold
)

// Reasons the agent reports (besides mqttapi.Reason codes).
const (
	ReasonCancelled    = "cancelled"
	ReasonRollback     = "rollback_requested"
	ReasonTimeout      = "timeout"
	ReasonFetch        = "fetch_failed"
	ReasonNoTransfer   = "transfer_unavailable"
	ReasonWrongArch    = "wrong_arch"
	ReasonIncompatible = "incompatible"
	ReasonVersion      = "version_mismatch"
	ReasonStart        = "start_failed"
	ReasonV1           = "v1_unreachable"
	ReasonPolicy       = "policy"
	ReasonRefused      = "handoff_refused"
	ReasonHandoff      = "handoff_failed"
	ReasonRestart      = "agent_restart"
	ReasonJournal      = "journal_failed"
	ReasonArmed        = "armed"
	ReasonV2Failed     = "v2_failed"
	ReasonNoAuthority  = "no_authority"
	ReasonTooLate      = "too_late"
	ReasonNoUpdate     = "no_update"
	ReasonOtherUpdate  = "other_update"
)

var errPhaseTimeout = errors.New("phase timed out")

// failure is why an update step failed, with the reason code to report.
type failure struct {
	reason string
	err    error
}

func (f *failure) Error() string { return f.reason + ": " + f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func fail(reason string, format string, a ...any) error {
	return &failure{reason: reason, err: fmt.Errorf(format, a...)}
}

func reasonOf(err error) string {
	var f *failure
	if errors.As(err, &f) {
		return f.reason
	}
	if errors.Is(err, errPhaseTimeout) {
		return ReasonTimeout
	}
	return "error"
}

// run is the update goroutine's handle.
type run struct {
	m    *mqttapi.Manifest
	done chan struct{}

	mu        sync.Mutex
	cancelPre context.CancelCauseFunc
	reqs      []mqttapi.Request
}

var errCancelRequested = errors.New("cancel requested")

// request queues a verified cancel or rollback request for the update
// goroutine and interrupts pre-switch work (a pull, a start, a wait).
func (r *run) request(q mqttapi.Request) {
	r.mu.Lock()
	r.reqs = append(r.reqs, q)
	c := r.cancelPre
	r.mu.Unlock()
	if c != nil {
		c(errCancelRequested)
	}
}

func (r *run) take() []mqttapi.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.reqs
	r.reqs = nil
	return q
}

func (r *run) setCancel(c context.CancelCauseFunc) {
	r.mu.Lock()
	r.cancelPre = c
	r.mu.Unlock()
}

// interrupted reports a cancel request (or the agent stopping) between
// steps.
func interrupted(ctx context.Context) error {
	if ctx.Err() == nil {
		return nil
	}
	return cause(ctx, ReasonCancelled, ctx.Err())
}

// deadline returns a context cancelled with errPhaseTimeout once the
// injected clock passes now+d.
func (a *Agent) deadline(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	at := a.clock.Now().Add(d)
	go func() {
		t := time.NewTicker(a.o.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !a.clock.Now().Before(at) {
					cancel(errPhaseTimeout)
					return
				}
			}
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// cause turns an error under a deadline or cancel context into the step's
// failure.
func cause(ctx context.Context, reason string, err error) error {
	switch c := context.Cause(ctx); {
	case errors.Is(c, errPhaseTimeout):
		return &failure{reason: ReasonTimeout, err: fmt.Errorf("%s: %w", reason, errPhaseTimeout)}
	case errors.Is(c, errCancelRequested):
		return &failure{reason: ReasonCancelled, err: errCancelRequested}
	}
	return &failure{reason: reason, err: err}
}

// update returns a copy of the journaled update.
func (a *Agent) update() journal.Update {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.j.Update == nil {
		return journal.Update{}
	}
	return *a.j.Clone().Update
}

// enter moves the update to phase p (journal first, then the event and the
// reported state), applying mutate to the journaled update.
func (a *Agent) enter(ctx context.Context, p mqttapi.Phase, ev mqttapi.Event, mutate func(u *journal.Update)) error {
	a.mu.Lock()
	u := a.j.Update
	if u == nil {
		a.mu.Unlock()
		return fmt.Errorf("agent: no update in progress")
	}
	now := a.clock.Now().UTC()
	prev := u.Phase
	if u.Figures == nil {
		u.Figures = &mqttapi.Figures{}
	}
	if prev != p {
		if u.Figures.PhaseMS == nil {
			u.Figures.PhaseMS = map[string]float64{}
		}
		u.Figures.PhaseMS[string(prev)] += ms(now.Sub(u.Changed))
		u.Changed = now
	}
	u.Phase = p
	if mutate != nil {
		mutate(u)
	}
	err := a.saveLocked()
	ev.Serial, ev.Kind, ev.Version, ev.Phase, ev.Prev, ev.At = u.Serial, u.Kind, u.Version, p, prev, now
	ev.ElapsedMS = ms(now.Sub(u.Started))
	if ev.Figures == nil && (p == mqttapi.PhaseProbation || p.Terminal()) {
		f := *u.Figures
		ev.Figures = &f
	}
	a.mu.Unlock()
	a.emit(ctx, ev)
	a.publishReported(ctx)
	if err != nil {
		return &failure{reason: ReasonJournal, err: err}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// begin starts applying a verified manifest.
func (a *Agent) begin(ctx context.Context, m *mqttapi.Manifest, raw []byte, topic string) {
	now := a.clock.Now().UTC()
	a.mu.Lock()
	var v1 *journal.Instance
	if a.j.Active != nil && a.ground == nil { // grounded: nothing runs, v2 starts cold
		c := *a.j.Active
		v1 = &c
	}
	a.j.Update = &journal.Update{
		Serial: m.Serial, Kind: mqttapi.KindUpdate, Envelope: raw, Version: m.Version,
		Image: journal.Image{Ref: m.Image.Ref, Version: m.Version}, Phase: mqttapi.PhaseReceived,
		Started: now, Changed: now, Attempt: 1, V1: v1,
	}
	a.mu.Unlock()
	a.emit(ctx, mqttapi.Event{Serial: m.Serial, Kind: mqttapi.KindUpdate, Version: m.Version, Phase: mqttapi.PhaseReceived, At: now, Topic: topic})
	if err := a.enter(ctx, mqttapi.PhaseVerified, mqttapi.Event{}, nil); err != nil {
		// Without a journal the update cannot be made crash-safe: drop it
		// unapplied, so the retained manifest brings it back.
		a.log.Error("update not started: journal", "err", err)
		a.mu.Lock()
		a.j.Update = nil
		a.mu.Unlock()
		return
	}
	a.launch(ctx, m)
}

// launch runs the update goroutine for the journaled update.
func (a *Agent) launch(ctx context.Context, m *mqttapi.Manifest) {
	r := &run{m: m, done: make(chan struct{})}
	a.mu.Lock()
	a.cur = r
	a.mu.Unlock()
	go func() {
		defer close(r.done)
		a.drive(ctx, r)
		a.mu.Lock()
		a.cur = nil
		a.mu.Unlock()
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}()
}

// drive continues the journaled update from its phase.
func (a *Agent) drive(ctx context.Context, r *run) {
	u := a.update()
	switch {
	case u.Phase == mqttapi.PhaseCommitted:
		a.commit(ctx, r)
	case (u.Phase == mqttapi.PhaseRolledBack || u.Phase == mqttapi.PhaseRollingBack) && u.Path != PathHandoff:
		a.rollbackCold(ctx, r, ReasonRestart, nil)
	case u.Phase == mqttapi.PhaseRolledBack || u.Phase == mqttapi.PhaseRollingBack:
		a.rollback(ctx, r, "", nil)
	case u.Phase == mqttapi.PhaseAborted || u.Phase == mqttapi.PhaseFailed:
		a.abort(ctx, r, "", nil)
	case u.Switched && u.Path == PathHandoff:
		a.follow(ctx, r)
	case u.Switched:
		a.coldProbation(ctx, r)
	default:
		a.preSwitch(ctx, r)
	}
}

func (a *Agent) preSwitch(ctx context.Context, r *run) {
	pctx, cancel := context.WithCancelCause(ctx)
	r.setCancel(cancel)
	defer func() { r.setCancel(nil); cancel(nil) }()
	for _, q := range r.take() { // a request that came before the goroutine ran
		cancel(errCancelRequested)
		_ = q
	}
	err := a.preSwitchSteps(pctx, r)
	if err == nil || ctx.Err() != nil {
		return // done, or the agent stops: the journal keeps the update
	}
	a.abort(ctx, r, reasonOf(err), err)
}

func (a *Agent) preSwitchSteps(ctx context.Context, r *run) error {
	info, err := a.fetch(ctx, r)
	if err != nil {
		return err
	}
	if err := interrupted(ctx); err != nil {
		return err
	}
	if err := a.check(ctx, r, info); err != nil {
		return err
	}
	if err := interrupted(ctx); err != nil {
		return err
	}
	path, err := a.choosePath(ctx, r)
	if err != nil {
		return err
	}
	if path != PathHandoff {
		return a.coldSwap(ctx, r)
	}
	if err := a.startStandby(ctx, r); err != nil {
		return err
	}
	if err := interrupted(ctx); err != nil {
		return err
	}
	if err := a.waitPolicy(ctx, r); err != nil {
		return err
	}
	if err := interrupted(ctx); err != nil {
		return err
	}
	return a.startHandoff(ctx, r)
}

func (a *Agent) fetch(ctx context.Context, r *run) (runtime.ImageInfo, error) {
	m := r.m
	if err := a.enter(ctx, mqttapi.PhaseFetching, mqttapi.Event{}, nil); err != nil {
		return runtime.ImageInfo{}, err
	}
	dctx, cancel := a.deadline(ctx, a.cfg.Timeouts.Fetch)
	defer cancel()
	var lastEv time.Time
	var pmu sync.Mutex
	var got, total int64
	report := func(cur, tot int64, force bool) {
		pmu.Lock()
		got, total = cur, tot
		now := time.Now()
		send := force || now.Sub(lastEv) >= time.Second
		if send {
			lastEv = now
		}
		pmu.Unlock()
		if send {
			a.emit(ctx, mqttapi.Event{Serial: m.Serial, Kind: mqttapi.KindUpdate, Version: m.Version, Phase: mqttapi.PhaseFetching, Figures: &mqttapi.Figures{PullBytes: cur, PullTotal: tot}})
		}
	}
	progress := func(p runtime.Progress) { report(p.Current, p.Total, false) }
	var info runtime.ImageInfo
	var err error
	_, digest, _ := mqttapi.ParseImageRef(m.Image.Ref)
	if m.Image.Transfer == mqttapi.TransferMQTT {
		if a.o.Archives == nil {
			return info, fail(ReasonNoTransfer, "agent: image %s is sent over MQTT and this agent has no chunk receiver", m.Image.Ref)
		}
		rc, ferr := a.o.Archives.Fetch(dctx, m, func(done, tot int64) { report(done, tot, false) })
		if ferr != nil {
			return info, cause(dctx, ReasonFetch, fmt.Errorf("agent: transfer: %w", ferr))
		}
		info, err = a.rt.Load(dctx, rc, progress)
		rc.Close()
		if err == nil && info.ID != digest {
			return info, fail(ReasonFetch, "agent: loaded image %s, the manifest pins %s", info.ID, digest)
		}
	} else {
		info, err = a.rt.Pull(dctx, m.Image.Ref, progress)
	}
	if err != nil {
		return info, cause(dctx, ReasonFetch, fmt.Errorf("agent: fetch %s: %w", m.Image.Ref, err))
	}
	pmu.Lock()
	g, t := got, total
	pmu.Unlock()
	return info, a.enter(ctx, mqttapi.PhaseFetched, mqttapi.Event{Figures: &mqttapi.Figures{PullBytes: g, PullTotal: t}}, func(u *journal.Update) {
		u.Image.ID = info.ID
		u.Figures.PullBytes, u.Figures.PullTotal = g, t
	})
}

func (a *Agent) check(ctx context.Context, r *run, info runtime.ImageInfo) error {
	m := r.m
	if err := a.enter(ctx, PhaseChecking, mqttapi.Event{}, nil); err != nil {
		return err
	}
	dctx, cancel := a.deadline(ctx, a.cfg.Timeouts.Check)
	defer cancel()
	if fresh, err := a.rt.Inspect(dctx, info.ID); err != nil {
		return cause(dctx, ReasonFetch, fmt.Errorf("agent: inspect %s: %w", info.ID, err))
	} else {
		info = fresh
	}
	proto := a.cfg.Runtime.HandoffProtocol
	if m.Handoff != nil && m.Handoff.Protocol > 0 {
		proto = m.Handoff.Protocol
	}
	if err := runtime.CheckImage(info, a.o.Platform, proto); err != nil {
		if errors.Is(err, runtime.ErrWrongPlatform) {
			return &failure{reason: ReasonWrongArch, err: err}
		}
		return &failure{reason: ReasonIncompatible, err: err}
	}
	if m.Handoff != nil && m.Handoff.StateSchema > 0 && info.Labels[runtime.LabelStateSchema] != strconv.Itoa(m.Handoff.StateSchema) {
		return fail(ReasonIncompatible, "agent: image state schema %q, the manifest says %d", info.Labels[runtime.LabelStateSchema], m.Handoff.StateSchema)
	}
	if v := info.Version(); v != m.Version {
		return fail(ReasonVersion, "agent: image says version %q, the manifest %q", v, m.Version)
	}
	return nil
}

// choosePath decides between a handoff in the air, a plain swap on the
// ground, and a cold start when nothing runs.
func (a *Agent) choosePath(ctx context.Context, r *run) (string, error) {
	u := a.update()
	path := PathHandoff
	if u.V1 == nil {
		path = PathCold
	} else {
		st, err := a.status(ctx, u.V1.Name)
		switch {
		case err != nil:
			return "", fail(ReasonV1, "agent: active controller %s: %w", u.V1.Name, err)
		case !st.Armed && !st.Airborne && a.cfg.Policy.GroundSwapAllowed() && r.m.Options.GroundSwapAllowed():
			path = PathGroundSwap
		}
	}
	a.mu.Lock()
	a.j.Update.Path = path
	err := a.saveLocked()
	a.mu.Unlock()
	if err != nil {
		return "", &failure{reason: ReasonJournal, err: err}
	}
	return path, nil
}

func (a *Agent) status(ctx context.Context, name string) (*ctlsock.Status, error) {
	cctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Call)
	defer cancel()
	return a.client(name).Status(cctx)
}

func (a *Agent) v2Name(serial uint64, attempt int) string {
	return fmt.Sprintf("%s-s%d-%d", a.cfg.Runtime.NamePrefix, serial, attempt)
}

// spec is how every controller is started: same run directory, devices and
// limits; the runtime adds the hardening.
func (a *Agent) spec(name, image string, role runtime.Role, serial uint64) runtime.Spec {
	c := a.cfg.Controller
	runDir := a.cfg.Paths.RunDir
	if a.rt.Name() == "docker" {
		runDir = runtime.RunDirInContainer
	}
	args := make([]string, len(c.Args))
	for i, s := range c.Args {
		switch s {
		case "{role}":
			s = string(role)
		case "{name}":
			s = name
		case "{run_dir}":
			s = runDir
		}
		args[i] = s
	}
	sp := runtime.Spec{
		Name: name, Image: image, Role: role, Args: args, Env: c.Env, RunDir: a.cfg.Paths.RunDir,
		Devices: c.Devices, Labels: map[string]string{LabelDrone: a.cfg.Drone},
		MemoryBytes: c.MemoryMB << 20, User: c.User, GroupAdd: c.GroupAdd, RealTime: c.RealTime,
	}
	if serial > 0 {
		sp.UpdateID = strconv.FormatUint(serial, 10)
	}
	return sp
}

// startController starts a controller and waits until its control socket
// answers, within the start timeout.
func (a *Agent) startController(ctx context.Context, spec runtime.Spec) (runtime.Controller, *ctlsock.Status, error) {
	dctx, cancel := a.deadline(ctx, a.cfg.Timeouts.Start)
	defer cancel()
	a.dropClient(spec.Name)
	ctl, err := a.rt.Start(dctx, spec)
	if errors.Is(err, runtime.ErrExists) {
		// A leftover of an earlier attempt under the same name.
		if rerr := a.removeByName(dctx, spec.Name); rerr == nil {
			ctl, err = a.rt.Start(dctx, spec)
		}
	}
	if err != nil {
		return ctl, nil, cause(dctx, ReasonStart, fmt.Errorf("agent: start %s: %w", spec.Name, err))
	}
	t := time.NewTicker(a.o.PollInterval)
	defer t.Stop()
	for {
		st, err := a.status(dctx, spec.Name)
		if err == nil {
			return ctl, st, nil
		}
		select {
		case <-dctx.Done():
			return ctl, nil, cause(dctx, ReasonStart, fmt.Errorf("agent: %s never answered on its control socket: %w", spec.Name, err))
		case <-t.C:
		}
	}
}

func (a *Agent) startStandby(ctx context.Context, r *run) error {
	u := a.update()
	name := a.v2Name(u.Serial, u.Attempt)
	// Journal the name before starting, so a crash right after Start still
	// knows which controller to clean up.
	if err := a.enter(ctx, mqttapi.PhaseStarting, mqttapi.Event{}, func(u *journal.Update) {
		u.V2 = &journal.Instance{Name: name, Image: u.Image, Serial: u.Serial}
	}); err != nil {
		return err
	}
	ctl, st, err := a.startController(ctx, a.spec(name, u.Image.ID, runtime.RoleStandby, u.Serial))
	if ctl.ID != "" {
		a.mu.Lock()
		a.j.Update.V2.ID = ctl.ID
		a.saveLocked()
		a.mu.Unlock()
	}
	if err != nil {
		return err
	}
	if st.HoldsAuthority() {
		return fail(ReasonStart, "agent: standby %s reports role %q with the authority", name, st.Role)
	}
	return nil
}

// allowed applies the switch policy to v1's status.
func (a *Agent) allowed(st *ctlsock.Status, m *mqttapi.Manifest) (bool, string) {
	phase := st.FlightPhase()
	ok := false
	for _, p := range a.cfg.Policy.AllowedPhases {
		if p == phase {
			ok = true
		}
	}
	if !ok {
		return false, fmt.Sprintf("flight phase %q not in %q", phase, a.cfg.Policy.AllowedPhases)
	}
	floor := a.cfg.Policy.BatteryFloorPct
	if m.Options.BatteryFloorPct > floor {
		floor = m.Options.BatteryFloorPct
	}
	if floor > 0 {
		switch {
		case st.BatteryPct == nil && a.cfg.Policy.RequireBattery:
			return false, "battery charge not reported"
		case st.BatteryPct != nil && *st.BatteryPct < floor:
			return false, fmt.Sprintf("battery %.0f%% below the floor %.0f%%", *st.BatteryPct, floor)
		}
	}
	return true, ""
}

func (a *Agent) waitPolicy(ctx context.Context, r *run) error {
	u := a.update()
	dctx, cancel := a.deadline(ctx, a.cfg.Timeouts.Wait)
	defer cancel()
	t := time.NewTicker(a.o.PollInterval)
	defer t.Stop()
	last := ""
	for {
		st, err := a.status(dctx, u.V1.Name)
		if err == nil {
			ok, why := a.allowed(st, r.m)
			if ok {
				return nil
			}
			if why != last {
				last = why
				if err := a.enter(ctx, mqttapi.PhaseWaiting, mqttapi.Event{Reason: ReasonPolicy, Error: why}, nil); err != nil {
					return err
				}
			}
		}
		select {
		case <-dctx.Done():
			if last == "" && err != nil {
				last = err.Error()
			}
			return cause(dctx, ReasonPolicy, fmt.Errorf("agent: no switch allowed: %s", last))
		case <-t.C:
		}
	}
}

func (a *Agent) startHandoff(ctx context.Context, r *run) error {
	u := a.update()
	req := ctlsock.HandoffStart{
		To: ctlsock.HandoffSocketName(u.V2.Name), Peer: u.V2.Name,
		ProbationMS:    a.probation(r.m).Milliseconds(),
		SwitchWindowMS: a.cfg.Timeouts.Switch.Milliseconds(),
		AllowedPhases:  a.cfg.Policy.AllowedPhases,
		UpdateID:       strconv.FormatUint(u.Serial, 10),
	}
	cctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Call)
	p, err := a.client(u.V1.Name).HandoffStart(cctx, req)
	cancel()
	if err != nil {
		return fail(ReasonRefused, "agent: handoff_start on %s: %w", u.V1.Name, err)
	}
	if err := a.enter(ctx, mqttapi.PhaseHello, mqttapi.Event{Figures: figures(p)}, func(u *journal.Update) { u.HandoffStarted = true }); err != nil {
		return err
	}
	// From here on the controllers run the handoff; the agent follows it
	// (and is no longer interrupted by a cancel: it asks v1 to abort).
	r.setCancel(nil)
	a.follow(ctx, r)
	return nil
}

func (a *Agent) probation(m *mqttapi.Manifest) time.Duration {
	if m != nil && m.Options.Probation > 0 {
		return time.Duration(m.Options.Probation)
	}
	return a.cfg.Policy.Probation
}

// figures converts a controller's handoff report into event figures.
func figures(p *ctlsock.Progress) *mqttapi.Figures {
	if p == nil {
		return nil
	}
	return &mqttapi.Figures{
		SyncMS: ms(p.Durations.Sync), ShadowTicks: p.TicksShadowed, Divergence: p.MaxDivergence,
		SwitchTick: p.SwitchTick, ControlGapMS: p.ControlGapMS, ControlPeriodMS: p.ControlPeriodMS,
		MissedTicks: p.MissedTicks, MaxAttDevDeg: p.MaxAttDevDeg, MaxAltDevM: p.MaxAltDevM,
		PhaseMS: map[string]float64{
			"handoff_hello": ms(p.Durations.Hello), "handoff_sync": ms(p.Durations.Sync), "handoff_shadow": ms(p.Durations.Shadow),
			"handoff_switch": ms(p.Durations.Switch), "handoff_probation": ms(p.Durations.Probation),
		},
	}
}

// mergeFigures folds the handoff figures into the journaled ones.
func mergeFigures(u *journal.Update, f *mqttapi.Figures) {
	if f == nil {
		return
	}
	if u.Figures == nil {
		u.Figures = &mqttapi.Figures{}
	}
	g := u.Figures
	g.SyncMS, g.ShadowTicks, g.Divergence, g.SwitchTick = f.SyncMS, f.ShadowTicks, f.Divergence, f.SwitchTick
	g.ControlGapMS, g.ControlPeriodMS, g.MissedTicks, g.MaxAttDevDeg, g.MaxAltDevM = f.ControlGapMS, f.ControlPeriodMS, f.MissedTicks, f.MaxAttDevDeg, f.MaxAltDevM
	if g.PhaseMS == nil {
		g.PhaseMS = map[string]float64{}
	}
	for k, v := range f.PhaseMS {
		g.PhaseMS[k] = v
	}
}

// handoffPhase maps a controller's handoff phase to the update phase.
func handoffPhase(p string) mqttapi.Phase {
	switch p {
	case ctlsock.PhaseIdle, ctlsock.PhaseHello:
		return mqttapi.PhaseHello
	case ctlsock.PhaseSync:
		return mqttapi.PhaseSync
	case ctlsock.PhaseShadow:
		return mqttapi.PhaseShadow
	case ctlsock.PhaseSwitch:
		return mqttapi.PhaseSwitching
	case ctlsock.PhaseProbation, ctlsock.PhaseActive:
		return mqttapi.PhaseProbation
	case ctlsock.PhaseDone, ctlsock.PhaseCommitted:
		return mqttapi.PhaseCommitted
	case ctlsock.PhaseAborted:
		return mqttapi.PhaseAborted
	case ctlsock.PhaseRolledBack:
		return mqttapi.PhaseRolledBack
	}
	return ""
}

// progress asks v1 how the handoff stands, and v2 when v1 does not answer
// (v1 exits after handing over).
func (a *Agent) progress(ctx context.Context, u journal.Update) (*ctlsock.Progress, string, error) {
	cctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Call)
	defer cancel()
	p, err1 := a.client(u.V1.Name).HandoffProgress(cctx)
	if err1 == nil {
		return p, "v1", nil
	}
	cctx2, cancel2 := context.WithTimeout(ctx, a.cfg.Timeouts.Call)
	defer cancel2()
	p, err2 := a.client(u.V2.Name).HandoffProgress(cctx2)
	if err2 == nil {
		return p, "v2", nil
	}
	return nil, "", fmt.Errorf("v1: %v; v2: %v", err1, err2)
}

// follow polls the handoff the controllers run until it ends, forwarding
// its phases and figures, acting on requests, and bounding every phase.
func (a *Agent) follow(ctx context.Context, r *run) {
	t := time.NewTicker(a.o.PollInterval)
	defer t.Stop()
	u := a.update()
	phaseSince := a.clock.Now()
	cur := u.Phase
	aborting := ""        // the reason v1 was asked to abort with
	var abortAt time.Time // when
	var lastP *ctlsock.Progress
	for {
		u = a.update()
		for _, q := range r.take() {
			switch {
			case q.Kind == mqttapi.KindCancel && u.Switched:
				a.emit(ctx, mqttapi.Event{Serial: u.Serial, Kind: q.Kind, Version: u.Version, Phase: u.Phase, Reason: ReasonTooLate, Error: "the switch happened: send a rollback request"})
			case aborting == "":
				aborting = ReasonCancelled
				if q.Kind == mqttapi.KindRollback {
					aborting = ReasonRollback
				}
				abortAt = a.clock.Now()
				a.handoffAbort(ctx, u, string(aborting)+": "+q.Reason)
			}
		}
		p, side, err := a.progress(ctx, u)
		if err == nil {
			lastP = p
			ph := handoffPhase(p.Phase)
			seen := a.clock.Now()
			if ph == mqttapi.PhaseProbation && !u.Switched {
				if err := a.enter(ctx, mqttapi.PhaseProbation, mqttapi.Event{Figures: figures(p)}, func(u *journal.Update) {
					u.Switched = true
					mergeFigures(u, figures(p))
				}); err != nil {
					a.log.Error("journal", "err", err)
				}
				cur, phaseSince = mqttapi.PhaseProbation, seen
			}
			switch ph {
			case mqttapi.PhaseCommitted:
				a.mu.Lock()
				mergeFigures(a.j.Update, figures(p))
				a.j.Update.Switched = true
				a.mu.Unlock()
				a.commit(ctx, r)
				return
			case mqttapi.PhaseAborted:
				if u.Switched {
					// The controllers say aborted after a switch: v1 flies
					// again, as after a rollback.
					a.rollback(ctx, r, ReasonHandoff, fmt.Errorf("handoff ended %s (%s): %s", p.Phase, p.Code, p.Detail))
					return
				}
				reason := ReasonHandoff
				if aborting != "" {
					reason = aborting
				}
				a.abort(ctx, r, reason, fmt.Errorf("%s reports the handoff %s (%s): %s", side, p.Phase, p.Code, p.Detail))
				return
			case mqttapi.PhaseRolledBack:
				reason := ReasonHandoff
				if aborting != "" {
					reason = aborting
				}
				a.mu.Lock()
				mergeFigures(a.j.Update, figures(p))
				a.mu.Unlock()
				a.rollback(ctx, r, reason, fmt.Errorf("%s reports the handoff %s (%s): %s", side, p.Phase, p.Code, p.Detail))
				return
			case "":
			default:
				if ph != cur {
					if err := a.enter(ctx, ph, mqttapi.Event{Figures: figures(p)}, func(u *journal.Update) { mergeFigures(u, figures(p)) }); err != nil {
						a.log.Error("journal", "err", err)
					}
					cur, phaseSince = ph, seen
				}
			}
		}
		// Bounds.
		now := a.clock.Now()
		var limit time.Duration
		switch cur {
		case mqttapi.PhaseSwitching:
			limit = a.cfg.Timeouts.Switch
		case mqttapi.PhaseProbation:
			limit = a.probation(r.m) + a.cfg.Timeouts.Probation
		default:
			limit = a.cfg.Timeouts.Sync
		}
		switch {
		case aborting == "" && now.Sub(phaseSince) >= limit:
			aborting, abortAt = ReasonTimeout, now
			a.log.Warn("handoff phase timed out", "phase", cur, "limit", limit)
			a.handoffAbort(ctx, u, fmt.Sprintf("agent: phase %s exceeded %s", cur, limit))
		case aborting != "" && now.Sub(abortAt) >= a.cfg.Timeouts.Switch:
			// The controllers did not end the handoff when asked: decide
			// by who holds the authority.
			a.settleByAuthority(ctx, r, aborting, fmt.Errorf("handoff not ended %s after an abort (%s); last progress %v, err %v", a.cfg.Timeouts.Switch, aborting, phaseOf(lastP), err))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func phaseOf(p *ctlsock.Progress) string {
	if p == nil {
		return "none"
	}
	return p.Phase
}

func (a *Agent) handoffAbort(ctx context.Context, u journal.Update, why string) {
	cctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Call)
	defer cancel()
	if _, err := a.client(u.V1.Name).HandoffAbort(cctx, why); err != nil {
		a.log.Warn("handoff_abort", "controller", u.V1.Name, "err", err)
	}
}

// settleByAuthority ends an update whose handoff state is unknown: the
// controller holding the PWM authority is the one that flies.
func (a *Agent) settleByAuthority(ctx context.Context, r *run, reason string, err error) {
	u := a.update()
	holds := func(in *journal.Instance) bool {
		if in == nil {
			return false
		}
		st, err := a.status(ctx, in.Name)
		return err == nil && st.HoldsAuthority()
	}
	switch {
	case holds(u.V2) && !holds(u.V1):
		a.mu.Lock()
		a.j.Update.Switched = true
		a.mu.Unlock()
		a.commit(ctx, r)
	case holds(u.V1):
		if u.Switched {
			a.rollback(ctx, r, reason, err)
		} else {
			a.abort(ctx, r, reason, err)
		}
	default:
		a.fail(ctx, r, ReasonNoAuthority, fmt.Errorf("no controller reports the authority: %w", err))
	}
}

// finish ends the update: journal first, then events.
func (a *Agent) finish(ctx context.Context, p mqttapi.Phase, result, reason string, err error, mutate func(j *journal.Journal, u *journal.Update)) {
	now := a.clock.Now().UTC()
	a.mu.Lock()
	u := a.j.Update
	if u == nil {
		a.mu.Unlock()
		return
	}
	if u.Figures == nil {
		u.Figures = &mqttapi.Figures{}
	}
	if u.Figures.PhaseMS == nil {
		u.Figures.PhaseMS = map[string]float64{}
	}
	if u.Phase != p {
		u.Figures.PhaseMS[string(u.Phase)] += ms(now.Sub(u.Changed))
	}
	u.Figures.PhaseMS["total"] = ms(now.Sub(u.Started))
	res := mqttapi.Result{Serial: u.Serial, Version: u.Version, Result: result, Reason: reason, At: now, Figures: u.Figures}
	if err != nil {
		res.Error = err.Error()
	}
	if mutate != nil {
		mutate(a.j, u)
	}
	if u.Kind == mqttapi.KindUpdate && u.Serial > a.j.LastSerial {
		a.j.LastSerial = u.Serial
	}
	if result == mqttapi.ResultCommitted { // v2 flies: no first start to retry
		a.needStart, a.ground = false, nil
	}
	a.j.AddResult(res)
	prev := u.Phase
	a.j.Update = nil
	a.saveLocked()
	a.mu.Unlock()
	a.emit(ctx, mqttapi.Event{Serial: res.Serial, Kind: u.Kind, Version: u.Version, Phase: p, Prev: prev, At: now,
		ElapsedMS: ms(now.Sub(u.Started)), Figures: res.Figures, Result: result, Reason: reason, Error: res.Error})
	a.publishReported(ctx)
}

// mark journals the phase of a finishing step, so that a crash in the
// middle of it finishes the same way.
func (a *Agent) mark(p mqttapi.Phase, reason string) {
	a.mu.Lock()
	if u := a.j.Update; u != nil && u.Phase != p {
		now := a.clock.Now().UTC()
		if u.Figures == nil {
			u.Figures = &mqttapi.Figures{}
		}
		if u.Figures.PhaseMS == nil {
			u.Figures.PhaseMS = map[string]float64{}
		}
		u.Figures.PhaseMS[string(u.Phase)] += ms(now.Sub(u.Changed))
		u.Phase, u.Changed = p, now
		a.saveLocked()
	}
	a.mu.Unlock()
}

// commit: v2 flies. Stop and remove v1, keep its image as the previous one,
// prune older images.
func (a *Agent) commit(ctx context.Context, r *run) {
	a.mark(mqttapi.PhaseCommitted, "")
	u := a.update()
	if u.V1 != nil {
		a.removeInstance(ctx, u.V1)
	}
	now := a.clock.Now().UTC()
	a.finish(ctx, mqttapi.PhaseCommitted, mqttapi.ResultCommitted, "", nil, func(j *journal.Journal, u *journal.Update) {
		if u.V1 != nil {
			img := u.V1.Image
			j.Previous = &img
		}
		v2 := *u.V2
		v2.Since = now
		j.Active = &v2
	})
	a.prune(ctx)
}

// rollback: v1 flies again (it retook the authority). Remove v2.
func (a *Agent) rollback(ctx context.Context, r *run, reason string, err error) {
	a.mark(mqttapi.PhaseRollingBack, reason)
	u := a.update()
	if u.V2 != nil {
		a.removeInstance(ctx, u.V2)
	}
	if reason == "" {
		reason = ReasonRestart
	}
	a.finish(ctx, mqttapi.PhaseRolledBack, mqttapi.ResultRolledBack, reason, err, nil)
}

// abort: the update ended before the switch; v1 was never touched. Remove
// v2 if it was started.
func (a *Agent) abort(ctx context.Context, r *run, reason string, err error) {
	a.mark(mqttapi.PhaseAborted, reason)
	u := a.update()
	if u.V2 != nil {
		a.removeInstance(ctx, u.V2)
	}
	if reason == "" {
		reason = ReasonRestart
	}
	a.finish(ctx, mqttapi.PhaseAborted, mqttapi.ResultAborted, reason, err, nil)
}

// fail: the agent cannot tell which controller flies. It leaves both
// running and reports.
func (a *Agent) fail(ctx context.Context, r *run, reason string, err error) {
	a.finish(ctx, mqttapi.PhaseFailed, mqttapi.ResultFailed, reason, err, nil)
}

// removeInstance stops and removes a controller, bounded by the stop
// timeout; a controller already gone is not an error.
func (a *Agent) removeInstance(ctx context.Context, in *journal.Instance) {
	a.dropClient(in.Name)
	dctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Stop+5*time.Second)
	defer cancel()
	id := in.ID
	if id == "" {
		id = in.Name
	}
	if err := a.rt.Stop(dctx, id, a.cfg.Timeouts.Stop); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		a.log.Warn("stop controller", "name", in.Name, "err", err)
	}
	if err := a.rt.Remove(dctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		a.log.Warn("remove controller", "name", in.Name, "err", err)
	}
}

func (a *Agent) removeByName(ctx context.Context, name string) error {
	a.dropClient(name)
	if err := a.rt.Remove(ctx, name); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		return err
	}
	return nil
}

// prune removes controller images other than the active and the previous
// one.
func (a *Agent) prune(ctx context.Context) {
	a.mu.Lock()
	var keep []string
	for _, im := range []*journal.Image{activeImage(a.j), a.j.Previous} {
		if im != nil && im.ID != "" {
			keep = append(keep, im.ID)
		}
	}
	a.mu.Unlock()
	if len(keep) == 0 {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Check)
	defer cancel()
	ids, err := a.rt.Prune(dctx, runtime.PruneOptions{Keep: keep, Labels: a.cfg.Runtime.PruneLabels})
	if err != nil {
		a.log.Warn("prune images", "err", err)
		return
	}
	if len(ids) > 0 {
		a.log.Info("pruned images", "ids", ids)
	}
}

func activeImage(j *journal.Journal) *journal.Image {
	if j.Active == nil {
		return nil
	}
	return &j.Active.Image
}
