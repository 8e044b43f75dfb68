package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/sim/trace"
)

// Bounds of issue 4 for a switch in the air.
const (
	ratePeriodMS = 2.5 // flightctl --rate 400
	maxGapMS     = 2 * ratePeriodMS
	maxAttDevDeg = 1.0
	maxAltDevM   = 0.05
)

// startV1 starts the agent with v1 as its first-start image and waits until
// it reports v1 active; it returns v1's controller name.
func (w *world) startV1(v1 img) string {
	w.t.Helper()
	w.cfg.Image = v1.Ref
	w.startAgent()
	w.waitEvent("first start of v1", 60*time.Second, 0, func(e mqttapi.Event) bool {
		return e.Kind == "recovery" && e.Phase.Terminal()
	})
	w.waitReported("showing v1 active", 10*time.Second, func(r *mqttapi.Reported) bool {
		return r.Active != nil && r.Active.Version == v1.Version && r.Update == nil
	})
	name := w.drone + "-s0"
	if _, err := w.status(name); err != nil {
		w.t.Fatalf("v1 %s does not answer: %v", name, err)
	}
	return name
}

// v2Name is the name the agent gives the controller of update serial.
func (w *world) v2Name(serial uint64, attempt int) string {
	return fmt.Sprintf("%s-s%d-%d", w.drone, serial, attempt)
}

// result waits for the end of update serial.
func (w *world) result(serial uint64, timeout time.Duration) mqttapi.Event {
	w.t.Helper()
	e, _ := w.waitEvent(fmt.Sprintf("end of update %d", serial), timeout, 0, func(e mqttapi.Event) bool {
		return e.Serial == serial && e.Kind == mqttapi.KindUpdate && e.Phase.Terminal()
	})
	return e
}

// phaseTimes logs, for update serial, when each phase began, from the
// publish.
func (w *world) phaseTimes(serial uint64, published time.Time) string {
	evs := w.g.eventsSnapshot()
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].At.Before(evs[j].At) })
	var b strings.Builder
	prev := ""
	for _, e := range evs {
		if e.Serial != serial || string(e.Phase) == prev || e.Kind != mqttapi.KindUpdate {
			continue
		}
		prev = string(e.Phase)
		fmt.Fprintf(&b, "  %-12s +%7.1f ms\n", e.Phase, float64(e.At.Sub(published).Microseconds())/1000)
	}
	return b.String()
}

func running(cs map[string]bool) []string {
	return slices.Sorted(maps.Keys(cs))
}

func (w *world) runningControllers() map[string]bool {
	out := map[string]bool{}
	for n, c := range w.containers() {
		if c.State == "running" {
			out[n] = true
		}
	}
	return out
}

