package pca9685

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
)

type fakeAuth struct{ held atomic.Bool }

func (a *fakeAuth) Held() bool { return a.held.Load() }

var _ Authority = (*fakeAuth)(nil)

func held() *fakeAuth { a := &fakeAuth{}; a.held.Store(true); return a }

func noSleep(t *testing.T) *[]time.Duration {
	var slept []time.Duration
	old := doSleep
	doSleep = func(d time.Duration) { slept = append(slept, d) }
	t.Cleanup(func() { doSleep = old })
	return &slept
}

// attachReads are the only three operations WarmAttach may do.
func attachReads(m1, m2, pre byte) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: 0x40, W: []byte{RegMode1}, R: []byte{m1}},
		{Addr: 0x40, W: []byte{RegMode2}, R: []byte{m2}},
		{Addr: 0x40, W: []byte{RegPreScale}, R: []byte{pre}},
	}
}

// disarmed1000 is LED0..LED3 at ON=0, OFF=1667 (1000 µs / 0.6 µs).
var disarmed1000 = []byte{RegLED0OnL, 0, 0, 0x83, 0x06, 0, 0, 0x83, 0x06, 0, 0, 0x83, 0x06, 0, 0, 0x83, 0x06}

func TestPrescale(t *testing.T) {
	if p := Prescale(25e6, 400); p != 14 {
		t.Fatalf("Prescale(25 MHz, 400 Hz) = %d, want 14", p)
	}
	if p := Prescale(25e6, 50); p != 121 {
		t.Fatalf("Prescale(25 MHz, 50 Hz) = %d, want 121", p)
	}
}

func TestColdInitSequence(t *testing.T) {
	for _, restart := range []bool{true, false} {
		slept := noSleep(t)
		m1 := byte(Mode1AI | Mode1AllCall)
		if restart {
			m1 |= Mode1Restart
		}
		ops := []i2ctest.IO{
			{Addr: 0x40, W: []byte{RegMode1, Mode1Sleep | Mode1AI | Mode1AllCall}},
			{Addr: 0x40, W: []byte{RegPreScale, 14}},
			{Addr: 0x40, W: []byte{RegMode2, Mode2OutDrv}},
			{Addr: 0x40, W: disarmed1000},
			{Addr: 0x40, W: []byte{RegMode1, Mode1AI | Mode1AllCall}},
			{Addr: 0x40, W: []byte{RegMode1}, R: []byte{m1}},
		}
		if restart {
			ops = append(ops, i2ctest.IO{Addr: 0x40, W: []byte{RegMode1, Mode1Restart | Mode1AI | Mode1AllCall}})
		}
		ops = append(ops, attachReads(Mode1AI|Mode1AllCall, Mode2OutDrv, 14)...)
		bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
		d, err := ColdInit(context.Background(), bus, nil)
		if err != nil {
			t.Fatalf("restart=%v: %v", restart, err)
		}
		if err := bus.Close(); err != nil {
			t.Fatal(err)
		}
		if len(*slept) != 1 || (*slept)[0] < 500*time.Microsecond {
			t.Fatalf("oscillator wait %v, want one of at least 500µs", *slept)
		}
		if d.Prescale() != 14 || math.Abs(d.USPerCount()-0.6) > 1e-12 || math.Abs(d.PeriodUS()-2457.6) > 1e-9 {
			t.Fatalf("prescale %d, %v µs/count, period %v µs", d.Prescale(), d.USPerCount(), d.PeriodUS())
		}
	}
}

