package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/inflight-ota/inflight/flightctl"
	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/chips"
	"github.com/inflight-ota/inflight/sim/plot"
	"github.com/inflight-ota/inflight/sim/trace"
)

// FlyOptions configure a flight. The zero value flies a 30 s hover at 2 m.
type FlyOptions struct {
	Hover     time.Duration // hover duration; default 30 s
	AltM      float64       // takeoff altitude; default 2 m
	Gusts     bool          // wind gusts on
	NoNoise   bool          // noise-free sensors
	Seed      uint64        // gusts and sensor noise; default 1
	RateHz    float64       // flightctl --rate; default 400
	NoRT      bool          // do not pass flightctl --rt (SCHED_FIFO and mlockall, which it asks for by default)
	SkipS     float64       // seconds of hover skipped before the steady window; default 5
	TracePath string        // keep the drone's trace here (JSON Lines); default a temporary file
	PlotPath  string        // draw the flight here (PNG or SVG), if set
	// Flightctl is the flightctl binary. Default: "flightctl" beside the
	// running executable if there is one, else built with go build.
	Flightctl string
	// FlightctlArgs are passed to flightctl after the bench's own flags.
	FlightctlArgs []string
	// Timeout bounds the whole flight; default Hover + 90 s.
	Timeout time.Duration
	// RunDir is the run directory (bus socket, PWM lock, control socket);
	// default a new temporary directory, removed at the end.
	RunDir string
	Logger *slog.Logger
	// FlightctlLog receives flightctl's stderr; default: kept in the run
	// directory and its tail reported on failure.
	FlightctlLog io.Writer
}

// FlyResult is one flight's figures. Hover figures are over the steady hover
// window: from SkipS after the hover step began until the landing began.
type FlyResult struct {
	Scenario        string  `json:"scenario"`
	Gusts           bool    `json:"gusts"`
	Seed            uint64  `json:"seed"`
	Crashed         bool    `json:"crashed"`
	CrashReason     string  `json:"crash_reason,omitempty"`
	Landed          bool    `json:"landed"`
	HoverAltRMSEM   float64 `json:"hover_alt_rmse_m"`  // true altitude against the target
	HoverAttRMSDeg  float64 `json:"hover_att_rms_deg"` // true tilt (√(roll²+pitch²)), RMS
	HoverWindowS    float64 `json:"hover_window_s"`
	MaxAttDeg       float64 `json:"max_att_deg"` // largest true tilt while airborne
	TickHz          float64 `json:"tick_hz"`     // flightctl's own figures over the hover window
	TickP50JitterUS float64 `json:"tick_p50_jitter_us"`
	TickP99JitterUS float64 `json:"tick_p99_jitter_us"`
	Ticks           uint64  `json:"ticks"`
	MissedTicks     uint64  `json:"missed_ticks"`
	MissedTicksPct  float64 `json:"missed_ticks_percent"`
	Overruns        uint64  `json:"overruns"`
	IMUReadMeanUS   float64 `json:"imu_read_mean_us"` // wake-up to IMU sample over the socket bus
	IMUReadMaxUS    float64 `json:"imu_read_max_us"`
	RT              bool    `json:"rt"`
	MaxPWMGapMS     float64 `json:"max_pwm_gap_ms"` // longest gap between PWM writes the drone saw while the motors spun
	PWMWriteHz      float64 `json:"pwm_write_hz"`   // PWM writes per second over the flight
	TwoWriterEvents int     `json:"two_writer_events"`
	ReinitEvents    int     `json:"reinit_events"`
	FlightS         float64 `json:"flight_s"` // first takeoff to touchdown
	SimS            float64 `json:"sim_s"`
	EndMode         string  `json:"end_mode"`
	TracePath       string  `json:"trace,omitempty"`
	PlotPath        string  `json:"plot,omitempty"`
}

// ErrFlight wraps failures to fly (not a crash, which is a result).
var ErrFlight = errors.New("bench: flight")

