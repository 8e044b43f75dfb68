package mpu6050

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
)

func noSleep(t *testing.T) *[]time.Duration {
	var slept []time.Duration
	old := doSleep
	doSleep = func(d time.Duration) { slept = append(slept, d) }
	t.Cleanup(func() { doSleep = old })
	return &slept
}

// attachOps are the reads Attach (and the end of New) does, for a chip in
// the default configuration with the given PWR_MGMT_1.
func attachOps(pwr byte, cfg ...byte) []i2ctest.IO {
	if cfg == nil {
		cfg = []byte{0x00, 0x03, 0x10, 0x10} // div 0, DLPF 3, ±1000 °/s, ±8 g
	}
	return []i2ctest.IO{
		{Addr: 0x68, W: []byte{RegWhoAmI}, R: []byte{0x68}},
		{Addr: 0x68, W: []byte{RegPwrMgmt1}, R: []byte{pwr}},
		{Addr: 0x68, W: []byte{RegSmplrtDiv}, R: cfg},
	}
}

func TestNewColdInitSequence(t *testing.T) {
	slept := noSleep(t)
	ops := []i2ctest.IO{
		{Addr: 0x68, W: []byte{RegWhoAmI}, R: []byte{0x68}},
		{Addr: 0x68, W: []byte{RegPwrMgmt1, PwrDeviceReset}},
		{Addr: 0x68, W: []byte{RegPwrMgmt1, PwrClkPLLGyroX}},
		{Addr: 0x68, W: []byte{RegSmplrtDiv, 0x00, 0x03, 0x10, 0x10}},
	}
	ops = append(ops, attachOps(PwrClkPLLGyroX)[1:]...)
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
	d, err := New(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if len(*slept) != 2 || (*slept)[0] < ResetWait {
		t.Fatalf("waits %v, want the reset wait then the start-up wait", *slept)
	}
	if d.SampleRateHz() != 1000 {
		t.Fatalf("rate %v Hz", d.SampleRateHz())
	}
}

func TestNewOtherOpts(t *testing.T) {
	noSleep(t)
	o := DefaultOpts
	o.GyroFullScale, o.AccelFullScale, o.DLPF, o.SampleRateDiv = 2000, 16, 0, 7
	cfg := []byte{0x07, 0x00, 0x18, 0x18}
	ops := []i2ctest.IO{
		{Addr: 0x68, W: []byte{RegWhoAmI}, R: []byte{0x68}},
		{Addr: 0x68, W: []byte{RegPwrMgmt1, PwrDeviceReset}},
		{Addr: 0x68, W: []byte{RegPwrMgmt1, PwrClkPLLGyroX}},
		{Addr: 0x68, W: append([]byte{RegSmplrtDiv}, cfg...)},
	}
	ops = append(ops, attachOps(PwrClkPLLGyroX, cfg...)[1:]...)
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
	d, err := New(bus, &o)
	if err != nil {
		t.Fatal(err)
	}
	if d.SampleRateHz() != 1000 { // 8 kHz / (1+7)
		t.Fatalf("rate %v Hz", d.SampleRateHz())
	}
}

func TestNewRefusesAnotherChip(t *testing.T) {
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{{Addr: 0x68, W: []byte{RegWhoAmI}, R: []byte{0x70}}}, DontPanic: true}
	if _, err := New(bus, nil); !errors.Is(err, ErrWhoAmI) {
		t.Fatalf("New on an MPU-6500 = %v, want ErrWhoAmI", err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBadOpts(t *testing.T) {
	for _, o := range []Opts{{GyroFullScale: 300}, {AccelFullScale: 3}, {DLPF: 7}} {
		if _, err := Attach(&i2ctest.Playback{DontPanic: true}, &o); err == nil {
			t.Errorf("Attach with %+v succeeded", o)
		}
	}
}

func TestAttachOnlyReads(t *testing.T) {
	// Playback is exact: a reset or any other write would be an unexpected op.
	bus := &i2ctest.Playback{Ops: attachOps(PwrClkPLLGyroX), DontPanic: true}
	if _, err := Attach(bus, nil); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	// Reserved bits set do not matter.
	bus = &i2ctest.Playback{Ops: attachOps(PwrClkPLLGyroX, 0x00, 0xc3, 0x17, 0x15), DontPanic: true}
	if _, err := Attach(bus, nil); err != nil {
		t.Fatalf("reserved bits: %v", err)
	}
}

func TestAttachRefuses(t *testing.T) {
	cases := map[string][]i2ctest.IO{
		"asleep (power-on state)": attachOps(PwrSleep),
		"cycling":                 attachOps(PwrCycle | PwrClkPLLGyroX),
		"clock stopped":           attachOps(PwrClkStop),
		"other gyro scale":        attachOps(PwrClkPLLGyroX, 0x00, 0x03, 0x18, 0x10),
		"other accel scale":       attachOps(PwrClkPLLGyroX, 0x00, 0x03, 0x10, 0x08),
		"other DLPF":              attachOps(PwrClkPLLGyroX, 0x00, 0x01, 0x10, 0x10),
		"other rate":              attachOps(PwrClkPLLGyroX, 0x04, 0x03, 0x10, 0x10),
		"gyro self-test on":       attachOps(PwrClkPLLGyroX, 0x00, 0x03, 0xf0, 0x10),
	}
	for name, ops := range cases {
		if name == "asleep (power-on state)" || name == "cycling" || name == "clock stopped" {
			ops = ops[:2] // it stops reading at the first failed check
		}
		bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
		if _, err := Attach(bus, nil); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: Attach = %v, want ErrMismatch", name, err)
		}
		if err := bus.Close(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func attached(t testing.TB, extra ...i2ctest.IO) (*Dev, *i2ctest.Playback) {
	bus := &i2ctest.Playback{Ops: append(attachOps(PwrClkPLLGyroX), extra...), DontPanic: true}
	d, err := Attach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, bus
}

func burst(ax, ay, az, temp, gx, gy, gz int16) []byte {
	b := make([]byte, BurstLen)
	for i, v := range []int16{ax, ay, az, temp, gx, gy, gz} {
		binary.BigEndian.PutUint16(b[2*i:], uint16(v))
	}
	return b
}

func TestReadScaling(t *testing.T) {
	// ±8 g: 4096 LSB/g; ±1000 °/s: 32.8 LSB/(°/s).
	raw := burst(0, -2048, 4096, -340, 328, -3280, 0x7fff)
	d, bus := attached(t, i2ctest.IO{Addr: 0x68, W: []byte{RegAccelXOutH}, R: raw})
	var s Sample
	if err := d.Read(&s); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	want := Sample{
		Accel: [3]float64{0, -G / 2, G},
		Gyro:  [3]float64{10 * math.Pi / 180, -100 * math.Pi / 180, 32767 / 32.8 * math.Pi / 180},
		TempC: 35.53,
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	for i := 0; i < 3; i++ {
		if !near(s.Accel[i], want.Accel[i]) || !near(s.Gyro[i], want.Gyro[i]) {
			t.Fatalf("got %+v, want %+v", s, want)
		}
	}
	if !near(s.TempC, want.TempC) {
		t.Fatalf("temperature %v, want %v", s.TempC, want.TempC)
	}
}

// loop is an i2ctest.Playback that starts over at op start after its last op.
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

func loopDev(t testing.TB) *Dev {
	bus := &loop{Playback: i2ctest.Playback{Ops: append(attachOps(PwrClkPLLGyroX),
		i2ctest.IO{Addr: 0x68, W: []byte{RegAccelXOutH}, R: burst(1, 2, 4096, 0, 3, 4, 5)})}, start: 3}
	d, err := Attach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestReadAllocatesNothing(t *testing.T) {
	d := loopDev(t)
	var s Sample
	allocs := testing.AllocsPerRun(200, func() {
		if err := d.Read(&s); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Read allocates %v times per call, want 0", allocs)
	}
}

// gyroBus answers the burst with gyro values from next and anything else
// like a configured chip.
type gyroBus struct {
	i2ctest.Playback
	next func(i int) [3]int16
	n    int
}

func (g *gyroBus) Tx(addr uint16, w, r []byte) error {
	if len(w) == 1 && w[0] == RegAccelXOutH {
		v := g.next(g.n)
		g.n++
		copy(r, burst(0, 0, 4096, 0, v[0], v[1], v[2]))
		return nil
	}
	return g.Playback.Tx(addr, w, r)
}

var _ i2c.Bus = (*gyroBus)(nil)

func (g *gyroBus) SetSpeed(physic.Frequency) error { return nil }

func TestCalibrateGyro(t *testing.T) {
	slept := noSleep(t)
	still := &gyroBus{Playback: i2ctest.Playback{Ops: attachOps(PwrClkPLLGyroX), DontPanic: true},
		next: func(i int) [3]int16 { return [3]int16{int16(10 + i%2), -20, 0} }}
	d, err := Attach(still, nil)
	if err != nil {
		t.Fatal(err)
	}
	bias, err := d.CalibrateGyro(context.Background(), 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	k := math.Pi / 180 / 32.8
	if math.Abs(bias[0]-10.5*k) > 1e-12 || math.Abs(bias[1]+20*k) > 1e-12 || bias[2] != 0 {
		t.Fatalf("bias %v", bias)
	}
	if len(*slept) != 99 || (*slept)[0] != time.Millisecond {
		t.Fatalf("%d waits of %v, want 99 of one sample period", len(*slept), (*slept)[0])
	}
	// The driver does not apply the bias: Read still gives the raw rate.
	var s Sample
	if err := d.Read(&s); err != nil || math.Abs(s.Gyro[1]+20*k) > 1e-12 {
		t.Fatalf("Read after calibration: %v %v", s.Gyro, err)
	}

	moving := &gyroBus{Playback: i2ctest.Playback{Ops: attachOps(PwrClkPLLGyroX), DontPanic: true},
		next: func(i int) [3]int16 { return [3]int16{0, int16(300 * math.Sin(float64(i)/5)), 0} }}
	d, err = Attach(moving, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.CalibrateGyro(context.Background(), 100, 0.02); !errors.Is(err, ErrMoving) {
		t.Fatalf("moving: %v, want ErrMoving", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.CalibrateGyro(ctx, 100, 0.02); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if _, err := d.CalibrateGyro(context.Background(), 1, 0.02); err == nil {
		t.Fatal("one sample accepted")
	}
}

func BenchmarkMPURead(b *testing.B) {
	d := loopDev(b)
	var s Sample
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.Read(&s); err != nil {
			b.Fatal(err)
		}
	}
}
