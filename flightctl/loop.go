package flightctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"
)

// InputSource supplies each tick's inputs and paces the loop. The sensor
// source (SensorSource) sleeps to the next deadline and reads the sensors; a
// standby source (the handoff) blocks until the active controller's inputs of
// the next tick arrive.
type InputSource interface {
	// Next waits for the next tick and fills in every field of in except
	// Cmd (a standby source fills Cmd too, with the active controller's).
	// It must not allocate.
	Next(ctx context.Context, in *Inputs) error
}

// TickStarter is implemented by a source that paces the loop on the local
// clock: TickStart is when the current tick woke up, before reading the
// sensors. The loop's interval statistics use it, so they measure the
// loop's own timing and not the sensor read; other sources are timed when
// Next returns.
type TickStarter interface {
	TickStart() time.Duration
}

// OutputSink takes each tick's outputs: the PWM chip when active, nothing in
// standby. It must not allocate.
type OutputSink interface {
	Write(out *Outputs) error
}

// TickObserver sees every tick after its outputs were written: the handoff's
// per-tick stream. It must not allocate or block.
type TickObserver interface {
	ObserveTick(st *State, in *Inputs, out *Outputs)
}

// TickGate decides, once per tick after the source paced it and before it
// reads the sensors, whether this controller computes and writes the tick:
// the handoff's hold on the loop (its state machine runs inside Open). It
// must not allocate or block.
type TickGate interface {
	Open() bool
}

// ErrIdle is returned by a source's Next for a tick the controller does not
// compute (its gate is closed: a standby, or v1 after the switch). The loop
// counts the tick's timing and steps nothing.
var ErrIdle = errors.New("flightctl: idle tick")

// Clock is the loop's time: monotonic, since an arbitrary origin.
type Clock interface {
	Now() time.Duration
	// SleepUntil returns at or after t (or at once if t has passed).
	SleepUntil(t time.Duration)
}

// IMU reads one sample: specific force (m/s², body FLU) and rates (rad/s).
type IMU interface {
	ReadIMU(accel, gyro *[3]float64) error
}

// Motors writes the four ESC pulses (µs, by channel).
type Motors interface {
	WriteMotors(us []float64) error
}

// Authority says whether this process may write PWM now (*pwmlock.Lock).
type Authority interface {
	Held() bool
}

// ErrStopped is returned by Loop.Exec when the loop has stopped.
var ErrStopped = errors.New("flightctl: loop stopped")

// BaroBox hands the latest barometer sample from the goroutine that reads it
// to the tick loop without allocating.
type BaroBox struct {
	mu   sync.Mutex
	pa   float64
	c    float64
	seq  uint64
	fail bool
}

// Put stores a sample, or a failed read when err is non-nil.
func (b *BaroBox) Put(pa, c float64, err error) {
	b.mu.Lock()
	if err != nil {
		b.fail = true
	} else {
		b.pa, b.c, b.fail = pa, c, false
		b.seq++
	}
	b.mu.Unlock()
}

// BaroSource gives the latest barometer sample, its sequence number (a new
// number is a new sample) and whether the latest read failed. It must be
// cheap and allocation-free: the tick loop calls it every tick.
type BaroSource interface {
	Get() (pa, c float64, seq uint64, fail bool)
}

// Get implements BaroSource.
func (b *BaroBox) Get() (pa, c float64, seq uint64, fail bool) {
	b.mu.Lock()
	pa, c, seq, fail = b.pa, b.c, b.seq, b.fail
	b.mu.Unlock()
	return
}

// SensorSource paces the loop on a Clock and reads the IMU (and the latest
// barometer sample) each tick.
type SensorSource struct {
	Clock  Clock
	Period time.Duration
	IMU    IMU        // nil: every read fails (absent chip)
	Baro   BaroSource // nil: no barometer
	// Gate, if set, is asked after each wake-up; when it is closed the
	// sensors are not read and Next returns ErrIdle.
	Gate TickGate

	next    time.Duration
	last    time.Duration
	started bool
	baroSeq uint64
	wake    time.Duration
}

// TickStart implements TickStarter.
func (s *SensorSource) TickStart() time.Duration { return s.wake }

// Resume makes the next tick fall one period after t (a tick boundary of the
// controller this one takes over from), so the cadence continues.
func (s *SensorSource) Resume(t time.Duration) {
	s.started, s.last, s.next = true, t, t+s.Period
}

// Next implements InputSource.
func (s *SensorSource) Next(ctx context.Context, in *Inputs) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.started {
		s.Clock.SleepUntil(s.next)
	}
	now := s.Clock.Now()
	if !s.started {
		s.started, s.last, s.next = true, now-s.Period, now
	}
	// Next deadline on the grid; after a late tick skip the slots already
	// missed instead of bursting to catch up.
	s.next += s.Period
	if s.next <= now {
		s.next = now + s.Period - (now-s.next)%s.Period
	}
	if s.Gate != nil && !s.Gate.Open() {
		s.last, s.wake = now, now
		return ErrIdle
	}
	in.Dt = (now - s.last).Seconds()
	s.last = now
	s.wake = now
	in.TimeNs = int64(now)
	if s.IMU == nil {
		in.IMUErr = true
	} else {
		in.IMUErr = s.IMU.ReadIMU(&in.Accel, &in.Gyro) != nil
	}
	in.BaroNew, in.BaroErr = false, s.Baro == nil
	if s.Baro != nil {
		pa, c, seq, fail := s.Baro.Get()
		in.BaroPa, in.BaroC, in.BaroErr = pa, c, fail
		in.BaroNew = seq != s.baroSeq
		s.baroSeq = seq
	}
	return nil
}

