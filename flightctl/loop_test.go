package flightctl

import (
	"context"
	"testing"
	"time"
)

// fakeClock advances only when slept on.
type fakeClock struct{ t time.Duration }

func (c *fakeClock) Now() time.Duration { return c.t }
func (c *fakeClock) SleepUntil(t time.Duration) {
	if t > c.t {
		c.t = t
	}
}

type fakeIMU struct {
	n    int
	err  error
	baro *BaroBox // gets a new sample every 10 reads
}

func (f *fakeIMU) ReadIMU(a, g *[3]float64) error {
	f.n++
	if f.baro != nil && f.n%10 == 0 {
		f.baro.Put(101325+0.1*float64(f.n%3), 20, nil)
	}
	*a = [3]float64{0.001 * float64(f.n%7), -0.002 * float64(f.n%5), 9.80665}
	*g = [3]float64{0.001 * float64(f.n%3), 0, -0.001 * float64(f.n%2)}
	return f.err
}

type fakeMotors struct {
	n    int
	last [4]float64
}

func (m *fakeMotors) WriteMotors(us []float64) error { m.n++; copy(m.last[:], us); return nil }

type held bool

func (h held) Held() bool { return bool(h) }

func newTestLoop() (*Loop, *fakeClock, *fakeMotors, *BaroBox) {
	clk := &fakeClock{}
	box := &BaroBox{}
	box.Put(101325, 20, nil)
	src := &SensorSource{Clock: clk, Period: 2500 * time.Microsecond, IMU: &fakeIMU{baro: box}, Baro: box}
	m := &fakeMotors{}
	p := DefaultParams()
	l := NewLoop(&State{}, &p, src, &PWMSink{Motors: m, Authority: held(true)}, clk)
	return l, clk, m, box
}

func TestLoopTickAllocatesNothing(t *testing.T) {
	l, _, _, _ := newTestLoop()
	ctx := context.Background()
	for range 1000 { // calibrate, then arm and fly
		if err := l.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	l.in.Cmd = Command{Kind: CmdTakeoff, Alt: 2}
	allocs := testing.AllocsPerRun(2000, func() {
		if err := l.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Tick allocates %v per run", allocs)
	}
	if l.St.Mode != ModeTakeoff {
		t.Fatalf("mode %v, want takeoff", l.St.Mode)
	}
}

func TestLoopPacingAndStats(t *testing.T) {
	l, clk, m, _ := newTestLoop()
	ctx := context.Background()
	for range 401 {
		if err := l.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if clk.t != 400*2500*time.Microsecond {
		t.Fatalf("clock at %v after 401 ticks, want 1s", clk.t)
	}
	s := l.Stats.Summary()
	if s.Ticks != 400 || s.Missed != 0 || s.JitterP99US != 0 || s.RateHz < 399.9 || s.RateHz > 400.1 {
		t.Fatalf("stats %+v", s)
	}
	if m.n != 401 || m.last != [4]float64{1000, 1000, 1000, 1000} {
		t.Fatalf("motors written %d times, last %v", m.n, m.last)
	}
	// A late tick counts as missed and the grid skips ahead instead of bursting.
	clk.t += 10 * time.Millisecond
	if err := l.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if l.in.Dt < 0.0099 {
		t.Fatalf("dt of the late tick %v", l.in.Dt)
	}
	for range 2 {
		if err := l.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if l.in.Dt != 0.0025 {
			t.Fatalf("dt after the late tick %v, want one period", l.in.Dt)
		}
	}
	s = l.Stats.Summary()
	if s.Missed != 1 {
		t.Fatalf("missed %d, want 1", s.Missed)
	}
}

func TestPWMSinkNeedsAuthority(t *testing.T) {
	m := &fakeMotors{}
	s := &PWMSink{Motors: m, Authority: held(false)}
	if err := s.Write(&Outputs{}); err != ErrNoAuthority || m.n != 0 {
		t.Fatalf("write without authority: %v, %d writes", err, m.n)
	}
}

func TestLoopCommandAndExec(t *testing.T) {
	l, _, _, _ := newTestLoop()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	r, err := l.Command(ctx, Command{Kind: CmdArm})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Reason != ReasonNotCalibrated {
		t.Fatalf("arm before calibration: %+v", r)
	}
	var snap Snapshot
	for {
		l.Snapshot(&snap)
		if snap.State.Est.Calibrated {
			break
		}
		time.Sleep(time.Millisecond)
	}
	r, err = l.Command(ctx, Command{Kind: CmdArm})
	if err != nil || !r.OK || r.Mode != ModeArmed {
		t.Fatalf("arm: %+v %v", r, err)
	}
	// Switch to standby between two ticks: nothing more is written.
	if err := l.Exec(ctx, func(l *Loop) { l.Sink = NullSink{}; l.Role = RoleStandby }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNanoClockSleepsToTheDeadline(t *testing.T) {
	c := &NanoClock{}
	for range 20 {
		d := c.Now() + 500*time.Microsecond
		c.SleepUntil(d)
		if c.Now() < d {
			t.Fatal("woke before the deadline")
		}
	}
	if a := testing.AllocsPerRun(10, func() { c.SleepUntil(c.Now() + 100*time.Microsecond) }); a != 0 {
		t.Fatalf("SleepUntil allocates %v", a)
	}
}
