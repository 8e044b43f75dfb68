package bench

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestHandoffs flies two handoffs in a row (schema 1→2→1) with real
// flightctl processes against the bench drone: both commit, the drone never
// crashes, never sees two writers or a chip re-initialised, and every switch
// gap stays within two control periods. BENCH_HANDOFFS=N flies N instead;
// BENCH_FAULT=<fault> injects one (then the first handoff must abort or roll
// back and the drone keep flying).
func TestHandoffs(t *testing.T) {
	if testing.Short() {
		t.Skip("bench: real-time handoffs; skipped with -short")
	}
	n := 2
	if v := os.Getenv("BENCH_HANDOFFS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	fault := os.Getenv("BENCH_FAULT")
	dir := t.TempDir()
	bin, err := FlightctlBinary(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	o := HandoffOptions{Handoffs: n, Flightctl: bin, Settle: 2 * time.Second, Probation: 500 * time.Millisecond, Fault: fault,
		NoRT: os.Getenv("BENCH_NORT") == "1"}
	if os.Getenv("BENCH_LOG") == "1" {
		o.FlightctlLog = os.Stderr
	}
	r, err := FlyHandoffs(context.Background(), o)
	b, _ := json.Marshal(r)
	t.Logf("%s", b)
	if err != nil {
		t.Fatal(err)
	}
	if r.Crashed || r.TwoWriterEvents != 0 || r.ReinitEvents != 0 {
		t.Errorf("crashed=%v two_writer=%d reinit=%d", r.Crashed, r.TwoWriterEvents, r.ReinitEvents)
	}
	if fault != "" {
		if len(r.Each) == 0 || r.Each[0].Result == "committed" && fault != FaultV1Die {
			t.Errorf("fault %s: first handoff %+v", fault, r.Each)
		}
		return
	}
	if r.HandoffsOK != n || !r.Landed {
		t.Errorf("%d of %d handoffs committed, landed=%v: %+v", r.HandoffsOK, n, r.Landed, r.Each)
	}
	for i, e := range r.Each {
		if e.SwitchGapMS <= 0 || e.SwitchGapMS > 2*r.ControlPeriodMS {
			t.Errorf("handoff %d: switch gap %.3f ms, want (0, %.1f]", i+1, e.SwitchGapMS, 2*r.ControlPeriodMS)
		}
	}
}