// PWMSink writes the outputs to the motors while the authority is held, and
// writes nothing otherwise.
type PWMSink struct {
	Motors    Motors
	Authority Authority
}

// ErrNoAuthority is returned by PWMSink.Write without the PWM authority.
var ErrNoAuthority = errors.New("flightctl: PWM authority not held")

// Write implements OutputSink.
func (s *PWMSink) Write(out *Outputs) error {
	if s.Authority != nil && !s.Authority.Held() {
		return ErrNoAuthority
	}
	return s.Motors.WriteMotors(out.PulseUS[:])
}

// NullSink writes nothing (standby).
type NullSink struct{}

// Write implements OutputSink.
func (NullSink) Write(*Outputs) error { return nil }

// CmdResult is the outcome of a command applied by a tick.
type CmdResult struct {
	OK     bool
	Reason Reason
	Tick   uint64
	Mode   Mode
}

type event struct {
	tick    uint64
	t       float64
	ev      Events
	mode    Mode
	reason  Reason
	step    uint8
	stepK   StepKind
	alt     float64
	writeEr bool
}

// Loop is the tick loop around Step. Its fields are owned by the loop
// goroutine; other goroutines reach them only through Exec, Command and
// Snapshot.
type Loop struct {
	St     State
	P      Params
	Source InputSource
	Sink   OutputSink
	Obs    TickObserver
	Clock  Clock
	Stats  TickStats
	Role   Role

	in           Inputs
	out          Outputs
	exec         chan func(*Loop)
	waiter       chan CmdResult
	events       chan event
	snapMu       sync.Mutex
	snapSt       State
	snapOut      Outputs
	snapIn       Inputs
	snapRole     Role
	lastWriteErr bool
}

// NewLoop returns a loop over st with params p.
func NewLoop(st *State, p *Params, src InputSource, sink OutputSink, clk Clock) *Loop {
	l := &Loop{St: *st, P: *p, Source: src, Sink: sink, Clock: clk,
		exec: make(chan func(*Loop), 16), events: make(chan event, 64)}
	if ss, ok := src.(*SensorSource); ok {
		l.Stats.Period = ss.Period
	}
	if l.Stats.Period == 0 {
		l.Stats.Period = time.Duration(p.NominalDt * float64(time.Second))
	}
	return l
}

// Tick runs one tick: pending Exec functions, Next, Step, Write, Observe,
// statistics. It allocates nothing.
func (l *Loop) Tick(ctx context.Context) error {
	for range 4 {
		select {
		case f := <-l.exec:
			f(l)
			continue
		default:
		}
		break
	}
	if err := l.Source.Next(ctx, &l.in); err != nil {
		if err == ErrIdle {
			l.idle()
			return nil
		}
		return err
	}
	t0 := l.Clock.Now()
	wake := t0
	if ts, ok := l.Source.(TickStarter); ok {
		wake = ts.TickStart()
	}
	Step(&l.St, &l.P, &l.in, &l.out)
	werr := false
	if l.Sink != nil {
		werr = l.Sink.Write(&l.out) != nil
	}
	if l.Obs != nil {
		l.Obs.ObserveTick(&l.St, &l.in, &l.out)
	}
	if l.in.Cmd.Kind != CmdNone && l.waiter != nil {
		select {
		case l.waiter <- CmdResult{OK: l.out.CmdOK, Reason: l.out.Reason, Tick: l.St.Tick, Mode: l.St.Mode}:
		default:
		}
		l.waiter = nil
	}
	if l.out.Events != 0 || werr != l.lastWriteErr {
		m := &l.St.Mission
		ev := event{tick: l.St.Tick, t: l.St.Time, ev: l.out.Events, mode: l.St.Mode, reason: l.out.Reason,
			step: m.Index, alt: l.St.Est.Alt, writeEr: werr}
		if m.Index < m.Plan.N && m.Index < MaxMissionSteps {
			ev.stepK = m.Plan.Steps[m.Index].Kind
		}
		select {
		case l.events <- ev:
		default:
		}
		l.lastWriteErr = werr
	}
	l.in.Cmd = Command{}
	work := l.Clock.Now() - t0
	l.snapMu.Lock()
	l.Stats.Begin(wake)
	l.Stats.End(work, t0-wake)
	if werr {
		l.Stats.WriteErr++
	}
	if l.in.IMUErr {
		l.Stats.ReadErr++
	}
	l.snapSt, l.snapOut, l.snapIn = l.St, l.out, l.in
	l.snapRole = l.Role
	l.snapMu.Unlock()
	return nil
}

