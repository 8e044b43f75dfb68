package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
	"github.com/inflight-ota/inflight/transfer"
)

const refV2 = "reg.local/flightctl@sha256:2222222222222222222222222222222222222222222222222222222222222222"

// startFlying starts an agent with no controller running: it starts the
// configured image cold, which then flies (hover).
func (b *bench) startFlying() *runningAgent {
	b.t.Helper()
	ra := b.start()
	b.waitEvent("first start", func(e mqttapi.Event) bool { return e.Kind == KindRecovery && e.Phase == mqttapi.PhaseCommitted })
	if n := b.rt.names(); len(n) != 1 || n[0] != "c-s0" {
		b.t.Fatalf("running after first start: %v", n)
	}
	return ra
}

func TestFirstStartThenHandoffCommit(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	ra := b.startFlying()
	if sp := b.rt.starts[0]; sp.Role != runtime.RoleCold || sp.Labels[LabelDrone] != "d1" || sp.RunDir != b.cfg.Paths.RunDir {
		t.Errorf("first start spec %+v", sp)
	}
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	e, seen := b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	want := []mqttapi.Phase{mqttapi.PhaseReceived, mqttapi.PhaseVerified, mqttapi.PhaseFetching, mqttapi.PhaseFetched, PhaseChecking, mqttapi.PhaseStarting,
		mqttapi.PhaseHello, mqttapi.PhaseSync, mqttapi.PhaseShadow, mqttapi.PhaseSwitching, mqttapi.PhaseProbation, mqttapi.PhaseCommitted}
	var got []mqttapi.Phase
	for _, p := range phases(seen) {
		if p != mqttapi.PhaseIdle { // telemetry-free; recovery events are idle/committed of serial 0
			got = append(got, p)
		}
	}
	if !slices.Equal(got[len(got)-len(want):], want) {
		t.Errorf("phases %v\nwant    %v", got, want)
	}
	if e.Result != mqttapi.ResultCommitted || e.Figures == nil || e.Figures.SwitchTick != 4242 || e.Figures.ControlGapMS != 2.6 || e.Figures.PullTotal != 1024 || e.Figures.PhaseMS["total"] <= 0 {
		t.Errorf("committed event %+v figures %+v", e, e.Figures)
	}
	v2 := "c-s" + itoa(b.serial) + "-1"
	eventually(t, "v1 removed", func() bool { n := b.rt.names(); return len(n) == 1 && n[0] == v2 })
	if sp := b.rt.starts[1]; sp.Role != runtime.RoleStandby || sp.UpdateID != itoa(b.serial) {
		t.Errorf("v2 spec %+v", sp)
	}
	j := ra.a.Journal()
	if j.Update != nil || j.Active.Name != v2 || j.Active.Image.Version != "2.0.0" || j.Previous.ID != b.v1.ID || j.LastSerial != b.serial {
		t.Errorf("journal after commit: %+v", j)
	}
	// (v1 asked for the handoff to the standby's socket, with the policy:
	// checked in TestHandoffStartRequest.)
	// The same retained serial seen again (a reconnect) is a no-op.
	b.publish(b.topics.Desired, b.lastManifest, true)
	select {
	case e := <-b.events:
		if e.Serial == b.serial {
			t.Errorf("same serial again produced %+v", e)
		}
	case <-time.After(300 * time.Millisecond):
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestBadInputsRejected(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	ra := b.startFlying()
	good := b.manifest("2.0.0", refV2, nil) // serial 101, never published
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	env, _ := mqttapi.DecodeEnvelope(good)
	unsigned := *env
	unsigned.Sig = nil
	unsignedRaw, _ := unsigned.Marshal()
	badSig := *env
	badSig.Sig = append([]byte(nil), env.Sig...)
	badSig.Sig[0] ^= 1
	badSigRaw, _ := badSig.Marshal()
	foreign, _ := mqttapi.Sign(otherKey, env.Payload)
	foreignRaw, _ := foreign.Marshal()
	expired := b.manifest("2.0.0", refV2, func(m *mqttapi.Manifest) {
		m.IssuedAt, m.ExpiresAt = b.clock.Now().Add(-3*time.Hour), b.clock.Now().Add(-2*time.Hour)
	})
	other := b.manifest("2.0.0", refV2, func(m *mqttapi.Manifest) { m.Drone = "d2" })
	otherFleet := b.manifest("2.0.0", refV2, func(m *mqttapi.Manifest) { m.Drone, m.Fleet = "", "beta" })
	cases := []struct {
		name, reason, topic string
		raw                 []byte
	}{
		{"unsigned", "unsigned", b.topics.Desired, unsignedRaw},
		{"bare payload", "unsigned", b.topics.Desired, env.Payload},
		{"bad signature", "bad_signature", b.topics.Desired, badSigRaw},
		{"unknown key", "unknown_key", b.topics.Desired, foreignRaw},
		{"expired", "expired", b.topics.Desired, expired},
		{"another drone", "wrong_target", b.topics.Desired, other},
		{"another fleet", "wrong_target", b.topics.Desired, otherFleet},
		{"unparsable", "unparsable", b.topics.Desired, []byte("{not json")},
		{"oversized", "oversized", b.topics.Desired, []byte(`{"v":1,"x":"` + strings.Repeat("a", mqttapi.MaxSignedSize) + `"}`)},
		{"unsigned request", "unsigned", b.topics.Requests, []byte(`{"v":1,"kind":"rollback","drone":"d1","serial":9}`)},
	}
	before := ra.a.Journal()
	for _, c := range cases {
		b.publish(c.topic, c.raw, false)
		e, _ := b.waitEvent(c.name+" rejection", func(e mqttapi.Event) bool { return e.Phase == mqttapi.PhaseRejected })
		if e.Reason != c.reason || e.Result != mqttapi.ResultRejected || e.Topic != c.topic || e.Error == "" {
			t.Errorf("%s: event %+v, want reason %s", c.name, e, c.reason)
		}
	}
	after := ra.a.Journal()
	if after.Update != nil || after.LastSerial != before.LastSerial || after.Active.Name != before.Active.Name || len(b.rt.starts) != 1 {
		t.Errorf("bad input changed something: journal %+v, %d starts", after, len(b.rt.starts))
	}
	// A replayed (older) serial after a newer one was applied.
	newer := b.manifest("2.0.0", refV2, nil)
	b.publish(b.topics.Desired, newer, false)
	b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	b.publish(b.topics.Desired, good, false)
	e, _ := b.waitEvent("replay rejection", func(e mqttapi.Event) bool { return e.Phase == mqttapi.PhaseRejected })
	if e.Reason != "replayed" {
		t.Errorf("older serial: %+v", e)
	}
}

func TestFleetManifestAndOfflineCatchUp(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	ra := b.startFlying()
	ra.stop()
	// While the agent is away, the ground publishes to the fleet, retained.
	fleetTopic, _ := mqttapi.Topics{}.FleetDesired("alpha")
	b.publish(fleetTopic, b.manifest("2.0.0", refV2, func(m *mqttapi.Manifest) { m.Drone, m.Fleet = "", "alpha" }), true)
	ra = b.start()
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	if e.Result != mqttapi.ResultCommitted {
		t.Errorf("catch-up: %+v", e)
	}
	if j := ra.a.Journal(); j.Active.Image.Version != "2.0.0" {
		t.Errorf("active after catch-up: %+v", j.Active)
	}
}

func TestCancelBeforeSwitch(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.hold = "shadow" }
	ra := b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseShadow)
	b.publish(b.topics.Requests, b.request(mqttapi.KindCancel), false)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseAborted)
	if e.Reason != ReasonCancelled || e.Result != mqttapi.ResultAborted {
		t.Errorf("aborted event %+v", e)
	}
	eventually(t, "v2 removed", func() bool { n := b.rt.names(); return len(n) == 1 && n[0] == "c-s0" })
	if f := b.rt.ctl("c-s0"); len(f.aborts) != 1 {
		t.Errorf("v1 got %d handoff_abort calls", len(f.aborts))
	}
	j := ra.a.Journal()
	if j.Active.Name != "c-s0" || j.LastSerial != b.serial || j.History[len(j.History)-1].Result != mqttapi.ResultAborted {
		t.Errorf("journal %+v", j)
	}
}

