package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/inflight-ota/inflight/agent/journal"
	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/mqttapi"
)

// coldSwap is the update on the ground (or with no controller at all): stop
// v1, start v2 cold, watch it for the probation window, commit — or start
// v1's image cold again.
func (a *Agent) coldSwap(ctx context.Context, r *run) error {
	u := a.update()
	if u.V1 != nil {
		st, err := a.status(ctx, u.V1.Name)
		if err != nil {
			return fail(ReasonV1, "agent: active controller %s: %w", u.V1.Name, err)
		}
		if st.Armed || st.Airborne {
			return fail(ReasonArmed, "agent: %s armed (mode %s) since the ground swap was chosen", u.V1.Name, st.Mode)
		}
	}
	name := a.v2Name(u.Serial, u.Attempt)
	// From the moment v1 is stopped a failure is a rollback, not an abort.
	if err := a.enter(ctx, mqttapi.PhaseSwitching, mqttapi.Event{}, func(u *journal.Update) {
		u.Switched = true
		u.V2 = &journal.Instance{Name: name, Image: u.Image, Serial: u.Serial}
	}); err != nil {
		return err
	}
	r.setCancel(nil)
	ctx = context.WithoutCancel(ctx) // a cancel no longer interrupts: a rollback request does
	if u.V1 != nil {
		id := u.V1.ID
		if id == "" {
			id = u.V1.Name
		}
		a.dropClient(u.V1.Name)
		dctx, cancel := context.WithTimeout(ctx, a.cfg.Timeouts.Stop+5*time.Second)
		err := a.rt.Stop(dctx, id, a.cfg.Timeouts.Stop)
		cancel()
		if err != nil && !errors.Is(err, runtime.ErrNotFound) {
			a.rollbackCold(ctx, r, ReasonV1, fmt.Errorf("agent: stop %s: %w", u.V1.Name, err))
			return nil
		}
	}
	ctl, _, err := a.startController(ctx, a.spec(name, u.Image.ID, runtime.RoleCold, u.Serial))
	if ctl.ID != "" {
		a.mu.Lock()
		a.j.Update.V2.ID = ctl.ID
		a.saveLocked()
		a.mu.Unlock()
	}
	if err != nil {
		a.rollbackCold(ctx, r, reasonOf(err), err)
		return nil
	}
	if err := a.enter(ctx, mqttapi.PhaseProbation, mqttapi.Event{}, nil); err != nil {
		a.log.Error("journal", "err", err)
	}
	a.coldProbation(ctx, r)
	return nil
}

// coldProbation watches a cold-started v2 until the probation window
// (counted from entering probation, also across an agent restart) is over.
func (a *Agent) coldProbation(ctx context.Context, r *run) {
	u := a.update()
	if u.Phase != mqttapi.PhaseProbation {
		// Interrupted while switching: v2 either answers or is replaced.
		if _, err := a.status(ctx, u.V2.Name); err != nil {
			a.rollbackCold(ctx, r, ReasonV2Failed, fmt.Errorf("agent: %s after a restart while switching: %w", u.V2.Name, err))
			return
		}
		if err := a.enter(ctx, mqttapi.PhaseProbation, mqttapi.Event{}, nil); err != nil {
			a.log.Error("journal", "err", err)
		}
		u = a.update()
	}
	end := u.Changed.Add(a.probation(r.m))
	t := time.NewTicker(a.o.PollInterval)
	defer t.Stop()
	misses := 0
	for {
		for _, q := range r.take() {
			if q.Kind == mqttapi.KindRollback {
				a.rollbackCold(ctx, r, ReasonRollback, fmt.Errorf("rollback requested: %s", q.Reason))
				return
			}
			a.emit(ctx, mqttapi.Event{Serial: u.Serial, Kind: q.Kind, Version: u.Version, Phase: mqttapi.PhaseProbation, Reason: ReasonTooLate, Error: "v1 is stopped: send a rollback request"})
		}
		if st, err := a.status(ctx, u.V2.Name); err != nil || st.Failsafe != "" {
			misses++
			if misses >= 3 {
				if err == nil {
					err = fmt.Errorf("failsafe %s", st.Failsafe)
				}
				a.rollbackCold(ctx, r, ReasonV2Failed, fmt.Errorf("agent: %s in probation: %w", u.V2.Name, err))
				return
			}
		} else {
			misses = 0
		}
		if !a.clock.Now().Before(end) {
			a.commit(ctx, r)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rollbackCold undoes a cold swap: remove v2, start v1's image cold again
// under v1's name.
func (a *Agent) rollbackCold(ctx context.Context, r *run, reason string, err error) {
	a.mark(mqttapi.PhaseRollingBack, reason)
	u := a.update()
	if u.V2 != nil {
		a.removeInstance(ctx, u.V2)
	}
	var restarted *journal.Instance
	if u.V1 != nil {
		a.removeInstance(ctx, u.V1)
		ctl, _, serr := a.startController(ctx, a.spec(u.V1.Name, u.V1.Image.ID, runtime.RoleCold, u.V1.Serial))
		if serr != nil {
			a.fail(ctx, r, ReasonStart, fmt.Errorf("rollback after %v: restarting %s: %w", err, u.V1.Name, serr))
			return
		}
		in := *u.V1
		in.ID, in.Since = ctl.ID, a.clock.Now().UTC()
		restarted = &in
	}
	a.finish(ctx, mqttapi.PhaseRolledBack, mqttapi.ResultRolledBack, reason, err, func(j *journal.Journal, u *journal.Update) {
		j.Active = restarted
	})
}
