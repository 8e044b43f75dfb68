package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/inflight-ota/inflight/flightctl"
	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/chips"
	"github.com/inflight-ota/inflight/sim/trace"
)

// Faults the handoff scenario can inject into its first handoff.
const (
	FaultNone         = ""
	FaultV2Die        = "v2-die"       // v2 SIGKILLs itself in FaultPhase
	FaultV1Die        = "v1-die"       // v1 SIGKILLs itself in FaultPhase
	FaultV2Stall      = "v2-stall"     // v2 SIGSTOPs itself after the switch (active:<ticks>)
	FaultCorrupt      = "corrupt"      // v1 sends a corrupted frame (a TICK in shadow)
	FaultIncompatible = "incompatible" // v2 declares state schema 99
	FaultWrongGains   = "wrong-gains"  // v2 runs with every gain ×2.5: it diverges in shadow
)

// Faults lists the faults, for flags and docs.
var Faults = []string{FaultV2Die, FaultV1Die, FaultV2Stall, FaultCorrupt, FaultIncompatible, FaultWrongGains}

// HandoffOptions configure FlyHandoffs. Zero fields take defaults.
type HandoffOptions struct {
	Handoffs   int           // handoffs in a row; default 1
	AltM       float64       // hover altitude; default 2 m
	Settle     time.Duration // hover before the first handoff; default 4 s
	Between    time.Duration // steady hover between handoffs; default 0.5 s
	Probation  time.Duration // handoff_start's probation; default 1 s
	Gusts      bool
	NoNoise    bool
	Seed       uint64 // default 1
	RateHz     float64
	NoRT       bool
	Fault      string // one of Faults, injected into the first handoff
	FaultPhase string // the phase for v1-die / v2-die (default shadow / active:200)
	TracePath  string
	Flightctl  string
	RunDir     string
	Logger     *slog.Logger
	// FlightctlLog receives every controller's stderr.
	FlightctlLog io.Writer
	// Strategy, for Compare: "inflight" (default), "stop-start" or
	// "handover-nostate".
	Strategy string
}

// HandoffResult is the figures of a handoff flight (docs/bench.md).
type HandoffResult struct {
	Scenario            string             `json:"scenario"`
	Strategy            string             `json:"strategy,omitempty"`
	Fault               string             `json:"fault,omitempty"`
	FaultResult         string             `json:"fault_result,omitempty"`
	Handoffs            int                `json:"handoffs"`
	HandoffsOK          int                `json:"handoffs_ok"`
	HandoffsAborted     int                `json:"handoffs_aborted"`
	Rollbacks           int                `json:"rollbacks"`
	Crashed             bool               `json:"crashed"`
	CrashReason         string             `json:"crash_reason,omitempty"`
	Landed              bool               `json:"landed"`
	SwitchGapMaxMS      float64            `json:"switch_gap_max_ms"`
	SwitchGapP50MS      float64            `json:"switch_gap_p50_ms"`
	AckTicksMax         int                `json:"ack_ticks_max"`    // committed handoffs: v1's ticks from SWITCH to SWITCH_ACK, worst
	AckDelayMaxMS       float64            `json:"ack_delay_max_ms"` // v1's release → SWITCH_ACK processed, worst
	AckDelayP50MS       float64            `json:"ack_delay_p50_ms"` // and median
	ControlPeriodMS     float64            `json:"control_period_ms"`
	MissedTicks         int                `json:"missed_ticks"`
	WindowIntervals     int                `json:"window_intervals"`
	MissedPct           float64            `json:"missed_percent"`
	BaselineMissedTicks int                `json:"baseline_missed_ticks"`
	BaselineIntervals   int                `json:"baseline_intervals"`
	BaselineMissedPct   float64            `json:"baseline_missed_percent"`
	WindowS             float64            `json:"window_s"`
	BaselineS           float64            `json:"baseline_s"`
	MaxPWMGapMS         float64            `json:"max_pwm_gap_ms"`
	TwoWriterEvents     int                `json:"two_writer_events"`
	ReinitEvents        int                `json:"reinit_events"`
	MaxAttDevDeg        float64            `json:"max_att_dev_deg"`
	MaxAltDevM          float64            `json:"max_alt_dev_m"`
	AltDropM            float64            `json:"alt_drop_m"`
	PhaseP50MS          map[string]float64 `json:"phase_p50_ms"`
	Each                []HandoffOne       `json:"each"`
	SimS                float64            `json:"sim_s"`
	TracePath           string             `json:"trace,omitempty"`
}