func TestRollbackInProbation(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.hold = "probation" }
	ra := b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseProbation)
	// A cancel after the switch is too late; a rollback acts.
	b.publish(b.topics.Requests, b.request(mqttapi.KindCancel), false)
	b.waitEvent("too late", func(e mqttapi.Event) bool { return e.Reason == ReasonTooLate })
	b.publish(b.topics.Requests, b.request(mqttapi.KindRollback), false)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseRolledBack)
	if e.Reason != ReasonRollback || e.Result != mqttapi.ResultRolledBack {
		t.Errorf("rolled back event %+v", e)
	}
	eventually(t, "v2 removed", func() bool { n := b.rt.names(); return len(n) == 1 && n[0] == "c-s0" })
	if j := ra.a.Journal(); j.Active.Name != "c-s0" || j.Update != nil || j.LastRequestSerial != 2 {
		t.Errorf("journal %+v", j)
	}
}

func TestRollbackWhenV2Fails(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) {
		f.script = []string{"hello", "sync", "shadow", "switch", "probation", "rolled-back"}
	}
	b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseRolledBack)
	if e.Reason != ReasonHandoff {
		t.Errorf("event %+v", e)
	}
	eventually(t, "v2 removed", func() bool { n := b.rt.names(); return len(n) == 1 && n[0] == "c-s0" })
}