func (o *FlyOptions) defaults() {
	if o.Hover == 0 {
		o.Hover = 30 * time.Second
	}
	if o.AltM == 0 {
		o.AltM = 2
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.RateHz == 0 {
		o.RateHz = 400
	}
	if o.SkipS == 0 {
		o.SkipS = 5
	}
	if o.Timeout == 0 {
		o.Timeout = o.Hover + 90*time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// FlightctlBinary returns path if set, else a flightctl beside the running
// executable, else one built with go build into dir.
func FlightctlBinary(ctx context.Context, path, dir string) (string, error) {
	if path != "" {
		return path, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "flightctl")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	out := filepath.Join(dir, "flightctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/inflight-ota/inflight/cmd/flightctl")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: go build flightctl (run inside the module, or pass the binary): %v\n%s", ErrFlight, err, b)
	}
	return out, nil
}

// Fly flies one mission takeoff:<alt>m,hover:<d>,land and returns its figures.
func Fly(ctx context.Context, o FlyOptions) (FlyResult, error) {
	o.defaults()
	log := o.Logger
	res := FlyResult{Scenario: "hover", Gusts: o.Gusts, Seed: o.Seed, RT: !o.NoRT}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	dir := o.RunDir
	if dir == "" {
		d, err := os.MkdirTemp("", "inflight-fly-")
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

	// The drone, on a clock we share so status times map onto trace times.
	start := time.Now()
	clock := func() time.Duration { return time.Since(start) }
	so := sim.Options{Gusts: o.Gusts, Seed: o.Seed, Trace: tw, Clock: clock, Logger: log}
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
	go func() { defer dwg.Done(); _ = sim.ServeListener(dctx, ln, drone, log) }()
	stopDrone := func() {
		dcancel()
		dwg.Wait()
	}
	defer stopDrone()

	// flightctl, a separate process.
	mission := fmt.Sprintf("takeoff:%gm,hover:%gs,land", o.AltM, o.Hover.Seconds())
	args := []string{"--bus", "unix://" + busPath, "--run-dir", dir, "--rate", fmt.Sprint(o.RateHz),
		"--mission", mission, "--name", "flightctl-v1"}
	if !o.NoRT {
		args = append(args, "--rt")
	}
	args = append(args, o.FlightctlArgs...)
	cmd := exec.Command(bin, args...)
	var logBuf tailBuffer
	cmd.Stderr = &logBuf
	if o.FlightctlLog != nil {
		cmd.Stderr = io.MultiWriter(&logBuf, o.FlightctlLog)
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("%w: start flightctl: %v", ErrFlight, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopCtl := func() error {
		if cmd.ProcessState != nil {
			return nil
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			exited <- err
			return err
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			err := <-exited
			exited <- err
			return err
		}
	}
	defer stopCtl()
	log.Info("flying", "flightctl", bin, "mission", mission, "run_dir", dir)

	// Watch the flight through the control socket.
	ctl, err := dialControl(ctx, filepath.Join(dir, flightctl.ControlSocketNameOf("flightctl-v1")), exited)
	if err != nil {
		return res, fmt.Errorf("%w: %v; flightctl said:\n%s", ErrFlight, err, logBuf.String())
	}
	defer ctl.Close()

	var (
		hoverStepAt = -1.0 // sim time the hover step began
		windowFrom  = -1.0
		windowTo    = -1.0
		takeoffAt   = -1.0
		landAt      = -1.0
		lastSt      flightctl.Status
		winStats    flightctl.Summary
		flyErr      error
	)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
poll:
	for {
		select {
		case <-ctx.Done():
			flyErr = fmt.Errorf("%w: timed out after %v in mode %s", ErrFlight, o.Timeout, lastSt.Mode)
			break poll
		case err := <-exited:
			exited <- err
			flyErr = fmt.Errorf("%w: flightctl exited (%v):\n%s", ErrFlight, err, logBuf.String())
			break poll
		case <-tick.C:
		}
		now := clock().Seconds()
		st, err := ctl.status()
		if err != nil {
			flyErr = fmt.Errorf("%w: status: %v", ErrFlight, err)
			break poll
		}
		lastSt = st
		if _, crashed := drone.State(); crashed {
			break poll
		}
		if takeoffAt < 0 && st.Mode == "takeoff" {
			takeoffAt = now
		}
		inHoverStep := st.MissionActive && st.MissionStep == 1 && st.Mode == "hover"
		if hoverStepAt < 0 && inHoverStep {
			hoverStepAt = now
		}
		if windowFrom < 0 && hoverStepAt >= 0 && now-hoverStepAt >= o.SkipS && inHoverStep {
			if err := ctl.do(`{"v":1,"cmd":"reset_stats"}`, nil); err != nil {
				flyErr = fmt.Errorf("%w: reset_stats: %v", ErrFlight, err)
				break poll
			}
			windowFrom = clock().Seconds()
		}
		if windowFrom >= 0 && windowTo < 0 && !inHoverStep {
			windowTo = now
			winStats = st.Ticks
		} else if windowFrom >= 0 && windowTo < 0 {
			winStats = st.Ticks
		}
		if landAt < 0 && st.Mode == "land" {
			landAt = now
		}
		if st.MissionDone && st.Mode == "disarmed" {
			break poll
		}
		if !st.MissionActive && !st.MissionDone && st.Mode == "disarmed" && takeoffAt >= 0 {
			flyErr = fmt.Errorf("%w: mission abandoned (reason %s)", ErrFlight, st.Reason)
			break poll
		}
	}
	endAt := clock().Seconds()
	if windowFrom >= 0 && windowTo < 0 {
		windowTo = endAt
	}
	ctlErr := stopCtl()
	time.Sleep(50 * time.Millisecond) // the last pulses reach the trace
	stopDrone()
	if err := tw.Flush(); err != nil {
		return res, fmt.Errorf("%w: trace: %v", ErrFlight, err)
	}
	tf.Close()
	if droneErr != nil {
		return res, fmt.Errorf("%w: drone: %v", ErrFlight, droneErr)
	}
	if ctlErr != nil && flyErr == nil {
		var ee *exec.ExitError
		if !errors.As(ctlErr, &ee) || ee.ExitCode() != -1 {
			log.Warn("flightctl exit", "err", ctlErr)
		}
	}

	tr, err := trace.ReadFile(tracePath)
	if err != nil {
		return res, fmt.Errorf("%w: read trace: %v", ErrFlight, err)
	}
	sum := drone.Summary()
	res.Crashed, res.CrashReason = sum.Crashed, sum.CrashReason
	res.TwoWriterEvents, res.ReinitEvents, res.MaxPWMGapMS = sum.TwoWriterEvents, sum.ReinitEvents, sum.MaxPWMGapMS
	res.SimS = sum.SimS
	if sum.SimS > 0 {
		res.PWMWriteHz = float64(sum.PWMWrites) / sum.SimS
	}
	res.EndMode = lastSt.Mode
	state, _ := drone.State()
	res.Landed = !res.Crashed && lastSt.MissionDone && lastSt.Mode == "disarmed" && state.OnGround
	figures(&res, tr, o.AltM, windowFrom, windowTo)
	res.TickHz = r3(winStats.RateHz)
	res.TickP50JitterUS, res.TickP99JitterUS = winStats.JitterP50US, winStats.JitterP99US
	res.Ticks, res.MissedTicks, res.Overruns = winStats.Ticks, winStats.Missed, winStats.Overruns
	res.MissedTicksPct = r3(winStats.MissedPercent)
	res.IMUReadMeanUS, res.IMUReadMaxUS = r3(winStats.MeanReadUS), r3(winStats.MaxReadUS)
	if o.PlotPath != "" {
		if err := plot.File(tr, o.PlotPath); err != nil {
			return res, fmt.Errorf("%w: plot: %v", ErrFlight, err)
		}
		res.PlotPath = o.PlotPath
	}
	return res, flyErr
}

// figures computes the hover and attitude figures from the trace.
func figures(res *FlyResult, tr *trace.Trace, alt, from, to float64) {
	var n int
	var sa, st float64
	first, last := -1.0, -1.0
	for i := range tr.Samples {
		s := &tr.Samples[i]
		tilt := math.Hypot(s.Roll, s.Pitch)
		if !s.Ground {
			res.MaxAttDeg = math.Max(res.MaxAttDeg, tilt)
			if first < 0 {
				first = s.T
			}
			last = s.T
		}
		if from >= 0 && s.T >= from && s.T <= to {
			d := s.Z - alt
			sa += d * d
			st += tilt * tilt
			n++
		}
	}
	if n > 0 {
		res.HoverAltRMSEM = r4(math.Sqrt(sa / float64(n)))
		res.HoverAttRMSDeg = r3(math.Sqrt(st / float64(n)))
		res.HoverWindowS = r3(to - from)
	}
	res.MaxAttDeg = r3(res.MaxAttDeg)
	if first >= 0 {
		res.FlightS = r3(last - first)
	}
}

func r3(v float64) float64 { return math.Round(v*1e3) / 1e3 }
func r4(v float64) float64 { return math.Round(v*1e4) / 1e4 }

// control is a client of flightctl's control socket.
type control struct {
	c  net.Conn
	sc *bufio.Scanner
}

func dialControl(ctx context.Context, path string, exited chan error) (*control, error) {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			sc := bufio.NewScanner(c)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			return &control{c: c, sc: sc}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("control socket %s: %v", path, err)
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("flightctl exited before serving its control socket (%v)", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *control) Close() error { return c.c.Close() }

func (c *control) do(req string, result any) error {
	c.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c.c, req+"\n"); err != nil {
		return err
	}
	if !c.sc.Scan() {
		if err := c.sc.Err(); err != nil {
			return err
		}
		return io.EOF
	}
	var r struct {
		OK     bool            `json:"ok"`
		Error  string          `json:"error"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(c.sc.Bytes(), &r); err != nil {
		return err
	}
	if !r.OK {
		return errors.New(r.Error)
	}
	if result != nil {
		return json.Unmarshal(r.Result, result)
	}
	return nil
}

func (c *control) status() (flightctl.Status, error) {
	var s flightctl.Status
	err := c.do(`{"v":1,"cmd":"status"}`, &s)
	return s, err
}

// tailBuffer keeps the last 16 KiB written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 16<<10 {
		t.b = append([]byte(nil), t.b[len(t.b)-16<<10:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