// TestGroundSwap: on the ground, disarmed, an update is a plain swap: v1
// stopped, v2 started cold, committed after probation. Then, against the
// committed drone, every bad MQTT input is rejected with an event and
// changes nothing, and an image for another architecture is refused before
// anything runs.
func TestGroundSwap(t *testing.T) {
	w := newWorld(t)
	v1 := w.image("1.0.0", imageOpts{})
	v2 := w.image("2.0.0", v2Opts())
	v1Name := w.startV1(v1)
	st, err := w.status(v1Name)
	must(t, err)
	if st.Armed || st.Airborne || !st.HoldsAuthority() {
		t.Fatalf("v1 should sit disarmed on the ground with the authority: %+v", st)
	}

	m := w.manifest(v2)
	pub := w.push(m)
	e := w.result(m.Serial, 90*time.Second)
	if e.Result != mqttapi.ResultCommitted {
		t.Fatalf("ground swap ended %s (%s): %s", e.Result, e.Reason, e.Error)
	}
	t.Logf("ground swap to %s committed in %.0f ms; phases from the publish:\n%s", v2.Version, float64(time.Since(pub).Milliseconds()), w.phaseTimes(m.Serial, pub))
	r := w.waitReported("showing v2 active", 10*time.Second, func(r *mqttapi.Reported) bool {
		return r.Active != nil && r.Active.Version == v2.Version && r.Update == nil && r.LastSerial == m.Serial
	})
	v2Name := w.v2Name(m.Serial, 1)
	if got := running(w.runningControllers()); !slices.Equal(got, []string{v2Name}) {
		t.Fatalf("controllers running after the ground swap: %v, want only %s", got, v2Name)
	}
	if _, ok := w.containers()[v1Name]; ok {
		t.Errorf("v1's container %s was not removed", v1Name)
	}
	if !w.hasImage(v1.ID) {
		t.Errorf("v1's image %s was pruned: it is the previous version, kept for rollback", v1.ID)
	}
	if s := w.sim.Summary(); s.Crashed || s.TwoWriterEvents != 0 {
		t.Errorf("bench drone: %+v", s)
	}

	t.Run("BadInput", func(t *testing.T) {
		w.t = t
		badInput(w, m, r)
	})
	t.Run("WrongArch", func(t *testing.T) {
		w.t = t
		before := w.runningControllers()
		arm := w.image("2.1.0", imageOpts{Arch: "arm64"})
		m := w.manifest(arm)
		w.push(m)
		e := w.result(m.Serial, 60*time.Second)
		if e.Result != mqttapi.ResultAborted || e.Reason != "wrong_arch" {
			t.Fatalf("arm64 image: ended %s (%s: %s), want aborted (wrong_arch)", e.Result, e.Reason, e.Error)
		}
		t.Logf("refused: %s", e.Error)
		for _, ev := range w.g.eventsSnapshot() {
			if ev.Serial == m.Serial && (ev.Phase == mqttapi.PhaseStarting || ev.Phase == mqttapi.PhaseSwitching) {
				t.Errorf("the arm64 update reached %s", ev.Phase)
			}
		}
		if after := w.runningControllers(); !maps.Equal(before, after) {
			t.Errorf("controllers changed: %v → %v", running(before), running(after))
		}
		if n := len(w.containers()); n != 1 {
			t.Errorf("%d containers after the refused update, want 1", n)
		}
		w.waitReported("showing v2 still active", 10*time.Second, func(r *mqttapi.Reported) bool {
			return r.Active != nil && r.Active.Version == v2.Version && r.Update == nil
		})
	})
}