func TestWrongArchitectureNeverRuns(t *testing.T) {
	b := newBench(t)
	other := runtime.Platform{OS: "linux", Arch: "s390x"}
	if runtime.HostPlatform().Arch == "s390x" {
		other.Arch = "amd64"
	}
	b.rt.addImage(refV2, "2.0.0", other)
	b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseAborted)
	if e.Reason != ReasonWrongArch {
		t.Errorf("event %+v", e)
	}
	if len(b.rt.starts) != 1 {
		t.Errorf("%d controllers started, want only v1", len(b.rt.starts))
	}
}

func TestPolicyWaitTimesOut(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) {
		if spec.Role == runtime.RoleCold {
			f.st.Mode = "takeoff"
		}
	}
	b.cfg.Policy.BatteryFloorPct = 30
	b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	w, _ := b.waitPhase(b.serial, mqttapi.PhaseWaiting)
	if w.Reason != ReasonPolicy || !strings.Contains(w.Error, "takeoff") {
		t.Errorf("waiting event %+v", w)
	}
	// Low battery, in hover: still waiting.
	low := 20.0
	b.rt.ctl("c-s0").set(func(f *fakeCtl) { f.st.Mode, f.st.BatteryPct = "hover", &low })
	b.waitEvent("battery wait", func(e mqttapi.Event) bool { return strings.Contains(e.Error, "battery") })
	b.clock.Advance(b.cfg.Timeouts.Wait + time.Second)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseAborted)
	if e.Reason != ReasonTimeout {
		t.Errorf("aborted %+v", e)
	}
	if f := b.rt.ctl("c-s0"); f.started != nil {
		t.Error("handoff started against the policy")
	}
}

func TestHandoffPhaseTimeoutAborts(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.hold = "sync" }
	b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseSync)
	b.clock.Advance(b.cfg.Timeouts.Sync + time.Second)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseAborted)
	if e.Reason != ReasonTimeout {
		t.Errorf("aborted %+v", e)
	}
}

func TestGroundSwap(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.st.Mode, f.st.Armed, f.st.Airborne = "disarmed", false, false }
	ra := b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseProbation)
	b.clock.Advance(b.cfg.Policy.Probation)
	b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	v2 := "c-s" + itoa(b.serial) + "-1"
	if sp := b.rt.starts[1]; sp.Role != runtime.RoleCold || sp.Name != v2 {
		t.Errorf("ground swap started %+v", sp)
	}
	if f := b.rt.ctl("c-s0"); f != nil {
		t.Error("v1 still there")
	}
	if j := ra.a.Journal(); j.Active.Name != v2 || j.Previous.Version != "1.0.0" {
		t.Errorf("journal %+v", j)
	}
}

