package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/inflight-ota/inflight/agent"
	"github.com/inflight-ota/inflight/ctlsock"
)

// pilot flies the drone through the control socket of whichever controller
// holds the PWM authority, as an operator's ground link would.
type pilot struct {
	d *run
}

// flying returns the name, client and status of the controller that holds
// the authority now.
func (p pilot) flying(ctx context.Context) (string, *ctlsock.Client, *ctlsock.Status, error) {
	cs, err := p.d.rt.List(ctx, map[string]string{agent.LabelDrone: p.d.drone})
	if err != nil {
		return "", nil, nil, err
	}
	var lastErr error = errNoController
	for _, c := range cs {
		if !c.Running() {
			continue
		}
		cl := p.d.client(c.Name)
		st, err := cl.Status(ctx)
		if err != nil {
			lastErr = err
			continue
		}
		if st.HoldsAuthority() {
			return c.Name, cl, st, nil
		}
	}
	return "", nil, nil, lastErr
}

var errNoController = errors.New("no controller holds the authority")

// waitFlying waits until a controller answers and holds the authority.
func (p pilot) waitFlying(ctx context.Context, within time.Duration) (string, *ctlsock.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		name, _, st, err := p.flying(ctx)
		if err == nil {
			return name, st, nil
		}
		last = err
		if g := p.d.ground; g != nil {
			if e := g.agentFailed(); e != "" {
				return "", nil, fmt.Errorf("%w: the agent could not start v1: %s", ErrDemo, e)
			}
		}
		select {
		case <-ctx.Done():
			return "", nil, fmt.Errorf("%w: no controller answered within %v: %v", ErrDemo, within, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rawStatus returns a controller's status as the JSON object it sent.
func (p pilot) rawStatus(ctx context.Context, name string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := p.d.client(name).Call(ctx, ctlsock.CmdStatus, nil, &m)
	return m, err
}

// command sends cmd to the flying controller, retrying refusals that pass
// by themselves (the gyro calibrates over the first still second) until
// within ends.
func (p pilot) command(ctx context.Context, cmd string, args any, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		_, cl, _, err := p.flying(ctx)
		if err == nil {
			err = cl.Call(ctx, cmd, args, nil)
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s: %v", ErrDemo, cmd, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitFor polls the flying controller's status until ok says so.
func (p pilot) waitFor(ctx context.Context, what string, within time.Duration, ok func(*ctlsock.Status) bool) (*ctlsock.Status, error) {
	deadline := time.Now().Add(within)
	var last *ctlsock.Status
	var lastErr error
	for {
		if p.d.crashed() {
			return last, fmt.Errorf("%w: the drone crashed while waiting for %s", ErrDemo, what)
		}
		_, _, st, err := p.flying(ctx)
		if err == nil {
			last = st
			if ok(st) {
				return st, nil
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return last, fmt.Errorf("%w: %s: not within %v (mode %s, alt %.2f m, reason %q)", ErrDemo, what, within, last.Mode, last.AltM, last.Reason)
			}
			return nil, fmt.Errorf("%w: %s: not within %v: %v", ErrDemo, what, within, lastErr)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// takeoff arms, climbs to alt and waits for a steady hover there.
func (p pilot) takeoff(ctx context.Context, alt float64) error {
	if err := p.command(ctx, "takeoff", map[string]any{"alt": alt}, 15*time.Second); err != nil {
		return err
	}
	var steadySince time.Time
	_, err := p.waitFor(ctx, "a steady hover at the target altitude", 30*time.Second, func(st *ctlsock.Status) bool {
		if st.Mode != "hover" || math.Abs(st.AltM-alt) > 0.15 || math.Abs(st.VZMS) > 0.15 {
			steadySince = time.Time{}
			return false
		}
		if steadySince.IsZero() {
			steadySince = time.Now()
		}
		return time.Since(steadySince) >= 500*time.Millisecond
	})
	return err
}

// land lands and waits until the drone rests disarmed on the ground.
func (p pilot) land(ctx context.Context) error {
	if err := p.command(ctx, "land", nil, 5*time.Second); err != nil {
		return err
	}
	_, err := p.waitFor(ctx, "touchdown", 40*time.Second, func(st *ctlsock.Status) bool {
		return st.Mode == "disarmed" && !st.Airborne
	})
	return err
}
