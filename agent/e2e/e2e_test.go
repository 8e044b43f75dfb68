package e2e

import (
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
	v2 := w.image("2.0.0", imageOpts{})
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