// badInput publishes every kind of bad message and checks each is rejected
// with its reason, and that nothing changed.
func badInput(w *world, applied *mqttapi.Manifest, before *mqttapi.Reported) {
	t := w.t
	good := func() *mqttapi.Manifest { return w.manifest(img{Ref: applied.Image.Ref, Version: applied.Version}) }
	sign := func(m *mqttapi.Manifest) []byte {
		raw, err := w.signer.SignManifest(m)
		must(t, err)
		return raw
	}
	otherKey := func(m *mqttapi.Manifest) []byte {
		w2 := *w
		priv, err := keysGenerate()
		must(t, err)
		w2.signer = priv
		raw, err := w2.signer.SignManifest(m)
		must(t, err)
		return raw
	}
	strip := func(raw []byte) []byte {
		var env map[string]any
		must(t, json.Unmarshal(raw, &env))
		delete(env, "sig")
		b, _ := json.Marshal(env)
		return b
	}
	tamper := func(raw []byte) []byte {
		var env map[string]any
		must(t, json.Unmarshal(raw, &env))
		sig := []byte(env["sig"].(string))
		if sig[3] == 'A' {
			sig[3] = 'B'
		} else {
			sig[3] = 'A'
		}
		env["sig"] = string(sig)
		b, _ := json.Marshal(env)
		return b
	}
	cases := []struct {
		name, reason string
		payload      func() []byte
		topic        string
	}{
		{"bare manifest", "", func() []byte { b, _ := good().Marshal(); return b }, ""},
		{"unsigned", "unsigned", func() []byte { return strip(sign(good())) }, ""},
		{"bad signature", "bad_signature", func() []byte { return tamper(sign(good())) }, ""},
		{"unknown key", "unknown_key", func() []byte { return otherKey(good()) }, ""},
		{"older serial", "replayed", func() []byte { m := good(); m.Serial = applied.Serial - 1; return sign(m) }, ""},
		{"expired", "expired", func() []byte {
			m := good()
			m.IssuedAt, m.ExpiresAt = time.Now().Add(-2*time.Hour).UTC(), time.Now().Add(-time.Hour).UTC()
			return sign(m)
		}, ""},
		{"another drone's", "wrong_target", func() []byte { m := good(); m.Drone = "e2e-someone-else"; return sign(m) }, ""},
		{"unparsable", "unparsable", func() []byte { return []byte(`{"v":1,"payload":`) }, ""},
		{"oversized", "oversized", func() []byte {
			return []byte(`{"v":1,"pad":"` + strings.Repeat("x", mqttapi.MaxSignedSize) + `"}`)
		}, ""},
		{"unsigned request", "", func() []byte {
			return []byte(fmt.Sprintf(`{"v":1,"kind":"rollback","drone":%q,"serial":%d}`, w.drone, time.Now().UnixMilli()))
		}, w.topics.Requests},
	}
	cts := w.runningControllers()
	for _, c := range cases {
		topic := c.topic
		if topic == "" {
			topic = w.topics.Desired
		}
		from := len(w.g.eventsSnapshot())
		w.g.publish(t, topic, c.payload(), false)
		e, _ := w.waitEvent("rejection of "+c.name, 10*time.Second, from, func(e mqttapi.Event) bool {
			return e.Phase == mqttapi.PhaseRejected || e.Serial != 0
		})
		switch {
		case e.Phase != mqttapi.PhaseRejected || e.Result != mqttapi.ResultRejected:
			t.Errorf("%s: event %s/%s (%s), want rejected", c.name, e.Phase, e.Result, e.Reason)
		case c.reason == "" && !strings.HasPrefix(e.Reason, "unsigned") && e.Reason != "unparsable":
			t.Errorf("%s: reason %q, want unsigned or unparsable", c.name, e.Reason)
		case c.reason != "" && e.Reason != c.reason:
			t.Errorf("%s: reason %q (%s), want %q", c.name, e.Reason, e.Error, c.reason)
		case e.Topic != topic:
			t.Errorf("%s: event topic %q, want %q", c.name, e.Topic, topic)
		default:
			t.Logf("%-16s → rejected, reason %s", c.name, e.Reason)
		}
	}
	// The manifest already applied, seen again (the retained desired state
	// after a reconnect), is a silent no-op.
	from := len(w.g.eventsSnapshot())
	w.push(applied)
	time.Sleep(time.Second)
	for _, e := range w.g.eventsSnapshot()[from:] {
		t.Errorf("the applied manifest seen again gave an event: %s %s (%s)", e.Phase, e.Result, e.Reason)
	}
	after := w.g.reportedSnapshot()
	if after.LastSerial != before.LastSerial || after.Active == nil || after.Active.Version != before.Active.Version ||
		after.Active.Image != before.Active.Image || after.Update != nil {
		b1, _ := json.Marshal(before)
		b2, _ := json.Marshal(after)
		t.Errorf("reported state changed:\n before %s\n after  %s", b1, b2)
	}
	if now := w.runningControllers(); !maps.Equal(now, cts) {
		t.Errorf("controllers changed: %v → %v", running(cts), running(now))
	}
}

// handoverTo finds the bench drone's handover to controller name.
func handoverTo(hs []trace.Handover, name string) (trace.Handover, bool) {
	for _, h := range hs {
		if h.To == name {
			return h, true
		}
	}
	return trace.Handover{}, false
}

// v2Opts is how the v2 image differs from v1's.
// v2 runs the quaternion state schema 2 (the image's INFLIGHT_STATE_SCHEMA,
// as images/build --env makes it): the handoff migrates v1's schema-1
// state.
func v2Opts() imageOpts {
	return imageOpts{Env: []string{"INFLIGHT_STATE_SCHEMA=2"}, Labels: map[string]string{"org.inflight.state.schema": "2"}}
}