// Recovery: the agent dies (Run stopped, journal left) before the switch;
// the next agent cleans v2 up, leaves v1 alone and tries again.
func TestRecoveryBeforeSwitchRetries(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.hold = "shadow" }
	ra := b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseShadow)
	ra.stop()
	j := ra.a.Journal()
	if j.Update == nil || j.Update.Phase != mqttapi.PhaseShadow || !j.Update.HandoffStarted {
		t.Fatalf("journal left behind: %+v", j.Update)
	}
	b.rt.newCtl = nil // the second attempt goes through
	b.rt.ctl("c-s0").set(func(f *fakeCtl) { f.hold, f.started = "", nil })
	ra = b.start()
	r, _ := b.waitEvent("recovery", func(e mqttapi.Event) bool { return e.Kind == KindRecovery && e.Reason == ReasonRestart })
	if !strings.Contains(r.Error, "attempt 2") {
		t.Errorf("recovery event %+v", r)
	}
	b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	v2 := "c-s" + itoa(b.serial) + "-2"
	eventually(t, "only the new v2 runs", func() bool { n := b.rt.names(); return len(n) == 1 && n[0] == v2 })
	if j := ra.a.Journal(); j.Active.Name != v2 || j.LastSerial != b.serial {
		t.Errorf("journal %+v", j)
	}
}

// Recovery after the switch: the handoff goes on in the controllers; the
// new agent follows it to the end.
func TestRecoveryAfterSwitchFollows(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.hold = "probation" }
	ra := b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseProbation)
	ra.stop()
	if j := ra.a.Journal(); !j.Update.Switched {
		t.Fatalf("journal: %+v", j.Update)
	}
	ra = b.start()
	r, _ := b.waitEvent("recovery", func(e mqttapi.Event) bool { return e.Kind == KindRecovery && e.Reason == ReasonRestart })
	if !strings.Contains(r.Error, "resuming") {
		t.Errorf("recovery %+v", r)
	}
	b.rt.ctl("c-s0").set(func(f *fakeCtl) { f.hold = "" })
	b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	if j := ra.a.Journal(); j.Active.Image.Version != "2.0.0" {
		t.Errorf("journal %+v", j)
	}
}

// Recovery when the journal says "before the switch" but the controllers
// switched meanwhile: the agent asks them and follows.
func TestRecoveryJournalBehindControllers(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) { f.hold = "shadow" }
	ra := b.startFlying()
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseShadow)
	ra.stop()
	b.rt.ctl("c-s0").set(func(f *fakeCtl) { f.phase, f.hold, f.step = "probation", "probation", 4 })
	ra = b.start()
	r, _ := b.waitEvent("recovery", func(e mqttapi.Event) bool { return e.Kind == KindRecovery && e.Reason == ReasonRestart })
	if !strings.Contains(r.Error, "following") {
		t.Errorf("recovery %+v", r)
	}
	b.publish(b.topics.Requests, b.request(mqttapi.KindRollback), false)
	b.waitPhase(b.serial, mqttapi.PhaseRolledBack)
	if j := ra.a.Journal(); j.Active.Name != "c-s0" {
		t.Errorf("journal %+v", j)
	}
}

// An agent restarted with a controller running adopts it instead of
// starting another — with its journal, and without one (by the authority
// the controller reports) — and no retry or later start-up cold-starts a
// second one.
func TestRestartAdoptsRunningController(t *testing.T) {
	for _, journal := range []bool{true, false} {
		t.Run("journal="+strconv.FormatBool(journal), func(t *testing.T) {
			b := newBench(t)
			ra := b.startFlying()
			ra.stop()
			if !journal {
				if err := os.Remove(b.cfg.Paths.StateDir + "/journal.json"); err != nil {
					t.Fatal(err)
				}
			}
			restarted := time.Now()
			ra = b.start()
			e, seen := b.waitEvent("adopt", func(e mqttapi.Event) bool { return e.Kind == KindRecovery && e.Phase == mqttapi.PhaseIdle })
			if !strings.Contains(e.Error, "adopted c-s0") {
				t.Errorf("recovery %+v", e)
			}
			for _, e := range b.settle(seen) { // a few retry periods (5–20 ms)
				if e.At.Before(restarted) {
					continue // the first agent's, handed over late
				}
				if e.Reason == "first_start" || e.Phase == mqttapi.PhaseFailed {
					t.Errorf("after the restart: %+v", e)
				}
			}
			if n := b.rt.triesOf("c-s0"); n != 1 || len(b.rt.starts) != 1 {
				t.Errorf("%d starts of c-s0 (%d in all), want the first only", n, len(b.rt.starts))
			}
			if j := ra.a.Journal(); j.Active == nil || j.Active.Name != "c-s0" || j.Active.ID != "id-c-s0" {
				t.Errorf("journal after adoption: %+v", j.Active)
			}
		})
	}
}

