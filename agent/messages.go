package agent

import (
	"context"
	"errors"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// handle verifies one incoming message and acts on it. Whatever fails
// verification is reported in a rejection event and changes nothing.
func (a *Agent) handle(ctx context.Context, m mqttc.Message) {
	a.log.Debug("message", "topic", m.Topic, "bytes", len(m.Payload), "retained", m.Retain)
	switch {
	case m.Topic == a.topics.Requests:
		a.handleRequest(ctx, m)
	case m.Topic == a.topics.Desired || a.fleets[m.Topic] != "":
		if len(m.Payload) == 0 {
			return // a cleared retained message
		}
		a.handleDesired(ctx, m)
	}
}

func (a *Agent) expect(last uint64) mqttapi.Expect {
	return mqttapi.Expect{Drone: a.cfg.Drone, Fleets: a.cfg.Fleets, LastSerial: last, Arch: a.o.Platform.String()}
}

func (a *Agent) reject(ctx context.Context, topic string, err error) {
	a.log.Warn("rejected", "topic", topic, "reason", mqttapi.Reason(err), "err", err)
	a.emit(ctx, mqttapi.RejectionEvent(a.cfg.Drone, 0, topic, err, a.clock.Now())) // emit numbers it
}

func (a *Agent) handleDesired(ctx context.Context, m mqttc.Message) {
	a.mu.Lock()
	last := a.j.LastSerial
	busy := a.cur != nil || a.j.Update != nil
	if u := a.j.Update; u != nil && u.Serial > last {
		last = u.Serial
	}
	a.mu.Unlock()
	man, err := mqttapi.Verify(m.Payload, a.kr, a.clock.Now(), a.expect(last))
	if errors.Is(err, mqttapi.ErrAlreadyApplied) {
		a.log.Debug("desired state already applied", "topic", m.Topic, "serial", last)
		return
	}
	if err != nil {
		a.reject(ctx, m.Topic, err)
		return
	}
	if busy {
		// Apply the newest after the current update ends.
		a.mu.Lock()
		a.pending = &m
		a.mu.Unlock()
		a.log.Info("update queued behind the current one", "serial", man.Serial)
		return
	}
	a.begin(ctx, man, m.Payload, m.Topic)
}

// startPending applies a desired manifest that arrived during an update.
func (a *Agent) startPending(ctx context.Context) {
	a.mu.Lock()
	p := a.pending
	a.pending = nil
	busy := a.cur != nil
	a.mu.Unlock()
	if p == nil {
		return
	}
	if busy {
		a.mu.Lock()
		a.pending = p
		a.mu.Unlock()
		return
	}
	a.handleDesired(ctx, *p)
}

func (a *Agent) handleRequest(ctx context.Context, m mqttc.Message) {
	a.mu.Lock()
	last := a.j.LastRequestSerial
	a.mu.Unlock()
	req, err := mqttapi.VerifyRequest(m.Payload, a.kr, a.clock.Now(), a.expect(last))
	if errors.Is(err, mqttapi.ErrAlreadyApplied) {
		return
	}
	if err != nil {
		a.reject(ctx, m.Topic, err)
		return
	}
	a.mu.Lock()
	a.j.LastRequestSerial = req.Serial
	a.saveLocked()
	r := a.cur
	u := a.j.Update
	var serial uint64
	var phase mqttapi.Phase
	if u != nil {
		serial, phase = u.Serial, u.Phase
	}
	a.mu.Unlock()
	ev := mqttapi.Event{Serial: req.Serial, Kind: req.Kind, Phase: phase, Reason: req.Reason}
	switch {
	case r == nil:
		ev.Phase, ev.Reason, ev.Error = mqttapi.PhaseIdle, ReasonNoUpdate, "no update in progress; push a manifest of the previous version to go back"
	case req.UpdateSerial != 0 && req.UpdateSerial != serial:
		ev.Reason, ev.Error = ReasonOtherUpdate, "the update in progress is another one"
	default:
		a.emit(ctx, ev)
		r.request(*req)
		a.publishReported(ctx)
		return
	}
	a.emit(ctx, ev)
	a.publishReported(ctx)
}