// checkFlying fails the test unless the drone flies on, in hover, under
// exactly one running controller, the one reported active, which holds the
// authority.
func (w *world) checkFlying(version string) string {
	t := w.t
	t.Helper()
	if s := w.sim.Summary(); s.Crashed {
		t.Fatalf("the drone crashed: %s", s.CrashReason)
	}
	r := w.waitReported("settled with "+version+" active", 10*time.Second, func(r *mqttapi.Reported) bool {
		return r.Active != nil && r.Active.Version == version && r.Update == nil
	})
	var name string
	deadline := time.Now().Add(15 * time.Second)
	for {
		cs := running(w.runningControllers())
		if len(cs) == 1 {
			name = cs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controllers running: %v, want exactly one", cs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, err := w.status(name)
	if err != nil {
		t.Fatalf("the active controller %s does not answer: %v", name, err)
	}
	if st.Version != version || !st.HoldsAuthority() || !st.Airborne || st.Mode != "hover" {
		t.Fatalf("%s (reported active %s %s): version %s, role %s, mode %s, airborne %v, authority %v", name, r.Active.Version, r.Active.Image, st.Version, st.Role, st.Mode, st.Airborne, st.HoldsAuthority())
	}
	return name
}

// pushUntil pushes an update to im and waits until it reaches phase, or
// ends. An update the controllers abort before the switch, or roll back
// when a commit is awaited (on a loaded machine, e.g. no SWITCH_ACK, or no
// tick from v2, within the handoff's 8-tick bounds: v1 flies on, as
// designed), is pushed again under a new serial, as a ground
// operator would, up to three times; flying is the version that must still
// fly after such an abort.
func (w *world) pushUntil(im img, phase mqttapi.Phase, flying string) (*mqttapi.Manifest, time.Time, mqttapi.Event, int) {
	w.t.Helper()
	for attempt := 1; ; attempt++ {
		m := w.manifest(im)
		pub := w.push(m)
		e, i := w.waitEvent(fmt.Sprintf("%s of update %d", phase, m.Serial), 90*time.Second, 0, func(e mqttapi.Event) bool {
			return e.Serial == m.Serial && e.Kind == mqttapi.KindUpdate && (e.Phase == phase || e.Phase.Terminal())
		})
		retry := e.Result == mqttapi.ResultAborted ||
			(phase == mqttapi.PhaseCommitted && e.Result == mqttapi.ResultRolledBack) // v1 retook in the air
		if e.Phase == phase || !retry || attempt == 3 {
			return m, pub, e, i
		}
		w.t.Logf("update %d to %s ended %s (%s: %s); v1 flies on; pushing it again", m.Serial, im.Version, e.Result, e.Reason, e.Error)
		w.checkFlying(flying)
	}
}

// TestInAirUpdate flies v1, publishes a signed update to v2 and checks the
// handoff committed within issue 4's bounds, measured by the bench drone.
func TestInAirUpdate(t *testing.T) {
	w := newWorld(t)
	v1 := w.image("1.0.0", imageOpts{})
	v2 := w.image("2.0.0", v2Opts())
	v1Name := w.startV1(v1)
	w.takeOff(v1Name, 3*time.Second)

	m, pub, e, _ := w.pushUntil(v2, mqttapi.PhaseCommitted, v1.Version)
	done := e.At.Sub(pub)
	rss, hwm := w.agentRSS()
	if e.Result != mqttapi.ResultCommitted {
		t.Fatalf("in-air update ended %s (%s): %s", e.Result, e.Reason, e.Error)
	}
	v2Name := w.v2Name(m.Serial, 1)
	f := e.Figures
	if f == nil {
		t.Fatal("the committed event has no figures")
	}
	fb, _ := json.Marshal(f)
	t.Logf("in-air update %s → %s committed %.0f ms after the publish; phases from the publish:\n%s  figures: %s\n  agent RSS %d KiB (peak %d KiB)",
		v1.Version, v2.Version, float64(done.Microseconds())/1000, w.phaseTimes(m.Serial, pub), fb, rss, hwm)

	sum := w.sim.Summary()
	h, ok := handoverTo(sum.Handovers, v2Name)
	switch {
	case sum.Crashed:
		t.Errorf("the drone crashed: %s", sum.CrashReason)
	case !ok:
		t.Errorf("the bench drone saw no handover to %s: %+v", v2Name, sum.Handovers)
	case h.From != v1Name:
		t.Errorf("handover to %s from %s, want from %s", v2Name, h.From, v1Name)
	case h.GapMS > maxGapMS:
		t.Errorf("switch gap %.3f ms > 2 control periods (%.1f ms)", h.GapMS, maxGapMS)
	}
	if sum.TwoWriterEvents != 0 || sum.ReinitEvents != 0 {
		t.Errorf("two_writers %d, reinit %d: want 0 and 0", sum.TwoWriterEvents, sum.ReinitEvents)
	}
	if f.ControlGapMS > maxGapMS {
		t.Errorf("controllers' control gap %.3f ms > %.1f ms", f.ControlGapMS, maxGapMS)
	}
	if f.MaxAttDevDeg > maxAttDevDeg || f.MaxAltDevM > maxAltDevM {
		t.Errorf("controllers' deviations: attitude %.3f° (≤ %.1f), altitude %.4f m (≤ %.2f)", f.MaxAttDevDeg, maxAttDevDeg, f.MaxAltDevM, maxAltDevM)
	}

	if _, ok := w.containers()[v1Name]; ok {
		t.Errorf("v1's container %s is still there after the commit", v1Name)
	}
	if got := w.checkFlying(v2.Version); got != v2Name {
		t.Errorf("flying controller %s, want %s", got, v2Name)
	}
	if !w.hasImage(v1.ID) {
		t.Errorf("v1's image was pruned: it is the previous version")
	}
	// Telemetry comes from v2 now.
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.g.mu.Lock()
		tm := w.g.lastTele
		w.g.mu.Unlock()
		if tm != nil && tm.ControllerVersion == v2.Version {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("telemetry never came from %s: last %+v", v2.Version, tm)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Fly on a second past the commit, then read the bench's trace.
	time.Sleep(time.Second)
	w.simStop()
	tr, err := trace.ReadFile(w.traceFile.Name())
	must(t, err)
	att, alt := deviation(tr, h.T, 0.5, 1.5)
	t.Logf("bench drone: switch gap %.3f ms (%s → %s at t=%.3f s), true deviation against the hover before: attitude %.3f°, altitude %.4f m; two_writers %d, reinit %d, max PWM gap %.3f ms",
		h.GapMS, h.From, h.To, h.T, att, alt, sum.TwoWriterEvents, sum.ReinitEvents, sum.MaxPWMGapMS)
	if att > maxAttDevDeg || alt > maxAltDevM {
		t.Errorf("true deviation across the switch: attitude %.3f° (≤ %.1f), altitude %.4f m (≤ %.2f)", att, maxAttDevDeg, alt, maxAltDevM)
	}
}

// TestInAirFaults flies v1 and, in one flight: rolls back in the air from a
// v2 that dies after the switch; survives a SIGKILL of the agent just after
// the handoff started; survives a SIGKILL of the agent in probation.
func TestInAirFaults(t *testing.T) {
	w := newWorld(t)
	v1 := w.image("1.0.0", imageOpts{})
	v2bad := w.image("2.0.1", v2Opts())
	v2 := w.image("2.0.0", v2Opts())
	v3 := w.image("3.0.0", v2Opts())
	v1Name := w.startV1(v1)
	w.takeOff(v1Name, 2*time.Second)
	flying := v1

	t.Run("CrashAfterSwitch", func(t *testing.T) {
		w.t = t
		// v2 crashes as soon as it flies: SIGKILL from outside, as the
		// kernel kills a crashed process. (flightctl --debug-die-in would
		// also do inside a container, where flightctl is PID 1 and exits
		// abruptly instead of signalling itself; a kill from outside needs
		// no debug flag in the image.)
		m, pub, e, _ := w.pushUntil(v2bad, mqttapi.PhaseProbation, flying.Version)
		if e.Phase != mqttapi.PhaseProbation {
			t.Fatalf("update to %s never switched: ended %s (%s): %s", v2bad.Version, e.Result, e.Reason, e.Error)
		}
		name := w.v2Name(m.Serial, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		must(t, w.cli.ContainerKill(ctx, name, "SIGKILL"))
		cancel()
		e = w.result(m.Serial, 90*time.Second)
		if e.Result != mqttapi.ResultRolledBack {
			t.Fatalf("update to a v2 that dies after the switch ended %s (%s): %s", e.Result, e.Reason, e.Error)
		}
		t.Logf("rolled back %.0f ms after the publish (%s: %s); phases:\n%s", float64(time.Since(pub).Milliseconds()), e.Reason, e.Error, w.phaseTimes(m.Serial, pub))
		sum := w.sim.Summary()
		to, ok1 := handoverTo(sum.Handovers, name)
		var back *trace.Handover
		for i := range sum.Handovers {
			if h := sum.Handovers[i]; h.From == name && h.To == v1Name {
				back = &h
			}
		}
		if !ok1 || back == nil {
			t.Fatalf("the bench drone saw no switch to %s and back: %+v", name, sum.Handovers)
		}
		t.Logf("bench drone: switch to v2 gap %.3f ms; v2 died; v1 retook after %.3f ms without PWM writes", to.GapMS, back.GapMS)
		if sum.Crashed || sum.TwoWriterEvents != 0 || sum.ReinitEvents != 0 {
			t.Errorf("bench drone: crashed %v (%s), two_writers %d, reinit %d", sum.Crashed, sum.CrashReason, sum.TwoWriterEvents, sum.ReinitEvents)
		}
		if _, ok := w.containers()[name]; ok {
			t.Errorf("the dead v2's container %s was not removed", name)
		}
		if got := w.checkFlying(v1.Version); got != v1Name {
			t.Errorf("flying %s, want v1 %s", got, v1Name)
		}
	})

	// killDuring pushes an update to im, SIGKILLs the agent when the update
	// reaches phase, restarts it and returns how the update ended.
	killDuring := func(t *testing.T, im img, phase mqttapi.Phase) mqttapi.Event {
		w.t = t
		m, pub, e, at := w.pushUntil(im, phase, flying.Version)
		if e.Phase != phase {
			t.Fatalf("update to %s never reached %s: ended %s (%s): %s", im.Version, phase, e.Result, e.Reason, e.Error)
		}
		w.killAgent()
		killed := time.Since(pub)
		time.Sleep(300 * time.Millisecond)
		w.startAgent()
		e = w.result(m.Serial, 90*time.Second)
		rec, _ := w.waitEvent("recovery report", 10*time.Second, at, func(e mqttapi.Event) bool {
			return e.Kind == "recovery" && e.Reason == "agent_restart"
		})
		t.Logf("agent SIGKILLed in %s (+%.0f ms), restarted; it reported %q; the update ended %s (%s) +%.0f ms after the publish",
			phase, float64(killed.Milliseconds()), rec.Error, e.Result, e.Reason, float64(time.Since(pub).Milliseconds()))
		if s := w.sim.Summary(); s.Crashed || s.TwoWriterEvents != 0 || s.ReinitEvents != 0 {
			t.Errorf("bench drone: crashed %v (%s), two_writers %d, reinit %d", s.Crashed, s.CrashReason, s.TwoWriterEvents, s.ReinitEvents)
		}
		return e
	}

	t.Run("KillAgentAfterHandoffStart", func(t *testing.T) {
		e := killDuring(t, v2, mqttapi.PhaseHello)
		switch e.Result {
		case mqttapi.ResultCommitted:
			flying = v2
		case mqttapi.ResultRolledBack, mqttapi.ResultAborted:
		default:
			t.Fatalf("ended %s (%s): %s", e.Result, e.Reason, e.Error)
		}
		w.checkFlying(flying.Version)
	})
	t.Run("KillAgentInProbation", func(t *testing.T) {
		e := killDuring(t, v3, mqttapi.PhaseProbation)
		if e.Result != mqttapi.ResultCommitted {
			t.Fatalf("killed in probation, the update ended %s (%s): %s; want committed", e.Result, e.Reason, e.Error)
		}
		w.checkFlying(v3.Version)
	})
}