// HandoffOne is one handoff's outcome and figures.
type HandoffOne struct {
	From          string             `json:"from"`
	To            string             `json:"to"`
	Schemas       string             `json:"schemas"` // "1->2"
	Result        string             `json:"result"`  // committed, aborted, rolled-back, crashed, ...
	Code          string             `json:"code,omitempty"`
	Detail        string             `json:"detail,omitempty"`
	SwitchGapMS   float64            `json:"switch_gap_ms"`     // the drone's view: outgoing's last write → incoming's first
	CtlGapMS      float64            `json:"control_gap_ms"`    // the controllers' view (CLOCK_MONOTONIC)
	AckTicks      int                `json:"ack_ticks"`         // v1: ticks from SWITCH to SWITCH_ACK (0: no ack)
	AckDelayMS    float64            `json:"ack_delay_ms"`      // v1: release → SWITCH_ACK processed
	MissedTicks   int                `json:"missed_ticks"`      // PWM intervals > 1.5 periods in the window
	MaxAttDevDeg  float64            `json:"max_att_dev_deg"`   // true attitude vs the second before
	MaxAltDevM    float64            `json:"max_alt_dev_m"`     // true altitude vs the second before
	AltDropM      float64            `json:"alt_drop_m"`        // lowest altitude in the window below the second before
	MaxDivergence float64            `json:"max_divergence_us"` // v2's shadow divergence
	WindowS       float64            `json:"window_s"`          // handoff_start → the outgoing controller gone (or the end)
	Durations     map[string]float64 `json:"durations_ms"`      // v2's phases
	from, to      float64
}

