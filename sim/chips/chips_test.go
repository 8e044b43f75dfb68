package chips

import (
	"encoding/binary"
	"math"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/bmxx80"
	"periph.io/x/devices/v3/pca9685"
)

// testBus puts one Device on an in-memory i2c.Bus; each transaction first
// steps the chip up to the wall-clock time elapsed since the bus was made.
type testBus struct {
	mu    sync.Mutex
	addr  uint16
	dev   Device
	env   Env
	start time.Time
	fx    []Effect
}

func newTestBus(addr uint16, d Device, env Env) *testBus {
	return &testBus{addr: addr, dev: d, env: env, start: time.Now()}
}

func (b *testBus) String() string                  { return "testbus" }
func (b *testBus) SetSpeed(physic.Frequency) error { return nil }
func (b *testBus) Tx(addr uint16, w, r []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if addr != b.addr {
		return i2cNACK
	}
	now := time.Since(b.start)
	for b.env.T+time.Millisecond <= now {
		b.env.T += time.Millisecond
		b.env.Dt = 0.001
		b.dev.Step(&b.env)
	}
	e, err := b.dev.Tx(w, r)
	b.fx = append(b.fx, e)
	return err
}

type nackErr struct{}

func (nackErr) Error() string { return "nack" }

var i2cNACK error = nackErr{}

var _ i2c.Bus = (*testBus)(nil)

func TestBMP280ThroughPeriphBMXX80(t *testing.T) {
	for _, alt := range []float64{0, 12.5, 1500} {
		wantP := PressureAt(0, alt)
		wantT := TemperatureAt(21.5, alt)
		bus := newTestBus(AddrBMP280, NewBMP280(DatasheetCalib, Noise{}),
			Env{TempC: wantT, PressurePa: wantP})
		dev, err := bmxx80.NewI2C(bus, AddrBMP280, &bmxx80.DefaultOpts)
		if err != nil {
			t.Fatal(err)
		}
		var e physic.Env
		if err := dev.Sense(&e); err != nil {
			t.Fatal(err)
		}
		gotP := float64(e.Pressure) / float64(physic.Pascal)
		gotT := e.Temperature.Celsius()
		// 4× oversampling → 18-bit resolution, ~0.66 Pa.
		if math.Abs(gotP-wantP) > 1.5 || math.Abs(gotT-wantT) > 0.011 {
			t.Errorf("alt %g m: bmxx80 read %.2f Pa %.3f °C, want %.2f Pa %.3f °C", alt, gotP, gotT, wantP, wantT)
		}
	}
}

func TestBMP280NormalModeAndNoise(t *testing.T) {
	b := NewBMP280(DatasheetCalib, DefaultNoise())
	env := Env{TempC: 20, PressurePa: 100000, Dt: 0.001}
	b.Tx([]byte{bmpConfig, 0 << 5, bmpCtrlMeas, 2<<5 | 5<<2 | 3}, nil) // T 2×, P 16×, normal, 0.5 ms standby
	var ps []float64
	var last [6]byte
	b.Tx([]byte{bmpPressMSB}, last[:]) // the reset value, 0x80000
	for range 2000 {
		env.T += time.Millisecond
		b.Step(&env)
		var raw [6]byte
		b.Tx([]byte{bmpPressMSB}, raw[:])
		if raw != last {
			last = raw
			adcP := int32(raw[0])<<12 | int32(raw[1])<<4 | int32(raw[2])>>4
			adcT := int32(raw[3])<<12 | int32(raw[4])<<4 | int32(raw[5])>>4
			_, tf := DatasheetCalib.compensateT(adcT)
			ps = append(ps, float64(DatasheetCalib.compensateP(adcP, tf))/256)
		}
	}
	// 37.5 ms a measurement + 0.5 ms standby, so ~50 distinct samples in 2 s.
	if len(ps) < 30 || len(ps) > 80 {
		t.Fatalf("normal mode produced %d samples in 2 s, want ~50", len(ps))
	}
	var mean, sd float64
	for _, p := range ps {
		mean += p
	}
	mean /= float64(len(ps))
	for _, p := range ps {
		sd += (p - mean) * (p - mean)
	}
	sd = math.Sqrt(sd / float64(len(ps)))
	if math.Abs(mean-100000) > 1 || sd < 0.1 || sd > 2 {
		t.Fatalf("pressure mean %.2f sd %.2f, want 100000 ± 1 with sd ~0.65", mean, sd)
	}
	// Reset restores the power-up registers.
	b.Tx([]byte{bmpReset, 0xB6}, nil)
	var r [1]byte
	b.Tx([]byte{bmpCtrlMeas}, r[:])
	if r[0] != 0 {
		t.Fatalf("ctrl_meas after reset %#x", r[0])
	}
	b.Tx([]byte{bmpChipID}, r[:])
	if r[0] != 0x58 {
		t.Fatalf("chip id %#x", r[0])
	}
}

