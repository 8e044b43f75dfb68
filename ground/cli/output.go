package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/inflight-ota/inflight/ground"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/transfer"
)

// output renders progress three ways: a progress bar on a terminal, plain
// lines otherwise, JSON lines with --json.
type output struct {
	e    *env
	json bool
	tty  bool

	mu      sync.Mutex
	tbar    *progressbar.ProgressBar
	tstart  time.Time
	tlast   int // last tenth printed
	tdone   bool
	tbytes  int64
	tsize   int64
	enc     *json.Encoder
	started time.Time
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func newOutput(e *env, asJSON bool) *output {
	o := &output{e: e, json: asJSON, tty: !asJSON && isTerminal(e.stdout), tlast: -1, started: time.Now()}
	o.enc = json.NewEncoder(e.stdout)
	return o
}

func printJSON(e *env, v any) int {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fail(e, "json", err)
	}
	return ExitOK
}

func (o *output) line(v any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.enc.Encode(v)
}

// note is a diagnostic: stderr, never in the JSON stream.
func (o *output) note(format string, a ...any) {
	fmt.Fprintf(o.e.stderr, "groundctl: "+format+"\n", a...)
}

func (o *output) pushed(r ground.PushResult) {
	if o.json {
		o.line(map[string]any{"pushed": r})
		return
	}
	m := r.Manifest
	target := "drone " + m.Drone
	if m.Fleet != "" {
		target = "fleet " + m.Fleet
	}
	via := "registry"
	if m.Image.Transfer == mqttapi.TransferMQTT {
		via = "mqtt"
	}
	fmt.Fprintf(o.e.stdout, "pushed %s to %s: serial %d (previous %d), image %s via %s, expires %s, signed by key %s, retained on %s\n",
		m.Version, target, m.Serial, r.PrevSerial, m.Image.Ref, via, m.ExpiresAt.Format(time.RFC3339), r.KeyID, r.Topic)
}

func (o *output) transferStats(t *transfer.Stats) {
	if o.json {
		o.line(map[string]any{"transfer_stats": t})
		return
	}
	fmt.Fprintf(o.e.stdout, "transfer %s: %d chunks of %d bytes, %d held before, %d sent (%d again), %.1f MB in %v, %.1f MB/s\n",
		t.Transfer, t.Count, t.ChunkSize, t.HeldAtStart, t.Sent, t.Resent, float64(t.BytesSent)/1e6, t.Elapsed.Round(time.Millisecond), t.MBps())
}

func (o *output) transferProgress(p transfer.SendProgress) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.tstart.IsZero() {
		o.tstart = time.Now()
	}
	o.tbytes, o.tsize = p.HeldBytes, p.Size
	switch {
	case o.json:
		o.enc.Encode(map[string]any{"transfer": p})
	case o.tty:
		if o.tbar == nil {
			o.tbar = progressbar.NewOptions64(p.Size, progressbar.OptionSetWriter(o.e.stdout),
				progressbar.OptionSetDescription("sending image"), progressbar.OptionShowBytes(true),
				progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionSetPredictTime(true))
		}
		o.tbar.Set64(p.HeldBytes)
	default:
		tenth := int(p.HeldBytes * 10 / max(p.Size, 1))
		if tenth != o.tlast {
			o.tlast = tenth
			fmt.Fprintf(o.e.stdout, "transfer %s: %d/%d chunks, %.2f/%.2f MB (%d%%)",
				p.Transfer, p.Held, p.Count, float64(p.HeldBytes)/1e6, float64(p.Size)/1e6, tenth*10)
			if el := time.Since(o.tstart).Seconds(); el > 0.1 {
				fmt.Fprintf(o.e.stdout, ", %.1f MB/s", float64(p.HeldBytes)/1e6/el)
			}
			fmt.Fprintln(o.e.stdout)
		}
	}
}

func (o *output) transferDone() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.tbar != nil && !o.tdone {
		o.tbar.Finish()
		fmt.Fprintln(o.e.stdout)
	}
	o.tdone = true
}

// follow watches update serial of drone id to its end and prints it.
func (o *output) follow(ctx context.Context, w *ground.Watcher, id string, serial uint64) int {
	var bar *progressbar.ProgressBar
	if o.tty {
		bar = progressbar.NewOptions(len(ground.Phases)-1, progressbar.OptionSetWriter(o.e.stdout),
			progressbar.OptionSetDescription(fmt.Sprintf("%s waiting", id)), progressbar.OptionSetWidth(24),
			progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(true), progressbar.OptionSetPredictTime(false),
			progressbar.OptionSetRenderBlankState(true), progressbar.OptionThrottle(0))
	} else if !o.json {
		if serial != 0 {
			fmt.Fprintf(o.e.stdout, "watching drone %s update %d\n", id, serial)
		}
	}
	on := func(ev mqttapi.Event) {
		switch {
		case o.json:
			o.line(map[string]any{"event": ev})
		case bar != nil:
			desc := fmt.Sprintf("%s %s", id, ev.Phase)
			if f := ev.Figures; f != nil && f.PullTotal > 0 {
				desc += fmt.Sprintf(" %.1f/%.1f MB", float64(f.PullBytes)/1e6, float64(f.PullTotal)/1e6)
			}
			bar.Describe(desc)
			if i := ground.PhaseIndex(ev.Phase); i >= 0 {
				bar.Set(i)
			}
		default:
			fmt.Fprintln(o.e.stdout, eventLine(ev))
		}
	}
	out, err := w.Wait(ctx, serial, on)
	if bar != nil {
		if out.Committed() {
			bar.Finish()
		}
		fmt.Fprintln(o.e.stdout)
	}
	if out.Result != "" {
		o.outcome(out)
	}
	if err != nil {
		return fail(o.e, "watch", err)
	}
	return ExitOK
}