// A first start that fails is retried with backoff, each attempt reported,
// until the controller flies.
func TestFirstStartRetried(t *testing.T) {
	b := newBench(t)
	b.rt.startFail = func(sp runtime.Spec) error {
		if b.rt.tries[sp.Name] <= 3 {
			return errors.New("fake: engine busy")
		}
		return nil
	}
	ra := b.start()
	e, seen := b.waitEvent("first start", func(e mqttapi.Event) bool { return e.Kind == KindRecovery && e.Phase == mqttapi.PhaseCommitted })
	var fails []string
	starting := 0
	for _, e := range b.settle(seen) {
		switch e.Phase {
		case mqttapi.PhaseFailed:
			fails = append(fails, e.Error)
			if e.Reason != ReasonStart || e.Result != mqttapi.ResultFailed {
				t.Errorf("failed event %+v", e)
			}
		case mqttapi.PhaseStarting:
			starting++
		}
	}
	want := []string{"next attempt in 5ms", "attempt 2: ", "next attempt in 10ms", "attempt 3: ", "next attempt in 20ms"}
	if len(fails) != 3 || !strings.Contains(fails[0], want[0]) || !strings.HasPrefix(fails[1], want[1]) || !strings.Contains(fails[1], want[2]) ||
		!strings.HasPrefix(fails[2], want[3]) || !strings.Contains(fails[2], want[4]) || !strings.Contains(fails[0], "engine busy") {
		t.Errorf("failed events %q", fails)
	}
	if starting != 4 || !strings.HasPrefix(e.Error, "attempt 4: started c-s0 cold") {
		t.Errorf("%d starting events; committed %+v", starting, e)
	}
	if n := b.rt.triesOf("c-s0"); n != 4 {
		t.Errorf("%d starts asked for, want 4", n)
	}
	if j := ra.a.Journal(); j.Active == nil || j.Active.Name != "c-s0" {
		t.Errorf("journal %+v", j.Active)
	}
	time.Sleep(60 * time.Millisecond)
	if n := b.rt.triesOf("c-s0"); n != 4 {
		t.Errorf("started again once flying: %d starts", n)
	}
}

// An image of the wrong platform is not retried: the agent waits for a
// desired manifest.
func TestFirstStartWrongPlatformNotRetried(t *testing.T) {
	b := newBench(t)
	b.rt.addImage("local/flightctl:arm", "1.0.0", runtime.Platform{OS: "linux", Arch: "mips"})
	b.cfg.Controller.Image = "local/flightctl:arm"
	b.start()
	e, seen := b.waitEvent("failed", func(e mqttapi.Event) bool { return e.Phase == mqttapi.PhaseFailed })
	if e.Reason != ReasonWrongArch || !strings.Contains(e.Error, "not retried") {
		t.Errorf("failed event %+v", e)
	}
	if got := phases(b.settle(seen)); !slices.Equal(got, []mqttapi.Phase{mqttapi.PhaseStarting, mqttapi.PhaseFailed}) {
		t.Errorf("events %v, want one attempt", got)
	}
}

