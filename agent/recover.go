package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/inflight-ota/inflight/agent/journal"
	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/mqttapi"
)

// KindRecovery is the event kind of what the agent did at start-up.
const KindRecovery = "recovery"

// recover reconciles the journal with the controllers the runtime lists,
// and resumes, finishes or undoes the update in progress (docs/agent.md,
// "Crash recovery").
func (a *Agent) recover(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Check)
	ctls, err := a.rt.List(lctx, map[string]string{LabelDrone: a.cfg.Drone})
	cancel()
	if err != nil {
		return fmt.Errorf("agent: list controllers: %w", err)
	}
	byName := map[string]runtime.Controller{}
	for _, c := range ctls {
		byName[c.Name] = c
	}
	a.mu.Lock()
	u := a.j.Update
	a.mu.Unlock()
	if u != nil {
		return a.recoverUpdate(ctx, byName)
	}
	return a.recoverIdle(ctx, byName)
}

func (a *Agent) recovered(ctx context.Context, phase mqttapi.Phase, serial uint64, what string) {
	a.log.Info("recovered", "phase", phase, "what", what)
	a.emit(ctx, mqttapi.Event{Kind: KindRecovery, Serial: serial, Phase: phase, Reason: ReasonRestart, Error: what})
}

func (a *Agent) recoverUpdate(ctx context.Context, ctls map[string]runtime.Controller) error {
	u := a.update()
	var m *mqttapi.Manifest
	if len(u.Envelope) > 0 {
		// Decoded, not re-verified: it was verified when it arrived, and
		// its expiry must not strand an update past its switch.
		if payload, _, err := a.kr.Open(u.Envelope); err == nil {
			m, _ = mqttapi.DecodeManifest(payload)
		}
	}
	refresh := func(in *journal.Instance) {
		if in != nil {
			if c, ok := ctls[in.Name]; ok {
				in.ID = c.ID
			}
		}
	}
	a.mu.Lock()
	refresh(a.j.Update.V1)
	refresh(a.j.Update.V2)
	a.mu.Unlock()
	u = a.update()

	if u.Phase.Terminal() || u.Phase == mqttapi.PhaseRollingBack || u.Switched {
		a.recovered(ctx, u.Phase, u.Serial, fmt.Sprintf("resuming update %d in phase %s (path %s)", u.Serial, u.Phase, u.Path))
		a.launch(ctx, m)
		return nil
	}
	// Before the switch. If the handoff was started, the controllers may
	// have switched since the journal was written: ask them.
	if u.HandoffStarted && u.V2 != nil {
		p, side, err := a.progress(ctx, u)
		if err == nil && p.Switched() {
			a.mu.Lock()
			a.j.Update.Switched = true
			a.saveLocked()
			a.mu.Unlock()
			a.recovered(ctx, u.Phase, u.Serial, fmt.Sprintf("update %d: %s reports the handoff in %s: following it", u.Serial, side, p.Phase))
			a.launch(ctx, m)
			return nil
		}
		if err == nil && !p.Terminal() {
			a.handoffAbort(ctx, u, "agent restarted before the switch")
		}
	}
	// Abort: clean v2, v1 untouched; then try again while attempts remain.
	if u.V2 != nil {
		a.removeInstance(ctx, u.V2)
	}
	if m == nil || u.Attempt >= a.cfg.Policy.MaxAttempts {
		a.recovered(ctx, mqttapi.PhaseAborted, u.Serial, fmt.Sprintf("update %d interrupted in %s (attempt %d of %d): aborted, v1 untouched", u.Serial, u.Phase, u.Attempt, a.cfg.Policy.MaxAttempts))
		r := &run{m: m, done: make(chan struct{})}
		a.abort(ctx, r, ReasonRestart, fmt.Errorf("agent restarted in phase %s", u.Phase))
		return nil
	}
	a.mu.Lock()
	nu := a.j.Update
	nu.Attempt++
	nu.V2, nu.HandoffStarted, nu.Path = nil, false, ""
	nu.Phase, nu.Changed = mqttapi.PhaseVerified, a.clock.Now().UTC()
	err := a.saveLocked()
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.recovered(ctx, mqttapi.PhaseVerified, u.Serial, fmt.Sprintf("update %d interrupted in %s before the switch: v2 cleaned, v1 untouched, starting attempt %d", u.Serial, u.Phase, u.Attempt+1))
	a.launch(ctx, m)
	return nil
}