func (o *output) followRequest(ctx context.Context, w *ground.Watcher, req mqttapi.Request) int {
	on := func(ev mqttapi.Event) {
		if o.json {
			o.line(map[string]any{"event": ev})
		} else {
			fmt.Fprintln(o.e.stdout, eventLine(ev))
		}
	}
	out, err := w.WaitRequest(ctx, req, on)
	if out.Result != "" {
		o.outcome(out)
	}
	if err != nil {
		return fail(o.e, req.Kind, err)
	}
	return ExitOK
}

func eventLine(ev mqttapi.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", ev.At.Local().Format("15:04:05.000"), ev.Drone)
	if ev.Serial != 0 {
		fmt.Fprintf(&b, " #%d", ev.Serial)
	}
	fmt.Fprintf(&b, " %s", ev.Phase)
	if ev.ElapsedMS > 0 {
		fmt.Fprintf(&b, " +%.0fms", ev.ElapsedMS)
	}
	if f := ev.Figures; f != nil && f.PullTotal > 0 {
		fmt.Fprintf(&b, " %.1f/%.1f MB", float64(f.PullBytes)/1e6, float64(f.PullTotal)/1e6)
	}
	if ev.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", ev.Reason)
	}
	if ev.Error != "" {
		fmt.Fprintf(&b, " error=%q", ev.Error)
	}
	return b.String()
}

// outcome prints the result with its figures.
func (o *output) outcome(out ground.Outcome) {
	if o.json {
		o.line(map[string]any{"outcome": out})
		return
	}
	w := o.e.stdout
	what := "update"
	if out.Kind != "" && out.Kind != mqttapi.KindUpdate {
		what = out.Kind
	}
	fmt.Fprintf(w, "drone %s %s %d", out.Drone, what, out.Serial)
	if out.Version != "" {
		fmt.Fprintf(w, " (version %s)", out.Version)
	}
	fmt.Fprintf(w, ": %s", strings.ToUpper(out.Result))
	if out.Reason != "" {
		fmt.Fprintf(w, ", reason %s", out.Reason)
	}
	fmt.Fprintln(w)
	if out.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", out.Error)
	}
	f := out.Figures
	phases := phaseTimes(out)
	if f != nil && len(f.PhaseMS) > 0 {
		phases = f.PhaseMS
	}
	if len(phases) > 0 {
		fmt.Fprintf(w, "  phases:")
		for _, p := range ground.Phases {
			if ms, ok := phases[string(p)]; ok {
				fmt.Fprintf(w, " %s %.0fms", p, ms)
			}
		}
		for _, k := range sortedKeys(phases) {
			if ground.PhaseIndex(mqttapi.Phase(k)) < 0 {
				fmt.Fprintf(w, " %s %.0fms", k, phases[k])
			}
		}
		fmt.Fprintln(w)
	}
	if f == nil {
		return
	}
	if f.PullTotal > 0 {
		fmt.Fprintf(w, "  image: %.1f MB fetched\n", float64(f.PullTotal)/1e6)
	}
	if f.SwitchTick > 0 || f.ControlGapMS > 0 {
		fmt.Fprintf(w, "  switch at tick %d: control gap %.2f ms (period %.2f ms), missed ticks %d\n", f.SwitchTick, f.ControlGapMS, f.ControlPeriodMS, f.MissedTicks)
	}
	if f.SyncMS > 0 || f.ShadowTicks > 0 {
		fmt.Fprintf(w, "  sync %.1f ms, shadow %d ticks, divergence %.4f\n", f.SyncMS, f.ShadowTicks, f.Divergence)
	}
	if f.MaxAttDevDeg > 0 || f.MaxAltDevM > 0 {
		fmt.Fprintf(w, "  max deviation: attitude %.2f°, altitude %.3f m\n", f.MaxAttDevDeg, f.MaxAltDevM)
	}
	for _, k := range sortedKeys(f.Extra) {
		fmt.Fprintf(w, "  %s: %g\n", k, f.Extra[k])
	}
}

// phaseTimes derives the time spent in each phase from the phase changes
// seen, when the drone's figures do not carry them.
func phaseTimes(out ground.Outcome) map[string]float64 {
	if len(out.Phases) < 2 {
		return nil
	}
	m := map[string]float64{}
	for i := 0; i+1 < len(out.Phases); i++ {
		m[string(out.Phases[i].Phase)] += float64(out.Phases[i+1].At.Sub(out.Phases[i].At).Microseconds()) / 1000
	}
	return m
}

func sortedKeys(m map[string]float64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