func readMPU(t *testing.T, m *MPU6050) (acc, gyro [3]int16, temp int16) {
	t.Helper()
	var b [14]byte
	if _, err := m.Tx([]byte{mpuAccelXoutH}, b[:]); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		acc[i] = int16(binary.BigEndian.Uint16(b[2*i:]))
		gyro[i] = int16(binary.BigEndian.Uint16(b[8+2*i:]))
	}
	return acc, gyro, int16(binary.BigEndian.Uint16(b[6:]))
}

func TestMPU6050(t *testing.T) {
	m := NewMPU6050(Noise{})
	env := Env{Dt: 0.001, SpecificForce: [3]float64{0, 0, 9.80665}, Gyro: [3]float64{0.5, 0, -1}, TempC: 25}
	step := func(n int) {
		for range n {
			env.T += time.Millisecond
			m.Step(&env)
		}
	}
	var r [1]byte
	m.Tx([]byte{mpuWhoAmI}, r[:])
	if r[0] != 0x68 {
		t.Fatalf("WHO_AM_I %#x", r[0])
	}
	m.Tx([]byte{mpuPwrMgmt1}, r[:])
	if r[0] != 0x40 {
		t.Fatalf("PWR_MGMT_1 at power-up %#x, want 0x40", r[0])
	}
	step(10)
	if a, g, _ := readMPU(t, m); a != [3]int16{} || g != [3]int16{} {
		t.Fatalf("asleep, data reads %v %v, want zeros", a, g)
	}
	// Wake, ±4 g, ±500 °/s, DLPF 3.
	if e, _ := m.Tx([]byte{mpuPwrMgmt1, 0x01}, nil); e.Reinit != "" {
		t.Fatalf("waking is not a reinit: %+v", e)
	}
	m.Tx([]byte{mpuSmplrtDiv, 0, 3, 1 << 3, 1 << 3}, nil) // burst write with auto-increment
	step(100)
	a, g, temp := readMPU(t, m)
	if a[0] != 0 || a[1] != 0 || a[2] != 8192 {
		t.Fatalf("accel %v, want (0, 0, 8192) at ±4 g", a)
	}
	wantG := [3]int16{int16(math.Round(0.5 * 180 / math.Pi * 65.5)), 0, int16(math.Round(-180 / math.Pi * 65.5))}
	if g != wantG {
		t.Fatalf("gyro %v, want %v", g, wantG)
	}
	if got := float64(temp)/340 + 36.53; math.Abs(got-25) > 0.01 {
		t.Fatalf("temp %.2f", got)
	}
	// The DLPF lags a step change: at 5 Hz, 10 ms in it has moved well under halfway.
	m.Tx([]byte{mpuConfig, 6}, nil)
	env.SpecificForce[2] = 2 * 9.80665
	step(10)
	a, _, _ = readMPU(t, m)
	if a[2] <= 8192 || a[2] > 8192+4096 {
		t.Fatalf("5 Hz DLPF after 10 ms reads %d, want between 8192 and 12288", a[2])
	}
	// Sleep and reset are reinits and reset restores the defaults.
	if e, _ := m.Tx([]byte{mpuPwrMgmt1, 0x41}, nil); e.Reinit != "mpu6050 SLEEP" {
		t.Fatalf("sleep effect %+v", e)
	}
	if e, _ := m.Tx([]byte{mpuPwrMgmt1, 0x80}, nil); e.Reinit != "mpu6050 DEVICE_RESET" {
		t.Fatalf("reset effect %+v", e)
	}
	m.Tx([]byte{mpuConfig}, r[:])
	if r[0] != 0 || !m.Asleep() {
		t.Fatalf("after reset CONFIG %#x asleep %v", r[0], m.Asleep())
	}
	if a, _, _ := readMPU(t, m); a != [3]int16{} {
		t.Fatalf("after reset data %v, want zeros", a)
	}
}

func TestMPU6050NoiseAndBias(t *testing.T) {
	n := DefaultNoise()
	m := NewMPU6050(n)
	m.Tx([]byte{mpuPwrMgmt1, 0}, nil)
	env := Env{Dt: 0.001, SpecificForce: [3]float64{0, 0, 9.80665}}
	var sum, sq float64
	const N = 2000
	for range N {
		env.T += time.Millisecond
		m.Step(&env)
		_, g, _ := readMPU(t, m)
		x := float64(g[0]) / 131
		sum += x
		sq += x * x
	}
	mean := sum / N
	sd := math.Sqrt(sq/N - mean*mean)
	if math.Abs(mean-n.GyroBias[0]) > 0.02 || sd < 0.02 || sd > 0.3 {
		t.Fatalf("gyro x mean %.3f sd %.3f °/s, want bias %.2f and sd ~0.1", mean, sd, n.GyroBias[0])
	}
}

