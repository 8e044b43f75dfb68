package cli

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
	"github.com/inflight-ota/inflight/transfer"
)

// fakeDrone stands in for the agent (being written elsewhere): it speaks
// the wire format of mqttapi as the agent will — verifies desired state and
// requests, publishes events, reported state and status, and receives MQTT
// transfers with transfer.Receiver — but flies nothing.
type fakeDrone struct {
	t      testing.TB
	id     string
	fleets []string
	kr     *mqttapi.Keyring
	c      *mqttc.Client
	d      mqttapi.DroneTopics
	spool  string

	mu       sync.Mutex
	seq      uint64
	rep      mqttapi.Reported
	prev     *mqttapi.Running
	failNext string // reason: the next update rolls back
	received []string
	wg       sync.WaitGroup
}

func startFakeDrone(t testing.TB, broker, id string, fleets []string, kr *mqttapi.Keyring) *fakeDrone {
	t.Helper()
	d, _ := mqttapi.Topics{}.Drone(id)
	f := &fakeDrone{t: t, id: id, fleets: fleets, kr: kr, d: d, spool: t.TempDir()}
	now := time.Now().UTC()
	f.rep = mqttapi.Reported{Drone: id, Fleets: fleets, AgentVersion: "fake-0.1", Runtime: "fake", Arch: "linux/amd64", Online: true,
		Active:    &mqttapi.Running{Version: "1.0.0", Image: "reg/flightctl@sha256:" + hex64('1'), Since: now},
		StartedAt: now, UpdatedAt: now}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mqttc.Connect(ctx, mqttc.Options{
		Broker: broker, ClientID: "fake-" + id, Logger: slog.New(slog.DiscardHandler),
		Will: &mqttc.Message{Topic: d.Status, Payload: mqttapi.OfflineWill(), QoS: 1, Retain: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	t.Cleanup(func() { f.wg.Wait(); c.Close(0) })
	st, _ := mqttapi.Status{Online: true, AgentVersion: "fake-0.1", At: now}.Marshal()
	f.pub(d.Status, st, true)
	f.report(nil)
	filters := []string{d.Desired}
	for _, fl := range fleets {
		tp, _ := mqttapi.Topics{}.FleetDesired(fl)
		filters = append(filters, tp)
	}
	for _, fl := range filters {
		if err := c.Subscribe(ctx, fl, 1, f.onDesired); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Subscribe(ctx, d.Requests, 1, f.onRequest); err != nil {
		t.Fatal(err)
	}
	return f
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

func (f *fakeDrone) pub(topic string, payload []byte, retain bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.c.Publish(ctx, mqttc.Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain}); err != nil {
		f.t.Logf("fake drone: publish %s: %v", topic, err)
	}
}

// report publishes the reported state after edit changes it.
func (f *fakeDrone) report(edit func(*mqttapi.Reported)) {
	f.mu.Lock()
	if edit != nil {
		edit(&f.rep)
	}
	f.rep.UpdatedAt = time.Now().UTC()
	raw, err := f.rep.Marshal()
	f.mu.Unlock()
	if err != nil {
		f.t.Error(err)
		return
	}
	f.pub(f.d.Reported, raw, true)
}

func (f *fakeDrone) event(ev mqttapi.Event) {
	f.mu.Lock()
	f.seq++
	ev.Seq, ev.Drone = f.seq, f.id
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	f.mu.Unlock()
	raw, err := ev.Marshal()
	if err != nil {
		f.t.Error(err)
		return
	}
	f.pub(f.d.Events, raw, false)
}

func (f *fakeDrone) onDesired(m mqttc.Message) {
	if len(m.Payload) == 0 {
		return
	}
	f.mu.Lock()
	exp := mqttapi.Expect{Drone: f.id, Fleets: f.fleets, LastSerial: f.rep.LastSerial, Arch: f.rep.Arch}
	f.mu.Unlock()
	man, err := mqttapi.Verify(m.Payload, f.kr, time.Now(), exp)
	if errors.Is(err, mqttapi.ErrAlreadyApplied) {
		return
	}
	if err != nil {
		f.event(mqttapi.RejectionEvent(f.id, 0, m.Topic, err, time.Now()))
		return
	}
	f.mu.Lock()
	f.received = append(f.received, man.Version)
	f.rep.LastSerial = man.Serial // claimed at once: never applied twice
	f.mu.Unlock()
	f.wg.Add(1)
	go func() { defer f.wg.Done(); f.update(man) }()
}

func (f *fakeDrone) update(man *mqttapi.Manifest) {
	start := time.Now()
	phase := func(p, prev mqttapi.Phase, figs *mqttapi.Figures) {
		f.event(mqttapi.Event{Serial: man.Serial, Kind: mqttapi.KindUpdate, Version: man.Version, Phase: p, Prev: prev,
			ElapsedMS: float64(time.Since(start).Microseconds()) / 1000, Figures: figs})
		f.report(func(r *mqttapi.Reported) {
			r.Update = &mqttapi.UpdateState{Serial: man.Serial, Version: man.Version, Phase: p, Started: start, Changed: time.Now().UTC()}
		})
	}
	phase(mqttapi.PhaseReceived, "", nil)
	phase(mqttapi.PhaseVerified, mqttapi.PhaseReceived, nil)
	phase(mqttapi.PhaseFetching, mqttapi.PhaseVerified, nil)
	if man.Image.Transfer == mqttapi.TransferMQTT {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err := transfer.NewReceiver(transfer.ReceiverOptions{Conn: f.c, Drone: f.d, Archive: *man.Image.Archive, Dir: f.spool})
		if err == nil {
			_, err = r.Run(ctx)
		}
		cancel()
		if err != nil {
			f.end(man, start, mqttapi.PhaseAborted, mqttapi.ResultAborted, "fetch", err.Error(), nil)
			return
		}
		r.Remove(context.Background())
	}
	phase(mqttapi.PhaseFetched, mqttapi.PhaseFetching, &mqttapi.Figures{PullBytes: 1 << 20, PullTotal: 1 << 20})
	for i, p := range []mqttapi.Phase{mqttapi.PhaseStarting, mqttapi.PhaseHello, mqttapi.PhaseSync, mqttapi.PhaseShadow, mqttapi.PhaseSwitching, mqttapi.PhaseProbation} {
		phase(p, Phases(i), nil)
		time.Sleep(5 * time.Millisecond)
	}
	f.mu.Lock()
	reason := f.failNext
	f.failNext = ""
	f.mu.Unlock()
	figs := &mqttapi.Figures{SyncMS: 12.5, ShadowTicks: 100, Divergence: 0.002, SwitchTick: 4242, ControlGapMS: 2.5, ControlPeriodMS: 2.5,
		MaxAttDevDeg: 0.4, MaxAltDevM: 0.03, PhaseMS: map[string]float64{"fetching": 10, "sync": 12.5, "shadow": 400, "probation": 30}}
	if reason != "" {
		phase(mqttapi.PhaseRollingBack, mqttapi.PhaseProbation, nil)
		f.end(man, start, mqttapi.PhaseRolledBack, mqttapi.ResultRolledBack, reason, "v2 left the safety envelope", figs)
		return
	}
	f.end(man, start, mqttapi.PhaseCommitted, mqttapi.ResultCommitted, "", "", figs)
}

// Phases returns the phase before the i-th of starting..probation, for
// Prev.
func Phases(i int) mqttapi.Phase {
	return []mqttapi.Phase{mqttapi.PhaseFetched, mqttapi.PhaseStarting, mqttapi.PhaseHello, mqttapi.PhaseSync, mqttapi.PhaseShadow, mqttapi.PhaseSwitching}[i]
}

func (f *fakeDrone) end(man *mqttapi.Manifest, start time.Time, p mqttapi.Phase, result, reason, errText string, figs *mqttapi.Figures) {
	now := time.Now().UTC()
	f.event(mqttapi.Event{Serial: man.Serial, Kind: mqttapi.KindUpdate, Version: man.Version, Phase: p, Result: result, Reason: reason, Error: errText,
		ElapsedMS: float64(time.Since(start).Microseconds()) / 1000, Figures: figs})
	f.report(func(r *mqttapi.Reported) {
		r.Update = nil
		r.LastResult = &mqttapi.Result{Serial: man.Serial, Version: man.Version, Result: result, Reason: reason, Error: errText, At: now, Figures: figs}
		if result == mqttapi.ResultCommitted {
			f.prev = r.Active
			r.Active = &mqttapi.Running{Version: man.Version, Image: man.Image.Ref, Since: now, Serial: man.Serial}
		}
	})
}

func (f *fakeDrone) onRequest(m mqttc.Message) {
	f.mu.Lock()
	exp := mqttapi.Expect{Drone: f.id, LastSerial: f.rep.LastRequestSerial}
	f.mu.Unlock()
	req, err := mqttapi.VerifyRequest(m.Payload, f.kr, time.Now(), exp)
	if errors.Is(err, mqttapi.ErrAlreadyApplied) {
		return
	}
	if err != nil {
		f.event(mqttapi.RejectionEvent(f.id, 0, m.Topic, err, time.Now()))
		return
	}
	f.report(func(r *mqttapi.Reported) { r.LastRequestSerial = req.Serial })
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		switch req.Kind {
		case mqttapi.KindRollback:
			f.mu.Lock()
			prev := f.prev
			f.mu.Unlock()
			if prev == nil {
				f.event(mqttapi.Event{Serial: req.Serial, Kind: req.Kind, Phase: mqttapi.PhaseFailed, Result: mqttapi.ResultFailed, Reason: "no_previous"})
				return
			}
			f.event(mqttapi.Event{Serial: req.Serial, Kind: req.Kind, Phase: mqttapi.PhaseRollingBack})
			f.event(mqttapi.Event{Serial: req.Serial, Kind: req.Kind, Version: prev.Version, Phase: mqttapi.PhaseRolledBack, Result: mqttapi.ResultRolledBack,
				Figures: &mqttapi.Figures{ControlGapMS: 2.5, ControlPeriodMS: 2.5}})
			f.report(func(r *mqttapi.Reported) { f.prev, r.Active = r.Active, prev })
		case mqttapi.KindCancel:
			f.event(mqttapi.Event{Serial: req.Serial, Kind: req.Kind, Phase: mqttapi.PhaseAborted, Result: mqttapi.ResultAborted, Reason: "cancelled"})
		}
	}()
}
