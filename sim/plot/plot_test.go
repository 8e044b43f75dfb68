package plot

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/inflight-ota/inflight/sim/trace"
)

func sampleTrace() *trace.Trace {
	tr := &trace.Trace{Header: trace.Header{Trace: trace.Format, Version: 1}}
	for i := range 500 {
		t := float64(i) / 200
		tr.Samples = append(tr.Samples, trace.Sample{T: t, Z: t, Roll: 2 * t, PWM: [4]float64{1500, 1510, 1490, 1500}, Writer: "v1"})
	}
	tr.Events = []trace.Event{{T: 1, Event: trace.EventWriterSwitch}, {T: 2, Event: trace.EventReinit}, {T: 2.2, Event: trace.EventCrash}}
	tr.Summary = &trace.Summary{Crashed: true, ReinitEvents: 1}
	return tr
}

func TestFilePNGAndSVG(t *testing.T) {
	dir := t.TempDir()
	tr := sampleTrace()
	p := filepath.Join(dir, "f.png")
	if err := File(tr, p); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if w := img.Bounds().Dx(); w < 800 {
		t.Fatalf("PNG %d px wide", w)
	}
	s := filepath.Join(dir, "f.svg")
	if err := File(tr, s); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(s)
	for _, want := range []string{"<svg", "altitude (m)", "attitude", "ESC pulse", "reinit", "crash", "writer_switch"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

func TestRejects(t *testing.T) {
	if err := File(sampleTrace(), filepath.Join(t.TempDir(), "f.gif")); err == nil {
		t.Fatal("a .gif was accepted")
	}
	if err := File(&trace.Trace{}, filepath.Join(t.TempDir(), "f.svg")); err == nil {
		t.Fatal("an empty trace was plotted")
	}
}

func TestFileWithSpans(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.png")
	o := Options{Title: "demo", Spans: []Span{{From: 0.5, To: 1.5, Label: "update"}, {From: 1.5, To: 9, Label: "probation"}, {From: 5, To: 4}}}
	if err := FileWith(sampleTrace(), p, o); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
		t.Fatalf("no plot: %v", err)
	}
}