func (o *HandoffOptions) defaults() {
	if o.Handoffs <= 0 {
		o.Handoffs = 1
	}
	if o.AltM == 0 {
		o.AltM = 2
	}
	if o.Settle == 0 {
		o.Settle = 4 * time.Second
	}
	if o.Between == 0 {
		o.Between = 500 * time.Millisecond
	}
	if o.Probation == 0 {
		o.Probation = time.Second
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.RateHz == 0 {
		o.RateHz = 400
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Strategy == "" {
		o.Strategy = "inflight"
	}
}

// pwmLog keeps every PWM write the drone saw.
type pwmLog struct {
	mu sync.Mutex
	t  []float64
	w  []string
}

func (p *pwmLog) add(name string, t time.Duration) {
	p.mu.Lock()
	p.t = append(p.t, t.Seconds())
	p.w = append(p.w, name)
	p.mu.Unlock()
}

// intervals counts PWM write intervals ending inside [from, to] and those
// over limit s.
func (p *pwmLog) intervals(from, to, limit float64) (n, over int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.SearchFloat64s(p.t, from)
	for i = max(i, 1); i < len(p.t) && p.t[i] <= to; i++ {
		n++
		if p.t[i]-p.t[i-1] > limit {
			over++
		}
	}
	return
}

// switchGap is the first change of writer inside [from, to], and its gap.
func (p *pwmLog) switchGap(from, to float64) (float64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.SearchFloat64s(p.t, from)
	for i = max(i, 1); i < len(p.t) && p.t[i] <= to; i++ {
		if p.w[i] != p.w[i-1] {
			return (p.t[i] - p.t[i-1]) * 1e3, true
		}
	}
	return 0, false
}

// proc is one flightctl process.
type proc struct {
	name   string
	schema int
	cmd    *exec.Cmd
	exited chan error
	log    tailBuffer
	ctl    *control
}

func (p *proc) alive() bool {
	select {
	case err := <-p.exited:
		p.exited <- err
		return false
	default:
		return true
	}
}

func (p *proc) kill() {
	if p.alive() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.exited
	p.exited <- nil
	if p.ctl != nil {
		p.ctl.Close()
	}
}

// waitExit waits up to d for the process to end.
func (p *proc) waitExit(d time.Duration) bool {
	select {
	case err := <-p.exited:
		p.exited <- err
		return true
	case <-time.After(d):
		return false
	}
}

// flight is a bench drone with its controllers.
type flight struct {
	o       *HandoffOptions
	dir     string
	bin     string
	busPath string
	drone   *sim.Drone
	clock   func() time.Duration
	pwm     *pwmLog
	log     *slog.Logger
	n       int
}

func (f *flight) start(ctx context.Context, role string, schema int, extra ...string) (*proc, error) {
	name := fmt.Sprintf("fc-%d", f.n)
	f.n++
	args := []string{"--bus", "unix://" + f.busPath, "--run-dir", f.dir, "--rate", fmt.Sprint(f.o.RateHz),
		"--name", name, "--role", role, "--state-schema", fmt.Sprint(schema),
		"--version-label", fmt.Sprintf("%d.0.0-%s", schema, name), "--handoff-shadow", "3s"}
	if !f.o.NoRT {
		args = append(args, "--rt")
	}
	args = append(args, extra...)
	p := &proc{name: name, schema: schema, cmd: exec.Command(f.bin, args...), exited: make(chan error, 1)}
	p.cmd.Stderr = &p.log
	if f.o.FlightctlLog != nil {
		p.cmd.Stderr = io.MultiWriter(&p.log, f.o.FlightctlLog)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start flightctl: %v", ErrFlight, err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	ctl, err := dialControl(ctx, filepath.Join(f.dir, flightctl.ControlSocketNameOf(name)), p.exited)
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("%w: %s: %v\n%s", ErrFlight, name, err, p.log.String())
	}
	p.ctl = ctl
	f.log.Info("controller started", "name", name, "role", role, "schema", schema, "args", strings.Join(extra, " "))
	return p, nil
}

func (f *flight) now() float64 { return f.clock().Seconds() }

func (f *flight) crashed() bool { _, c := f.drone.State(); return c }

// sleep waits d or until the drone crashed.
func (f *flight) sleep(ctx context.Context, d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) && !f.crashed() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

// FlyHandoffs flies, hands the flight over N times in a row while hovering
// (each new controller to the next, alternating state schemas 1 and 2), lands
// and returns the figures.
func FlyHandoffs(ctx context.Context, o HandoffOptions) (HandoffResult, error) {
	o.defaults()
	res := HandoffResult{Scenario: "handoff", Fault: o.Fault, Handoffs: o.Handoffs, ControlPeriodMS: 1000 / o.RateHz}
	timeout := o.Settle + time.Duration(o.Handoffs)*(o.Probation+o.Between+15*time.Second) + 60*time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dir := o.RunDir
	if dir == "" {
		d, err := os.MkdirTemp("", "inflight-handoff-")
		if err != nil {
			return res, fmt.Errorf("%w: %v", ErrFlight, err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	bin, err := FlightctlBinary(ctx, o.Flightctl, dir)
	if err != nil {
		return res, err
	}
	tracePath := o.TracePath
	if tracePath == "" {
		tracePath = filepath.Join(dir, "trace.jsonl")
	} else {
		res.TracePath = tracePath
	}
	tf, err := os.Create(tracePath)
	if err != nil {
		return res, fmt.Errorf("%w: trace: %v", ErrFlight, err)
	}
	defer tf.Close()
	tw := bufio.NewWriterSize(tf, 1<<16)
	start := time.Now()
	clock := func() time.Duration { return time.Since(start) }
	pwm := &pwmLog{}
	so := sim.Options{Gusts: o.Gusts, Seed: o.Seed, Trace: tw, Clock: clock, Logger: o.Logger, OnPWM: pwm.add}
	if o.NoNoise {
		so.Noise = &chips.Noise{}
	}
	drone := sim.New(&so)
	busPath := filepath.Join(dir, "bus.sock")
	ln, err := sim.Listen(busPath)
	if err != nil {
		return res, fmt.Errorf("%w: %v", ErrFlight, err)
	}
	dctx, dcancel := context.WithCancel(context.Background())
	var dwg sync.WaitGroup
	var droneErr error
	dwg.Add(2)
	go func() { defer dwg.Done(); droneErr = drone.Run(dctx) }()
	go func() { defer dwg.Done(); _ = sim.ServeListener(dctx, ln, drone, o.Logger) }()
	stopDrone := func() { dcancel(); dwg.Wait() }
	defer stopDrone()

	f := &flight{o: &o, dir: dir, bin: bin, busPath: busPath, drone: drone, clock: clock, pwm: pwm, log: o.Logger}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()

	// v1: a cold start, with the mission's hover long enough for every handoff.
	schemaOf := func(i int) int { return 1 + i%2 }
	var v1Extra []string
	if o.Fault == FaultV1Die {
		ph := o.FaultPhase
		if ph == "" {
			ph = "shadow:10"
		}
		v1Extra = append(v1Extra, "--debug-die-in", ph)
	}
	if o.Fault == FaultCorrupt {
		// Frames of v1: HELLO 1, HELLO_ACK 2, SNAPSHOT 3, then TICKs: corrupt
		// the 20th TICK, in shadow.
		v1Extra = append(v1Extra, "--debug-corrupt-frame", "23")
	}
	cur, err := f.start(ctx, "cold", schemaOf(0), append(v1Extra, "--mission", fmt.Sprintf("takeoff:%gm,hover:3600s,land", o.AltM))...)
	if err != nil {
		return res, err
	}
	procs = append(procs, cur)

	// Climb and settle.
	var hoverAt float64 = -1
	for hoverAt < 0 {
		if ctx.Err() != nil || f.crashed() || !cur.alive() {
			return res, fmt.Errorf("%w: no hover reached:\n%s", ErrFlight, cur.log.String())
		}
		st, err := cur.ctl.status()
		if err != nil {
			return res, fmt.Errorf("%w: status: %v", ErrFlight, err)
		}
		if st.Mode == "hover" {
			hoverAt = f.now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.sleep(ctx, o.Settle)
	steadyFrom := f.now()

	switch o.Strategy {
	case "stop-start", "handover-nostate":
		if err := f.replaceNaively(ctx, &o, &res, &cur, &procs); err != nil {
			return res, err
		}
	default:
		for i := 0; i < o.Handoffs && !f.crashed() && ctx.Err() == nil; i++ {
			one, next, err := f.handoff(ctx, &o, cur, schemaOf(i+1), i == 0)
			if next != nil {
				procs = append(procs, next)
			}
			if err != nil {
				return res, err
			}
			res.Each = append(res.Each, one)
			if one.Result == "committed" {
				cur = next
			}
			f.sleep(ctx, o.Between)
		}
	}

	// A baseline stretch of steady hover as long as the handoff windows.
	var windows float64
	for _, e := range res.Each {
		windows += e.to - e.from
	}
	var between float64
	last := steadyFrom
	for _, e := range res.Each {
		between += e.from - last
		last = e.to
	}
	between += f.now() - last
	if need := windows - between; need > 0 && !f.crashed() {
		f.sleep(ctx, time.Duration(need*float64(time.Second)))
	}
	steadyTo := f.now()

	// Land with whoever flies now.
	landed := false
	if !f.crashed() && cur.alive() {
		if err := cur.ctl.do(`{"v":1,"cmd":"land"}`, nil); err != nil {
			f.log.Warn("land", "controller", cur.name, "err", err)
		} else {
			for ctx.Err() == nil && !f.crashed() && cur.alive() {
				st, err := cur.ctl.status()
				if err != nil {
					break
				}
				if st.Mode == "disarmed" {
					landed = true
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	time.Sleep(50 * time.Millisecond)
	for _, p := range procs {
		if p.alive() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			if !p.waitExit(3 * time.Second) {
				p.kill()
			}
		}
	}
	stopDrone()
	if err := tw.Flush(); err != nil {
		return res, fmt.Errorf("%w: trace: %v", ErrFlight, err)
	}
	tf.Close()
	if droneErr != nil {
		return res, fmt.Errorf("%w: drone: %v", ErrFlight, droneErr)
	}
	tr, err := trace.ReadFile(tracePath)
	if err != nil {
		return res, fmt.Errorf("%w: read trace: %v", ErrFlight, err)
	}
	sum := drone.Summary()
	state, _ := drone.State()
	res.Crashed, res.CrashReason = sum.Crashed, sum.CrashReason
	res.TwoWriterEvents, res.ReinitEvents, res.MaxPWMGapMS = sum.TwoWriterEvents, sum.ReinitEvents, sum.MaxPWMGapMS
	res.SimS = sum.SimS
	res.Landed = landed && !res.Crashed && state.OnGround
	f.figures(&res, tr, steadyFrom, steadyTo)
	return res, nil
}

// handoff runs one handoff from cur to a new standby.
func (f *flight) handoff(ctx context.Context, o *HandoffOptions, cur *proc, schema int, first bool) (HandoffOne, *proc, error) {
	one := HandoffOne{From: cur.name, Schemas: fmt.Sprintf("%d->%d", cur.schema, schema)}
	var extra []string
	if first {
		switch o.Fault {
		case FaultV2Die:
			ph := o.FaultPhase
			if ph == "" {
				ph = "active:200"
			}
			extra = append(extra, "--debug-die-in", ph)
		case FaultV2Stall:
			ph := o.FaultPhase
			if ph == "" {
				ph = "active:200"
			}
			extra = append(extra, "--debug-stall-in", ph)
		case FaultIncompatible:
			schema = 99
			one.Schemas = fmt.Sprintf("%d->99", cur.schema)
		case FaultWrongGains:
			extra = append(extra, "--gain-scale", "2.5")
		}
	}
	declared := schema
	next, err := f.start(ctx, "standby", declared, extra...)
	if err != nil {
		return one, nil, err
	}
	one.To = next.name
	// The handoff socket exists once the standby listens.
	hs := filepath.Join(f.dir, flightctl.HandoffSocketNameOf(next.name))
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(hs); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let the new process settle (as the agent waits for its status) before
	// the window opens.
	f.sleep(ctx, 300*time.Millisecond)
	one.from = f.now()
	req := fmt.Sprintf(`{"v":1,"cmd":"handoff_start","to":%q,"peer":%q,"probation_ms":%d,"allowed_phases":["hover"],"update_id":"bench-%s"}`,
		flightctl.HandoffSocketNameOf(next.name), next.name, o.Probation.Milliseconds(), next.name)
	if err := cur.ctl.do(req, nil); err != nil {
		one.Result, one.Detail = "start-refused", err.Error()
		one.to = f.now()
		next.kill()
		return one, next, nil
	}
	// Follow both sides until the handoff ends.
	deadline := time.Now().Add(o.Probation + 30*time.Second)
	var v1p, v2p flightctl.HandoffProgress
	v1Known, v2Known := false, false
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if cur.alive() {
			var p flightctl.HandoffProgress
			if err := cur.ctl.do(`{"v":1,"cmd":"handoff_progress"}`, &p); err == nil {
				v1p, v1Known = p, true
			}
		}
		if next.alive() {
			var p flightctl.HandoffProgress
			if err := next.ctl.do(`{"v":1,"cmd":"handoff_progress"}`, &p); err == nil {
				v2p, v2Known = p, true
			}
		}
		v1End := !cur.alive() || (v1Known && v1p.Phase.Terminal() && (v1p.Writing || v1p.Phase.String() == "done"))
		v2End := !next.alive() || (v2Known && v2p.Phase.Terminal())
		// v1 flying again (aborted, rolled back) ends the window even when
		// v2 does not answer (a stalled v2: the bench, as the agent, kills it).
		if f.crashed() || (v1End && v2End) || (v1Known && v1p.Phase.Terminal() && v1p.Writing) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The window ends when the outgoing controller is gone (committed) or
	// flies again (aborted, rolled back).
	switch {
	case f.crashed():
		one.Result = "crashed"
	case v2Known && v2p.Phase.String() == "committed":
		one.Result = "committed"
		if !cur.waitExit(3 * time.Second) {
			one.Detail = "v1 did not exit after probation"
		}
	case v1Known && (v1p.Phase.String() == "rolled-back" || v2p.Phase.String() == "rolled-back"):
		one.Result = "rolled-back"
	case v1Known && v1p.Phase.String() == "aborted" || v2Known && v2p.Phase.String() == "aborted":
		one.Result = "aborted"
	default:
		one.Result = "unknown"
	}
	// The report with the reason: v1's when it flies on, else v2's.
	rep := v2p
	if one.Result != "committed" && v1Known {
		rep = v1p
	}
	one.Code, one.Detail = rep.Code.String(), strings.TrimSpace(rep.Detail+" "+one.Detail)
	if v1Known {
		one.AckTicks, one.AckDelayMS = v1p.AckTicks, ms(v1p.AckDelay)
	}
	if v2Known {
		one.CtlGapMS = v2p.ControlGapMS
		one.MaxDivergence = r3(v2p.MaxDivergence)
		d := v2p.Durations
		one.Durations = map[string]float64{"hello": ms(d.Hello), "sync": ms(d.Sync), "shadow": ms(d.Shadow), "switch": ms(d.Switch), "probation": ms(d.Probation)}
	}
	if one.Result != "committed" {
		// The standby exits by itself after an abort; make sure.
		if !next.waitExit(3 * time.Second) {
			next.kill()
		}
	}
	one.to = f.now()
	one.WindowS = r3(one.to - one.from)
	f.log.Info("handoff", "from", one.From, "to", one.To, "result", one.Result, "code", one.Code, "detail", one.Detail)
	return one, next, nil
}

func ms(d time.Duration) float64 { return r3(d.Seconds() * 1e3) }

// figures fills the per-handoff and overall figures from the PWM log and the trace.
func (f *flight) figures(res *HandoffResult, tr *trace.Trace, steadyFrom, steadyTo float64) {
	period := 1 / f.o.RateHz
	limit := 1.5 * period
	var gaps, acks []float64
	phases := map[string][]float64{}
	for i := range res.Each {
		e := &res.Each[i]
		switch e.Result {
		case "committed", "replaced":
			res.HandoffsOK++
		case "rolled-back":
			res.Rollbacks++
		default:
			res.HandoffsAborted++
		}
		if g, ok := f.pwm.switchGap(e.from, e.to); ok {
			e.SwitchGapMS = r3(g)
			if e.Result == "committed" || e.Result == "replaced" {
				gaps = append(gaps, g)
			}
		}
		if e.Result == "committed" && e.AckDelayMS > 0 {
			acks = append(acks, e.AckDelayMS)
			res.AckTicksMax = max(res.AckTicksMax, e.AckTicks)
		}
		n, over := f.pwm.intervals(e.from, e.to, limit)
		e.MissedTicks = over
		res.MissedTicks += over
		res.WindowIntervals += n
		res.WindowS += e.to - e.from
		dev(tr, e.from, e.to, &e.MaxAttDevDeg, &e.MaxAltDevM, &e.AltDropM)
		res.MaxAttDevDeg = math.Max(res.MaxAttDevDeg, e.MaxAttDevDeg)
		res.MaxAltDevM = math.Max(res.MaxAltDevM, e.MaxAltDevM)
		res.AltDropM = math.Max(res.AltDropM, e.AltDropM)
		for k, v := range e.Durations {
			if e.Result == "committed" {
				phases[k] = append(phases[k], v)
			}
		}
	}
	// Baseline: the steady hover outside the windows.
	last := steadyFrom
	addBase := func(a, b float64) {
		if b > a {
			n, over := f.pwm.intervals(a, b, limit)
			res.BaselineIntervals += n
			res.BaselineMissedTicks += over
			res.BaselineS += b - a
		}
	}
	for _, e := range res.Each {
		addBase(last, e.from)
		last = e.to
	}
	addBase(last, steadyTo)
	if res.WindowIntervals > 0 {
		res.MissedPct = r3(100 * float64(res.MissedTicks) / float64(res.WindowIntervals))
	}
	if res.BaselineIntervals > 0 {
		res.BaselineMissedPct = r3(100 * float64(res.BaselineMissedTicks) / float64(res.BaselineIntervals))
	}
	res.WindowS, res.BaselineS = r3(res.WindowS), r3(res.BaselineS)
	res.MaxAttDevDeg, res.MaxAltDevM, res.AltDropM = r3(res.MaxAttDevDeg), r4(res.MaxAltDevM), r4(res.AltDropM)
	sort.Float64s(gaps)
	if len(gaps) > 0 {
		res.SwitchGapMaxMS = r3(gaps[len(gaps)-1])
		res.SwitchGapP50MS = r3(gaps[len(gaps)/2])
	}
	sort.Float64s(acks)
	if len(acks) > 0 {
		res.AckDelayMaxMS = r3(acks[len(acks)-1])
		res.AckDelayP50MS = r3(acks[len(acks)/2])
	}
	res.PhaseP50MS = map[string]float64{}
	for k, v := range phases {
		sort.Float64s(v)
		res.PhaseP50MS[k] = r3(v[len(v)/2])
	}
}

// dev: the worst true attitude and altitude deviation in [from, to] against
// the mean of the second before from, and the largest drop below it.
func dev(tr *trace.Trace, from, to float64, att, alt, drop *float64) {
	var n int
	var z, r, p float64
	for i := range tr.Samples {
		s := &tr.Samples[i]
		if s.T >= from-1 && s.T < from {
			z += s.Z
			r += s.Roll
			p += s.Pitch
			n++
		}
	}
	if n == 0 {
		return
	}
	z, r, p = z/float64(n), r/float64(n), p/float64(n)
	for i := range tr.Samples {
		s := &tr.Samples[i]
		if s.T < from || s.T > to {
			continue
		}
		*att = math.Max(*att, r3(math.Hypot(s.Roll-r, s.Pitch-p)))
		*alt = math.Max(*alt, r4(math.Abs(s.Z-z)))
		*drop = math.Max(*drop, r4(z-s.Z))
	}
}

// MarshalJSON-free helper for the CLI.
func (r HandoffResult) JSON() string {
	b, _ := json.Marshal(r)
	return string(b)
}

// replaceNaively replaces the controller the way the tools of today do
// (Compare): "stop-start" kills v1 and then starts v2 cold (Watchtower,
// Kanto, Mender's compose module: the container is stopped — docker stop's
// grace period ends in SIGKILL; our v1 would land on SIGTERM instead, which
// is no replacement in the air — then the new one starts); "handover-nostate"
// starts v2 warm beside v1 and then kills v1 (balena's hand-over): v2 takes
// the free PWM lock but has no flight state.
func (f *flight) replaceNaively(ctx context.Context, o *HandoffOptions, res *HandoffResult, cur **proc, procs *[]*proc) error {
	one := HandoffOne{From: (*cur).name, Schemas: "1->2", Durations: map[string]float64{}}
	one.from = f.now()
	mission := fmt.Sprintf("takeoff:%gm,hover:3600s,land", o.AltM)
	var next *proc
	var err error
	switch o.Strategy {
	case "stop-start":
		(*cur).kill()
		next, err = f.start(ctx, "cold", 2, "--mission", mission)
	default:
		next, err = f.start(ctx, "active", 2, "--mission", mission)
		if err == nil {
			f.sleep(ctx, 300*time.Millisecond)
			(*cur).kill()
		}
	}
	if err != nil {
		// A cold start may refuse in the air; the drone has no controller.
		one.Detail = err.Error()
		f.sleep(ctx, 6*time.Second)
	} else {
		*procs = append(*procs, next)
		one.To = next.name
		f.sleep(ctx, 6*time.Second)
		*cur = next
	}
	one.to = f.now()
	one.WindowS = r3(one.to - one.from)
	one.Result = "replaced"
	if f.crashed() {
		one.Result = "crashed"
	}
	res.Each = append(res.Each, one)
	return nil
}

// Strategies are the ways of replacing the controller Compare flies.
var Strategies = []string{"stop-start", "handover-nostate", "inflight"}

// Compare flies the same drone (same seed, a fresh hover each time) through
// each strategy in turn, one handoff each, and returns one row per strategy.
func Compare(ctx context.Context, o HandoffOptions) ([]HandoffResult, error) {
	var rows []HandoffResult
	for _, s := range Strategies {
		oo := o
		oo.Strategy, oo.Handoffs, oo.Fault = s, 1, ""
		r, err := FlyHandoffs(ctx, oo)
		r.Strategy = s
		r.Scenario = "compare"
		if err != nil {
			return rows, fmt.Errorf("strategy %s: %w", s, err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}
