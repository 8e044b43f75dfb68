package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
)

// TestDemo runs the whole demo: in short mode on the process runtime (no
// Docker needed), otherwise on whatever --runtime auto picks. The embedded
// broker and the in-process registry are always used.
func TestDemo(t *testing.T) {
	rt := "auto"
	if testing.Short() {
		rt = "process"
	}
	dir := t.TempDir()
	var out, errb bytes.Buffer
	o := Options{Runtime: rt, PlotPath: filepath.Join(dir, "flight.png"), TracePath: filepath.Join(dir, "flight.jsonl"),
		Stdout: &out, Stderr: &errb, Timeout: 4 * time.Minute}
	sum, err := Run(context.Background(), o)
	t.Logf("demo output:\n%s", out.String())
	if errb.Len() > 0 {
		t.Logf("stderr:\n%s", errb.String())
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !sum.OK() {
		t.Errorf("summary not OK: %s", sum.JSON())
	}
	if sum.Result != mqttapi.ResultCommitted || sum.Crashed || !sum.Landed {
		t.Errorf("result %q crashed %v landed %v, want committed, false, true", sum.Result, sum.Crashed, sum.Landed)
	}
	if sum.FromVersion != "1.0.0" || sum.ToVersion != "2.0.0" {
		t.Errorf("versions %s → %s, want 1.0.0 → 2.0.0", sum.FromVersion, sum.ToVersion)
	}
	if testing.Short() && sum.Runtime != "process" {
		t.Errorf("runtime %q, want process", sum.Runtime)
	}
	if sum.SwitchGapMS <= 0 || sum.SwitchGapMS > 2*sum.ControlPeriodMS {
		t.Errorf("switch gap %.3f ms, want within (0, 2×%.3f]", sum.SwitchGapMS, sum.ControlPeriodMS)
	}
	// One handover per committed push, two per rolled-back one.
	if sum.TwoWriterEvents != 0 || sum.ReinitEvents != 0 || sum.Handovers < 1 || sum.Attempts < 1 {
		t.Errorf("two writers %d, reinit %d, handovers %d, attempts %d; want 0, 0, ≥ 1, ≥ 1", sum.TwoWriterEvents, sum.ReinitEvents, sum.Handovers, sum.Attempts)
	}
	if sum.Attempts > 1 {
		t.Logf("committed at push %d; earlier: %v", sum.Attempts, sum.Earlier)
	}
	tl := sum.Timeline
	if !(tl.Takeoff >= 0 && tl.Takeoff < tl.Push && tl.Push < tl.Switch && tl.Switch < tl.Committed && tl.Committed < tl.Land && tl.Land < tl.Landed) {
		t.Errorf("timeline out of order: %+v", tl)
	}
	if len(sum.V2Changes) == 0 {
		t.Errorf("no visible change of v2 reported")
	}
	for _, p := range []string{sum.Plot, sum.Trace} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
	// The last line of benchsim demo is this JSON; it must carry the
	// documented keys.
	var m map[string]any
	if err := json.Unmarshal([]byte(sum.JSON()), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"result", "from_version", "to_version", "runtime", "crashed", "switch_gap_ms", "control_period_ms", "max_att_dev_deg", "max_alt_dev_m", "plot"} {
		if _, ok := m[k]; !ok {
			t.Errorf("summary JSON lacks %q", k)
		}
	}
	// Nothing of the run is left: no controller process, no run directory.
	if left := processesWith("inflight-demo-" + sum.RunID); len(left) > 0 {
		t.Errorf("controllers left running: %v", left)
	}
	if !strings.Contains(out.String(), "cleaned up:") {
		t.Errorf("no cleanup reported")
	}
}

// processesWith lists the command lines under /proc that contain s.
func processesWith(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return out
}

func TestOptionsDefaults(t *testing.T) {
	var o Options
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if o.Runtime != "auto" || o.Via != "registry" || o.V1Version != "1.0.0" || o.V2Version != "2.0.0" || o.AltM != 2 {
		t.Errorf("defaults: %+v", o)
	}
	for _, bad := range []Options{{Runtime: "podman"}, {Via: "carrier-pigeon"}} {
		if err := bad.defaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestSummaryOK(t *testing.T) {
	good := Summary{Result: "committed", Landed: true, SwitchGapMS: 4.9, ControlPeriodMS: 2.5}
	if !good.OK() {
		t.Error("good summary not OK")
	}
	for _, f := range []func(*Summary){
		func(s *Summary) { s.Result = "rolled_back" },
		func(s *Summary) { s.Crashed = true },
		func(s *Summary) { s.Landed = false },
		func(s *Summary) { s.SwitchGapMS = 5.1 },
		func(s *Summary) { s.SwitchGapMS = 0 },
	} {
		s := good
		f(&s)
		if s.OK() {
			t.Errorf("%+v is OK", s)
		}
	}
}

func TestNewKeys(t *testing.T) {
	a := map[string]json.RawMessage{"version": json.RawMessage(`"1.0.0"`), "ticks": json.RawMessage(`{"rate_hz":400}`)}
	b := map[string]json.RawMessage{"version": json.RawMessage(`"2.0.0"`), "camera": json.RawMessage(`{"fps": 30}`), "ticks": json.RawMessage(`{"rate_hz":400,"p999_us":3}`)}
	got := strings.Join(newKeys(a, b), "; ")
	if got != `camera: {"fps":30}; ticks.p999_us: 3` {
		t.Errorf("newKeys = %q", got)
	}
	if got := strings.Join(changedIdentity(a, b), "; "); got != "status version 1.0.0 → 2.0.0" {
		t.Errorf("changedIdentity = %q", got)
	}
}
