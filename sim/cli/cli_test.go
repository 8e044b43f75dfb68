package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/inflight-ota/inflight/sim/trace"
)

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), &Env{Stdout: &out, Stderr: &errb}, args)
	return code, out.String(), errb.String()
}

func TestHelpAndUsage(t *testing.T) {
	code, out, _ := run("--help")
	if code != 0 || !strings.Contains(out, "serve") || !strings.Contains(out, "plot") {
		t.Fatalf("--help: %d %q", code, out)
	}
	if code, _, errs := run("serve", "--help"); code != 0 || !strings.Contains(errs, "--bus") || !strings.Contains(errs, "unix:///") {
		t.Fatalf("serve --help: %d %q", code, errs)
	}
	if code, _, _ := run("fly-to-the-moon"); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
	if code, _, errs := run("serve", "--bus", "/tmp/x"); code != 2 || !strings.Contains(errs, "unix:///") {
		t.Fatalf("bad --bus: %d %q", code, errs)
	}
	if code, _, _ := run("plot", "x.jsonl"); code != 2 {
		t.Fatalf("plot without -o exit %d", code)
	}
}

func TestServeThenPlot(t *testing.T) {
	dir := t.TempDir()
	tf := filepath.Join(dir, "t.jsonl")
	code, out, errs := run("serve", "--bus", "unix://"+filepath.Join(dir, "bus.sock"), "--trace", tf, "--duration", "300ms", "--noise", "none", "--gusts")
	if code != 0 {
		t.Fatalf("serve: %d %s", code, errs)
	}
	var sum map[string]any
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("summary %q: %v", out, err)
	}
	for _, k := range []string{"crashed", "two_writer_events", "reinit_events", "max_pwm_gap_ms", "clients"} {
		if _, ok := sum[k]; !ok {
			t.Errorf("summary lacks %q: %s", k, out)
		}
	}
	tr, err := trace.ReadFile(tf)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Samples) < 30 || tr.Summary == nil || !tr.Header.Gusts || tr.Header.Noise != "none" {
		t.Fatalf("trace: %d samples, header %+v, summary %v", len(tr.Samples), tr.Header, tr.Summary)
	}
	png := filepath.Join(dir, "t.png")
	if code, _, errs := run("plot", tf, "-o", png); code != 0 {
		t.Fatalf("plot: %d %s", code, errs)
	}
	if fi, err := os.Stat(png); err != nil || fi.Size() < 1000 {
		t.Fatalf("plot output: %v", err)
	}
}
