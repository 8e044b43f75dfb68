package demo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/inflight-ota/inflight/sim/plot"
	"github.com/inflight-ota/inflight/sim/trace"
)

// window is a stretch of trace time, seconds.
type window struct{ from, to float64 }

func (w window) valid() bool { return w.from >= 0 && w.to > w.from }

// hoverStats are one window's figures against a reference level.
type hoverStats struct {
	n               int
	meanZ           float64
	meanRoll, meanP float64
	altRMSE         float64 // against the target altitude
}

func statsOf(tr *trace.Trace, w window, target float64) hoverStats {
	var s hoverStats
	var sq float64
	for i := range tr.Samples {
		x := &tr.Samples[i]
		if x.T < w.from || x.T > w.to {
			continue
		}
		s.n++
		s.meanZ += x.Z
		s.meanRoll += x.Roll
		s.meanP += x.Pitch
		d := x.Z - target
		sq += d * d
	}
	if s.n > 0 {
		s.meanZ /= float64(s.n)
		s.meanRoll /= float64(s.n)
		s.meanP /= float64(s.n)
		s.altRMSE = math.Sqrt(sq / float64(s.n))
	}
	return s
}

// deviation is the largest attitude (tilt from the baseline's mean roll and
// pitch) and altitude (from the baseline's mean altitude) deviation over w.
func deviation(tr *trace.Trace, w window, base hoverStats) (attDeg, altM float64) {
	for i := range tr.Samples {
		x := &tr.Samples[i]
		if x.T < w.from || x.T > w.to {
			continue
		}
		attDeg = math.Max(attDeg, math.Hypot(x.Roll-base.meanRoll, x.Pitch-base.meanP))
		altM = math.Max(altM, math.Abs(x.Z-base.meanZ))
	}
	return attDeg, altM
}

// firstEvent returns the time of the first event of kind after t (and
// whose client is client, when given), or -1.
func firstEvent(tr *trace.Trace, kind, client string, after float64) (float64, *trace.Event) {
	for i := range tr.Events {
		e := &tr.Events[i]
		if e.Event == kind && e.T >= after && (client == "" || e.Client == client) {
			return e.T, e
		}
	}
	return -1, nil
}

// drawPlot draws the whole flight with the update window shaded.
func drawPlot(tr *trace.Trace, path, title string, update, probation window) error {
	var spans []plot.Span
	if update.valid() {
		spans = append(spans, plot.Span{From: update.from, To: update.to, Label: "update: push → switch", Color: color.NRGBA{255, 190, 0, 70}})
	}
	if probation.valid() {
		spans = append(spans, plot.Span{From: probation.from, To: probation.to, Label: "probation (v1 hot standby) → commit", Color: color.NRGBA{60, 200, 90, 60}})
	}
	return plot.FileWith(tr, path, plot.Options{Title: title, Spans: spans})
}

// newKeys lists the keys of b that a lacks, with their values (cut short),
// sorted; nested objects are compared one level down as "key.sub". The
// handoff's own report is not a feature of v2 and is left out.
func newKeys(a, b map[string]json.RawMessage) []string {
	var out []string
	for k, v := range b {
		if strings.HasPrefix(k, "handoff") {
			continue
		}
		old, ok := a[k]
		if !ok {
			out = append(out, fmt.Sprintf("%s: %s", k, short(v)))
			continue
		}
		var ma, mb map[string]json.RawMessage
		if json.Unmarshal(old, &ma) == nil && json.Unmarshal(v, &mb) == nil && ma != nil && mb != nil {
			for _, s := range newKeys(ma, mb) {
				out = append(out, k+"."+s)
			}
		}
	}
	sort.Strings(out)
	return out
}

// short renders a JSON value compactly, at most 90 characters.
func short(v json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		b.Reset()
		b.Write(v)
	}
	s := b.String()
	if len(s) > 90 {
		s = s[:87] + "..."
	}
	return s
}

// unquote returns the string in a JSON string value, else its compact form.
func unquote(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return short(v)
}

// changedKeys lists the keys present in both whose values differ and that
// describe the controller rather than the moment (version, schema).
func changedIdentity(a, b map[string]json.RawMessage) []string {
	var out []string
	for _, k := range []string{"version", "schema"} {
		va, vb := a[k], b[k]
		if va != nil && vb != nil && !bytes.Equal(va, vb) {
			out = append(out, fmt.Sprintf("status %s %s → %s", k, unquote(va), unquote(vb)))
		}
	}
	return out
}

func r3(v float64) float64 { return math.Round(v*1e3) / 1e3 }
func r4(v float64) float64 { return math.Round(v*1e4) / 1e4 }

// sortedPhases renders phase times in the update's order.
func sortedPhases(m map[string]float64, order []string) string {
	var parts []string
	done := map[string]bool{}
	for _, p := range order {
		if v, ok := m[p]; ok {
			parts = append(parts, fmt.Sprintf("%s %.0f ms", p, v))
			done[p] = true
		}
	}
	var rest []string
	for k := range m {
		if !done[k] && k != "total" {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range rest {
		parts = append(parts, fmt.Sprintf("%s %.0f ms", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