func TestColdInitCancelled(t *testing.T) {
	noSleep(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	bus := &i2ctest.Playback{DontPanic: true}
	if _, err := ColdInit(ctx, bus, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("ColdInit with a cancelled ctx = %v", err)
	}
	if bus.Count != 0 {
		t.Fatalf("%d operations after cancel", bus.Count)
	}
}

func TestWarmAttachOnlyReads(t *testing.T) {
	// Playback is exact: any write (MODE1, PRE_SCALE, ALL_LED, anything) is
	// an unexpected operation and fails.
	bus := &i2ctest.Playback{Ops: attachReads(Mode1AI|Mode1AllCall, Mode2OutDrv, 14), DontPanic: true}
	d, err := WarmAttach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if d.Prescale() != 14 {
		t.Fatalf("prescale %d", d.Prescale())
	}
}

func TestWarmAttachUsesTheRealPrescale(t *testing.T) {
	bus := &i2ctest.Playback{Ops: attachReads(Mode1AI, Mode2OutDrv, 13), DontPanic: true}
	d, err := WarmAttach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1e6 * 14 / 25e6; d.USPerCount() != want {
		t.Fatalf("µs per count %v, want %v from prescale 13", d.USPerCount(), want)
	}
	if c := d.Counts(1000); c != 1786 {
		t.Fatalf("1000 µs = %d counts at prescale 13, want 1786", c)
	}
}

func TestWarmAttachRefuses(t *testing.T) {
	cases := map[string][3]byte{
		"asleep":           {Mode1Sleep | Mode1AI | Mode1AllCall, Mode2OutDrv, 14},
		"no auto-inc":      {Mode1AllCall, Mode2OutDrv, 14},
		"open drain":       {Mode1AI, 0, 14},
		"inverted":         {Mode1AI, Mode2OutDrv | Mode2Invrt, 14},
		"prescale 50 Hz":   {Mode1AI, Mode2OutDrv, 121},
		"prescale too low": {Mode1AI, Mode2OutDrv, 12},
		"power-on state":   {Mode1Sleep | Mode1AllCall, Mode2OutDrv, 0x1e},
	}
	for name, c := range cases {
		bus := &i2ctest.Playback{Ops: attachReads(c[0], c[1], c[2]), DontPanic: true}
		if _, err := WarmAttach(bus, nil); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: WarmAttach = %v, want ErrMismatch", name, err)
		}
		if err := bus.Close(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func warm(t testing.TB, ops ...i2ctest.IO) (*Dev, *i2ctest.Playback) {
	bus := &i2ctest.Playback{Ops: append(attachReads(Mode1AI|Mode1AllCall, Mode2OutDrv, 14), ops...), DontPanic: true}
	d, err := WarmAttach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, bus
}

func TestWriteMotorsOneExactBurst(t *testing.T) {
	// 1000, 1500, 2000, 1200 µs at 0.6 µs/count: 1667, 2500, 3333, 2000.
	want := []byte{RegLED0OnL, 0, 0, 0x83, 0x06, 0, 0, 0xc4, 0x09, 0, 0, 0x05, 0x0d, 0, 0, 0xd0, 0x07}
	d, bus := warm(t, i2ctest.IO{Addr: 0x40, W: want})
	d.SetAuthority(held())
	if err := d.WriteMotors([]float64{1000, 1500, 2000, 1200}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestWriteMotorsFirstChannelAndClamp(t *testing.T) {
	bus := &i2ctest.Playback{Ops: append(attachReads(Mode1AI, Mode2OutDrv, 14),
		// channels 4 and 5: LED4_ON_L = 0x16; NaN → disarmed 1667; 9000 µs → 4095.
		i2ctest.IO{Addr: 0x40, W: []byte{0x16, 0, 0, 0x83, 0x06, 0, 0, 0xff, 0x0f}},
		i2ctest.IO{Addr: 0x40, W: []byte{0x16, 0, 0, 0, 0, 0, 0, 0x83, 0x06}},
	), DontPanic: true}
	d, err := WarmAttach(bus, &Opts{FirstChannel: 4, Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	d.SetAuthority(held())
	if err := d.WriteMotors([]float64{math.NaN(), 9000}); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteMotors([]float64{-5, 1000}); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteMotors([]float64{1000}); !errors.Is(err, ErrChannels) {
		t.Fatalf("one pulse for two channels = %v", err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestWriteWithoutAuthorityWritesNothing(t *testing.T) {
	d, bus := warm(t) // no write expected: any Tx fails the Close check
	if err := d.WriteMotors([]float64{1100, 1100, 1100, 1100}); !errors.Is(err, ErrNoAuthority) {
		t.Fatalf("no authority set: %v", err)
	}
	a := &fakeAuth{}
	d.SetAuthority(a)
	if err := d.WriteMotors([]float64{1100, 1100, 1100, 1100}); !errors.Is(err, ErrNoAuthority) {
		t.Fatalf("authority not held: %v", err)
	}
	if err := d.Disarm(); !errors.Is(err, ErrNoAuthority) {
		t.Fatalf("Disarm without authority: %v", err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	// Losing the authority between two ticks stops the second write.
	d, bus = warm(t, i2ctest.IO{Addr: 0x40, W: disarmed1000})
	a.held.Store(true)
	d.SetAuthority(a)
	if err := d.Disarm(); err != nil {
		t.Fatal(err)
	}
	a.held.Store(false)
	if err := d.WriteMotors([]float64{1100, 1100, 1100, 1100}); !errors.Is(err, ErrNoAuthority) {
		t.Fatalf("after losing the authority: %v", err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestWriteMotorsAllocatesNothing(t *testing.T) {
	w := []byte{RegLED0OnL, 0, 0, 0xc4, 0x09, 0, 0, 0xc4, 0x09, 0, 0, 0xc4, 0x09, 0, 0, 0xc4, 0x09}
	ops := make([]i2ctest.IO, 200)
	for i := range ops {
		ops[i] = i2ctest.IO{Addr: 0x40, W: w}
	}
	d, _ := warm(t, ops...)
	d.SetAuthority(held())
	us := []float64{1500, 1500, 1500, 1500}
	allocs := testing.AllocsPerRun(100, func() {
		if err := d.WriteMotors(us); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("WriteMotors allocates %v times per call, want 0", allocs)
	}
}

// chip emulates the PCA9685 registers closely enough for a cold init then a
// warm attach: auto-increment, PRE_SCALE writable only asleep, RESTART.
type chip struct{ r [256]byte }

func newChip() *chip {
	c := &chip{}
	c.r[RegMode1] = Mode1Sleep | Mode1AllCall
	c.r[RegMode2] = Mode2OutDrv
	c.r[RegPreScale] = 0x1e
	for ch := 0; ch < 16; ch++ {
		c.r[RegLED0OnL+4*ch+3] = FullBit
	}
	// An earlier run left channel 0 at full throttle before it was slept.
	c.r[RegLED0OnL+2], c.r[RegLED0OnL+3] = 0x05, 0x0d
	c.r[RegMode1] |= Mode1Restart
	return c
}

func (c *chip) String() string                  { return "chip" }
func (c *chip) SetSpeed(physic.Frequency) error { return nil }
func (c *chip) Tx(addr uint16, w, r []byte) error {
	if addr != 0x40 {
		return errors.New("nack")
	}
	if len(w) == 0 {
		return nil
	}
	p := int(w[0])
	ai := c.r[RegMode1]&Mode1AI != 0
	for _, v := range w[1:] {
		switch p {
		case RegMode1:
			restart := c.r[RegMode1] & Mode1Restart
			if v&Mode1Restart != 0 {
				restart = 0
			}
			c.r[RegMode1] = v&^Mode1Restart | restart
		case RegPreScale:
			if c.r[RegMode1]&Mode1Sleep != 0 {
				c.r[p] = v
			}
		default:
			c.r[p] = v
		}
		if ai {
			p = (p + 1) & 0xff
		}
	}
	for i := range r {
		r[i] = c.r[p]
		if ai {
			p = (p + 1) & 0xff
		}
	}
	return nil
}

var _ i2c.Bus = (*chip)(nil)

func TestColdInitThenWarmAttachOnAnEmulatedChip(t *testing.T) {
	noSleep(t)
	c := newChip()
	cold, err := ColdInit(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.r[RegMode1]&Mode1Restart != 0 || c.r[RegPreScale] != 14 {
		t.Fatalf("after cold init MODE1 %#x PRE_SCALE %d", c.r[RegMode1], c.r[RegPreScale])
	}
	us := make([]float64, 4)
	if err := cold.ReadMotors(us); err != nil {
		t.Fatal(err)
	}
	for i, u := range us {
		if math.Abs(u-1000) > 0.6 {
			t.Fatalf("motor %d at %v µs after cold init, want disarmed", i, u)
		}
	}
	cold.SetAuthority(held())
	if err := cold.WriteMotors([]float64{1300, 1310, 1320, 1330}); err != nil {
		t.Fatal(err)
	}
	before := c.r
	rec := &i2ctest.Record{Bus: c}
	d, err := WarmAttach(rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.r != before {
		t.Fatal("WarmAttach changed a register")
	}
	for _, op := range rec.Ops {
		if len(op.W) != 1 || len(op.R) == 0 {
			t.Fatalf("WarmAttach did a write: %+v", op)
		}
	}
	if err := d.ReadMotors(us); err != nil {
		t.Fatal(err)
	}
	for i, u := range us {
		if want := 1300 + 10*float64(i); math.Abs(u-want) > 0.6 {
			t.Fatalf("motor %d reads %v µs, want %v", i, u, want)
		}
	}
}

// loop is an i2ctest.Playback that starts over after its last operation, so
// a benchmark of any b.N replays a short, exact script.
type loop struct {
	i2ctest.Playback
	start int
}

func (l *loop) Tx(addr uint16, w, r []byte) error {
	if l.Count == len(l.Ops) {
		l.Count = l.start
	}
	return l.Playback.Tx(addr, w, r)
}

func BenchmarkWriteMotors(b *testing.B) {
	w := []byte{RegLED0OnL, 0, 0, 0xc4, 0x09, 0, 0, 0xc4, 0x09, 0, 0, 0xc4, 0x09, 0, 0, 0xc4, 0x09}
	bus := &loop{Playback: i2ctest.Playback{Ops: append(attachReads(Mode1AI, Mode2OutDrv, 14), i2ctest.IO{Addr: 0x40, W: w})}, start: 3}
	d, err := WarmAttach(bus, nil)
	if err != nil {
		b.Fatal(err)
	}
	d.SetAuthority(held())
	us := []float64{1500, 1500, 1500, 1500}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.WriteMotors(us); err != nil {
			b.Fatal(err)
		}
	}
}