// idle accounts for a tick the gate kept closed: timing only.
func (l *Loop) idle() {
	wake := l.Clock.Now()
	if ts, ok := l.Source.(TickStarter); ok {
		wake = ts.TickStart()
	}
	if l.in.Cmd.Kind != CmdNone && l.waiter != nil {
		// Not stepped: nobody applies it (a standby refuses commands).
		select {
		case l.waiter <- CmdResult{OK: false, Reason: ReasonBadMode, Tick: l.St.Tick, Mode: l.St.Mode}:
		default:
		}
		l.waiter = nil
	}
	l.in.Cmd = Command{}
	l.snapMu.Lock()
	l.Stats.Begin(wake)
	l.Stats.End(0, 0)
	l.snapSt = l.St
	l.snapRole = l.Role
	l.snapMu.Unlock()
}

// Run ticks until ctx is done or the source fails, with the goroutine locked
// to its OS thread. It drains Exec requests as it stops.
func (l *Loop) Run(ctx context.Context) error {
	for {
		if err := l.Tick(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// Exec runs f in the loop goroutine between two ticks and waits for it. Use
// it to switch the source, sink or observer (roles), to take a consistent
// snapshot of State, or to install one.
func (l *Loop) Exec(ctx context.Context, f func(*Loop)) error {
	done := make(chan struct{})
	select {
	case l.exec <- func(l *Loop) { f(l); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Command submits c for the next tick and waits for its outcome.
func (l *Loop) Command(ctx context.Context, c Command) (CmdResult, error) {
	ch := make(chan CmdResult, 1)
	err := l.Exec(ctx, func(l *Loop) {
		l.in.Cmd = c // replaces a command not yet stepped; its caller times out
		l.waiter = ch
	})
	if err != nil {
		return CmdResult{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return CmdResult{}, ctx.Err()
	}
}

// Snapshot is a consistent copy of the loop's state after its latest tick.
type Snapshot struct {
	State   State
	Inputs  Inputs
	Outputs Outputs
	Ticks   TickStats
	Role    Role
}

// Snapshot copies the state, inputs and outputs of the latest tick, and the
// tick statistics.
func (l *Loop) Snapshot(s *Snapshot) {
	l.snapMu.Lock()
	s.State, s.Inputs, s.Outputs, s.Role = l.snapSt, l.snapIn, l.snapOut, l.snapRole
	s.Ticks = l.Stats
	l.snapMu.Unlock()
}

// CurrentRole is the role as of the latest tick (safe from any goroutine).
func (l *Loop) CurrentRole() Role {
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	return l.snapRole
}

// logEvents logs the loop's events until ctx is done; it runs off the tick path.
func (l *Loop) logEvents(ctx context.Context, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case e := <-l.events:
					logEvent(log, e)
				default:
					return
				}
			}
		case e := <-l.events:
			logEvent(log, e)
		}
	}
}

func logEvent(log *slog.Logger, e event) {
	at := []any{"tick", e.tick, "t_s", math.Round(e.t*1000) / 1000, "mode", e.mode.String(), "alt_m", math.Round(e.alt*1000) / 1000}
	if e.ev&EvFailsafe != 0 {
		log.Error("failsafe", append(at, "reason", e.reason.String())...)
	} else if e.ev&EvMode != 0 {
		log.Info("mode", append(at, "reason", e.reason.String())...)
	}
	if e.ev&EvCmdRefused != 0 {
		log.Warn("command refused", append(at, "reason", e.reason.String())...)
	}
	if e.ev&EvArmRefused != 0 {
		log.Warn("mission waiting: cannot arm yet", append(at, "reason", e.reason.String())...)
	}
	if e.ev&EvCalibrated != 0 {
		log.Info("gyro calibrated", at...)
	}
	if e.ev&EvMissionStep != 0 {
		if e.stepK == StepNone {
			log.Info("mission complete", at...)
		} else {
			log.Info("mission step", append(at, "step", e.step, "kind", e.stepK.String())...)
		}
	}
	if e.writeEr {
		log.Warn("motor writes failing", at...)
	} else if e.ev == 0 {
		log.Info("motor writes recovered", at...)
	}
}

// MonoClock is the real monotonic clock. SleepUntil sleeps to within Spin of
// the deadline and busy-waits the rest.
type MonoClock struct {
	start time.Time
	Spin  time.Duration
}

// NewMonoClock returns a clock starting now.
func NewMonoClock(spin time.Duration) *MonoClock { return &MonoClock{start: time.Now(), Spin: spin} }

// Now implements Clock.
func (c *MonoClock) Now() time.Duration { return time.Since(c.start) }

// SleepUntil implements Clock.
func (c *MonoClock) SleepUntil(t time.Duration) {
	d := t - c.Now()
	if d > c.Spin {
		time.Sleep(d - c.Spin)
	}
	for c.Now() < t {
	}
}

func (l *Loop) String() string { return fmt.Sprintf("loop(tick %d, %v)", l.St.Tick, l.St.Mode) }
