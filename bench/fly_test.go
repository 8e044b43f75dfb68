package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFly flies one short hover with flightctl as a separate process against
// the bench drone: it must take off, hover, land, and never crash. Set
// BENCH_FLIGHTS=N (and BENCH_HOVER=30s, BENCH_GUSTS=1) to fly N flights and
// log their figures as JSON.
func TestFly(t *testing.T) {
	if testing.Short() {
		t.Skip("bench: a real-time flight; skipped with -short")
	}
	n, hover, gusts := 1, 8*time.Second, false
	if v := os.Getenv("BENCH_FLIGHTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("BENCH_HOVER"); v != "" {
		hover, _ = time.ParseDuration(v)
	}
	gusts = os.Getenv("BENCH_GUSTS") == "1"
	seed0, _ := strconv.Atoi(os.Getenv("BENCH_SEED0"))
	dir := t.TempDir()
	bin, err := FlightctlBinary(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		o := FlyOptions{Hover: hover, Gusts: gusts, Seed: uint64(seed0 + i + 1), Flightctl: bin, NoRT: os.Getenv("BENCH_NORT") == "1"}
		if p := os.Getenv("BENCH_PLOT"); p != "" {
			o.PlotPath = filepath.Join(p, "flight-"+strconv.Itoa(i+1)+".png")
			o.TracePath = filepath.Join(p, "flight-"+strconv.Itoa(i+1)+".jsonl")
		}
		if os.Getenv("BENCH_LOG") == "1" {
			o.FlightctlLog = os.Stderr
		}
		if a := os.Getenv("BENCH_ARGS"); a != "" {
			o.FlightctlArgs = strings.Fields(a)
		}
		if hover < 10*time.Second {
			o.SkipS = 2
		}
		r, err := Fly(context.Background(), o)
		b, _ := json.Marshal(r)
		t.Logf("%s", b)
		if err != nil {
			t.Fatal(err)
		}
		if r.Crashed || !r.Landed || r.TwoWriterEvents != 0 || r.ReinitEvents != 0 {
			t.Errorf("flight %d: crashed=%v landed=%v two_writer=%d reinit=%d", i+1, r.Crashed, r.Landed, r.TwoWriterEvents, r.ReinitEvents)
		}
	}
}