func TestPCA9685ThroughPeriph(t *testing.T) {
	p := NewPCA9685()
	bus := newTestBus(AddrPCA9685, p, Env{})
	dev, err := pca9685.NewI2C(bus, AddrPCA9685)
	if err != nil {
		t.Fatal(err)
	}
	if p.Prescale() != 122 { // periph rounds 25 MHz/4096/50 Hz without the datasheet's −1
		t.Fatalf("prescale %d after NewI2C, want 122", p.Prescale())
	}
	for ch := range 16 {
		if p.Pulse(ch) != 0 {
			t.Fatalf("channel %d pulses %.1f µs after NewI2C", ch, p.Pulse(ch))
		}
	}
	if err := dev.SetPwm(1, 0, 307); err != nil {
		t.Fatal(err)
	}
	want := 307 * 123 / 25.0
	if got := p.Pulse(1); math.Abs(got-want) > 1e-9 {
		t.Fatalf("channel 1 pulse %.2f µs, want %.2f", got, want)
	}
	sawReinit := false
	for _, e := range bus.fx {
		if e.Reinit != "" {
			sawReinit = true
		}
	}
	if !sawReinit || bus.fx[len(bus.fx)-1] != (Effect{PWM: true}) {
		t.Fatalf("effects %+v: want reinits during init and a plain PWM write last", bus.fx)
	}
}

func TestPCA9685Registers(t *testing.T) {
	p := NewPCA9685()
	// PRE_SCALE is ignored while awake.
	p.Tx([]byte{pcaMode1, pcaAI}, nil)
	p.Tx([]byte{pcaPrescale, 14}, nil)
	if p.Prescale() != 30 {
		t.Fatalf("prescale written while awake: %d", p.Prescale())
	}
	p.Tx([]byte{pcaMode1, pcaAI | pcaSleep}, nil)
	p.Tx([]byte{pcaPrescale, 14}, nil)
	p.Tx([]byte{pcaMode1, pcaAI}, nil)
	if p.Prescale() != 14 || math.Abs(p.PeriodUS()-2457.6) > 1e-9 {
		t.Fatalf("prescale %d period %.1f", p.Prescale(), p.PeriodUS())
	}
	// A 16-byte burst over channels 0..3; all change together at the end.
	counts := [4]int{1667, 2500, 2000, 1700} // 1000.2, 1500, 1200, 1020 µs
	w := []byte{pcaLED0}
	for _, c := range counts {
		w = append(w, 0, 0, byte(c), byte(c>>8))
	}
	if e, _ := p.Tx(w, nil); !e.PWM || e.Reinit != "" {
		t.Fatalf("LEDn burst effect %+v", e)
	}
	for ch, c := range counts {
		if got := p.Pulse(ch); math.Abs(got-float64(c)*0.6) > 1e-9 {
			t.Fatalf("ch %d: %.2f µs, want %.2f", ch, got, float64(c)*0.6)
		}
	}
	// Full on and full off (which wins).
	p.Tx([]byte{pcaLED0 + 1, 0x10}, nil)
	if p.Pulse(0) != p.PeriodUS() {
		t.Fatalf("full on: %.1f", p.Pulse(0))
	}
	p.Tx([]byte{pcaLED0 + 3, 0x10}, nil)
	if p.Pulse(0) != 0 {
		t.Fatalf("full off: %.1f", p.Pulse(0))
	}
	// Sleep stops every output and holds them through wake until RESTART.
	p.Tx([]byte{pcaMode1, pcaAI | pcaSleep}, nil)
	if p.Pulse(1) != 0 {
		t.Fatal("asleep but pulsing")
	}
	p.Tx([]byte{pcaMode1, pcaAI}, nil)
	var r [1]byte
	p.Tx([]byte{pcaMode1}, r[:])
	if p.Pulse(1) != 0 || r[0]&pcaRestart == 0 {
		t.Fatalf("woken without RESTART: pulse %.1f MODE1 %#x", p.Pulse(1), r[0])
	}
	p.Tx([]byte{pcaMode1, pcaAI | pcaRestart}, nil)
	if p.Pulse(1) != 1500 {
		t.Fatalf("after RESTART channel 1 %.1f µs", p.Pulse(1))
	}
	// ALL_LED writes every channel, is a reinit, and reads as zero.
	e, _ := p.Tx([]byte{pcaAllLED, 0, 0, 0, 0x10}, nil)
	if e.Reinit != "pca9685 ALL_LED" || p.Pulse(2) != 0 {
		t.Fatalf("ALL_LED off: %+v, ch2 %.1f", e, p.Pulse(2))
	}
	p.Tx([]byte{pcaAllLED + 3}, r[:])
	if r[0] != 0 {
		t.Fatalf("ALL_LED_OFF_H reads %#x", r[0])
	}
	// Without AI every byte goes to the same register.
	p.Tx([]byte{pcaMode1, 0}, nil)
	p.Tx([]byte{pcaLED0 + 2, 0x11, 0x22, 0x33}, nil)
	var b [2]byte
	p.Tx([]byte{pcaMode1, pcaAI}, nil)
	p.Tx([]byte{pcaLED0 + 2}, b[:])
	if b != [2]byte{0x33, 0x10} {
		t.Fatalf("non-AI write: %#x", b)
	}
}

func TestESCCommand(t *testing.T) {
	for _, c := range []struct{ us, u float64 }{{0, 0}, {900, 0}, {1000, 0}, {1500, 0.5}, {2000, 1}, {2457.6, 1}, {math.NaN(), 0}} {
		if got := ESCCommand(c.us); got != c.u {
			t.Errorf("ESCCommand(%g) = %g, want %g", c.us, got, c.u)
		}
	}
}