// recoverIdle adopts the active controller, cleans up strays, and starts
// the configured image cold when nothing runs.
func (a *Agent) recoverIdle(ctx context.Context, ctls map[string]runtime.Controller) error {
	a.mu.Lock()
	var active *journal.Instance
	if a.j.Active != nil {
		c := *a.j.Active
		active = &c
	}
	a.mu.Unlock()
	var adopted *journal.Instance
	if active != nil {
		if c, ok := ctls[active.Name]; ok && c.Running() {
			active.ID = c.ID
			adopted = active
		}
	}
	if adopted == nil {
		// The journal is gone or stale: adopt whichever running
		// controller holds the authority.
		for _, c := range ctls {
			if !c.Running() {
				continue
			}
			if st, err := a.status(ctx, c.Name); err == nil && st.HoldsAuthority() {
				img := journal.Image{ID: c.Image, Version: c.Version, Ref: c.Image}
				if active != nil && active.Image.ID == c.Image {
					img = active.Image
				}
				adopted = &journal.Instance{Name: c.Name, ID: c.ID, Image: img, Since: c.StartedAt}
				break
			}
		}
	}
	var removed []string
	for name, c := range ctls {
		if adopted != nil && name == adopted.Name {
			continue
		}
		if c.Running() && adopted == nil {
			continue // not ours to judge while nothing else flies
		}
		a.removeInstance(ctx, &journal.Instance{Name: name, ID: c.ID})
		removed = append(removed, name)
	}
	if adopted != nil {
		a.mu.Lock()
		a.j.Active = adopted
		a.saveLocked()
		a.mu.Unlock()
		what := "adopted " + adopted.Name
		if len(removed) > 0 {
			what += "; removed " + strings.Join(removed, ", ")
		}
		a.recovered(ctx, mqttapi.PhaseIdle, 0, what)
		a.publishReported(ctx)
		return nil
	}
	for _, c := range ctls {
		if c.Running() {
			return fmt.Errorf("agent: controller %s runs but does not answer as the authority holder; not starting another", c.Name)
		}
	}
	a.mu.Lock()
	if a.ground != nil {
		active = a.ground.prev // a cold update that failed may have cleared the journal's
	}
	a.mu.Unlock()
	return a.firstStart(ctx, active)
}

// retryable says whether a failed start-up may succeed when tried again:
// not for an image of the wrong platform or a spec the config makes invalid.
func retryable(err error) bool {
	return !errors.Is(err, runtime.ErrWrongPlatform) && !errors.Is(err, runtime.ErrIncompatible) && !errors.Is(err, runtime.ErrInvalidSpec)
}

// firstStart starts a controller cold: the configured image, or the image
// of the journal's active controller (after a reboot).
func (a *Agent) firstStart(ctx context.Context, prev *journal.Instance) error {
	img := journal.Image{Ref: a.cfg.Controller.Image}
	name := a.cfg.Runtime.NamePrefix + "-s0"
	var serial uint64
	if prev != nil && prev.Image.ID != "" {
		img, name, serial = prev.Image, prev.Name, prev.Serial
	}
	a.mu.Lock()
	try := a.try
	a.mu.Unlock()
	attempt := ""
	if try.n > 1 {
		attempt = fmt.Sprintf("attempt %d: ", try.n)
	}
	// Each failure is an event saying when the next attempt comes; what
	// was started is removed, so that nothing half-started blocks it.
	failed := func(reason string, err error) error {
		err = fmt.Errorf("agent: first start: %w", err)
		next := "not retried: waiting for a desired manifest"
		if retryable(err) {
			next = fmt.Sprintf("next attempt in %v", try.next)
		}
		a.mu.Lock()
		a.ground = &grounded{prev: prev}
		a.mu.Unlock()
		a.emit(ctx, mqttapi.Event{Kind: KindRecovery, Phase: mqttapi.PhaseFailed, Result: mqttapi.ResultFailed, Reason: reason,
			Error: fmt.Sprintf("%s%v; %s", attempt, err, next)})
		return err
	}
	a.emit(ctx, mqttapi.Event{Kind: KindRecovery, Phase: mqttapi.PhaseStarting, Version: img.Version, Reason: "first_start", Error: attempt + "no controller runs: starting " + img.Ref + " cold"})
	dctx, cancel := a.deadline(ctx, a.cfg.Timeouts.Fetch)
	info, err := a.rt.Inspect(dctx, firstNonEmpty(img.ID, img.Ref))
	if errors.Is(err, runtime.ErrNotFound) && strings.Contains(img.Ref, "@sha256:") {
		info, err = a.rt.Pull(dctx, img.Ref, nil)
	}
	cancel()
	if err != nil {
		return failed(ReasonFetch, fmt.Errorf("image %s: %w", img.Ref, err))
	}
	if err := runtime.CheckImage(info, a.o.Platform, 0); err != nil {
		return failed(ReasonWrongArch, err)
	}
	img.ID, img.Version = info.ID, info.Version()
	spec := a.spec(name, info.ID, runtime.RoleCold, serial)
	ctl, _, err := a.startController(ctx, spec)
	if err != nil {
		if ctl.ID != "" {
			a.removeInstance(ctx, &journal.Instance{Name: name, ID: ctl.ID})
		}
		return failed(ReasonStart, err)
	}
	in := &journal.Instance{Name: name, ID: ctl.ID, Image: img, Serial: serial, Since: a.clock.Now().UTC()}
	a.mu.Lock()
	a.j.Active = in
	a.ground = nil
	err = a.saveLocked()
	a.mu.Unlock()
	what := attempt + "started " + name + " cold"
	if spec.RealTime && ctl.RealTime == runtime.RealTimeNoRlimits {
		what += " (realtime not granted: the engine may not raise rtprio/memlock; CAP_SYS_NICE only)"
	}
	a.emit(ctx, mqttapi.Event{Kind: KindRecovery, Phase: mqttapi.PhaseCommitted, Version: img.Version, Result: mqttapi.ResultCommitted, Reason: "first_start", Error: what})
	a.publishReported(ctx)
	return err
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