// While the first start keeps failing, a desired manifest goes first: its
// image starts cold (there is no v1), commits, and the retries stop.
func TestFirstStartRetryYieldsToManifest(t *testing.T) {
	b := newBench(t)
	b.rt.addImage(refV2, "2.0.0", runtime.HostPlatform())
	b.rt.startFail = func(sp runtime.Spec) error {
		if sp.Image == b.v1.ID {
			return errors.New("fake: v1 never starts")
		}
		return nil
	}
	ra := b.start()
	b.waitEvent("second failure", func(e mqttapi.Event) bool {
		return e.Phase == mqttapi.PhaseFailed && strings.HasPrefix(e.Error, "attempt 2: ")
	})
	b.publish(b.topics.Desired, b.manifest("2.0.0", refV2, nil), true)
	b.waitPhase(b.serial, mqttapi.PhaseProbation)
	b.clock.Advance(b.cfg.Policy.Probation)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	v2 := "c-s" + itoa(b.serial) + "-1"
	if e.Result != mqttapi.ResultCommitted || e.Figures.PhaseMS["total"] <= 0 {
		t.Fatalf("update %+v", e)
	}
	j := ra.a.Journal()
	if j.Active == nil || j.Active.Name != v2 || j.History[len(j.History)-1].Result != mqttapi.ResultCommitted {
		t.Errorf("journal %+v", j)
	}
	if sp := b.rt.starts[len(b.rt.starts)-1]; sp.Name != v2 || sp.Role != runtime.RoleCold {
		t.Errorf("v2 started as %+v", sp)
	}
	tries := b.rt.triesOf("c-s0")
	time.Sleep(100 * time.Millisecond) // several retry periods
	if n := b.rt.triesOf("c-s0"); n != tries {
		t.Errorf("v1 started %d more times after v2 committed", n-tries)
	}
	if n := b.rt.names(); len(n) != 1 || n[0] != v2 {
		t.Errorf("running %v", n)
	}
}

func TestTelemetryRelayed(t *testing.T) {
	b := newBench(t)
	got := make(chan *mqttapi.Telemetry, 8)
	ctx := t.Context()
	b.ground.Subscribe(ctx, b.topics.Telemetry, 0, func(m mqttc.Message) {
		tm, err := mqttapi.DecodeTelemetry(m.Payload)
		if err == nil {
			select {
			case got <- tm:
			default:
			}
		}
	})
	b.rt.newCtl = func(spec runtime.Spec, f *fakeCtl) {
		f.st.MotorsUS = [4]float64{1500, 1000, 2000, 2500}
		f.st.RollDeg = 1.5
	}
	b.startFlying()
	select {
	case tm := <-got:
		if tm.Mode != "hover" || tm.RollDeg != 1.5 || tm.AltM != 2 || !slices.Equal(tm.Motors, []float64{0.5, 0, 1, 1}) || tm.ControllerVersion != "1.0.0" {
			t.Errorf("telemetry %+v", tm)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no telemetry")
	}
}

var _ = ctlsock.PhaseDone

// An image sent in chunks over MQTT (package transfer) is received, loaded
// and checked against the pinned digest.
func TestMQTTTransferUpdate(t *testing.T) {
	b := newBench(t)
	archive := bytes.Repeat([]byte("flightctl v2 image "), 400) // ~7.6 kB: several 1 KiB chunks
	digest, size, err := transfer.Digest(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	info := b.rt.addImage("load:"+string(archive), "2.0.0", runtime.HostPlatform())
	b.startFlying()
	raw := b.manifest("2.0.0", "reg.local/flightctl@"+info.ID, func(m *mqttapi.Manifest) {
		m.Image.Transfer = mqttapi.TransferMQTT
		m.Image.Archive = &mqttapi.Archive{Digest: digest, Size: size}
	})
	snd, err := transfer.NewSender(transfer.SenderOptions{Conn: b.ground, Drone: b.topics, Archive: bytes.NewReader(archive), Digest: digest, Size: size, ChunkSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { _, err := snd.Run(t.Context()); sent <- err }()
	b.publish(b.topics.Desired, raw, true)
	e, _ := b.waitPhase(b.serial, mqttapi.PhaseCommitted)
	if e.Figures == nil || e.Figures.PullBytes != size {
		t.Errorf("committed %+v figures %+v", e, e.Figures)
	}
	if err := <-sent; err != nil {
		t.Errorf("sender: %v", err)
	}
}
