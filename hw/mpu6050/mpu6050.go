package mpu6050

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"periph.io/x/conn/v3/i2c"
)

// Registers.
const (
	RegSmplrtDiv   = 0x19
	RegConfig      = 0x1A
	RegGyroConfig  = 0x1B
	RegAccelConfig = 0x1C
	RegAccelXOutH  = 0x3B
	RegPwrMgmt1    = 0x6B
	RegWhoAmI      = 0x75
)

// PWR_MGMT_1 bits and values.
const (
	PwrDeviceReset = 0x80
	PwrSleep       = 0x40
	PwrCycle       = 0x20
	PwrClkMask     = 0x07
	PwrClkPLLGyroX = 0x01
	PwrClkStop     = 0x07
)

// WhoAmI is the value of WHO_AM_I on an MPU-6050.
const WhoAmI = 0x68

// BurstLen is the length of the measurement burst from ACCEL_XOUT_H.
const BurstLen = 14

// Standard gravity, m/s² per g.
const G = 9.80665

// Waits of the cold init.
const (
	ResetWait   = 100 * time.Millisecond // after DEVICE_RESET
	StartupWait = 30 * time.Millisecond  // gyro start-up time (datasheet 6.1)
)

// DefaultMaxStd is the gyro standard deviation, rad/s, above which
// CalibrateGyro says the drone moves, when it is given maxStd <= 0. The chip's
// own noise at DLPF 3 is about 0.001 rad/s.
const DefaultMaxStd = 0.01

// Errors callers branch on.
var (
	// ErrWhoAmI: the chip at the address is not an MPU-6050.
	ErrWhoAmI = errors.New("mpu6050: WHO_AM_I is not 0x68")
	// ErrMismatch: Attach found the chip asleep, cycling, without a clock, or
	// configured otherwise than the options. Nothing was written.
	ErrMismatch = errors.New("mpu6050: chip state does not match the options")
	// ErrMoving: CalibrateGyro saw the gyro vary more than maxStd.
	ErrMoving = errors.New("mpu6050: moving during gyro calibration")
)

// doSleep is the seam tests replace to skip the reset and start-up waits.
var doSleep = time.Sleep

// Opts configures the chip. New(bus, nil) and Attach(bus, nil) use
// DefaultOpts. With non-nil Opts, start from DefaultOpts and change fields:
// Addr 0 and full scales 0 take the defaults, but DLPF and SampleRateDiv are
// used as given (0 is a valid value of both).
type Opts struct {
	// Addr is the 7-bit I2C address: 0x68 (AD0 low, the default) or 0x69.
	Addr uint16
	// GyroFullScale is the gyro range in °/s: 250, 500, 1000 or 2000.
	// Default 1000: an aggressive flip stays within it, with 0.03 °/s per LSB.
	GyroFullScale int
	// AccelFullScale is the accelerometer range in g: 2, 4, 8 or 16. Default
	// 8: motor vibration peaks do not clip, with 0.0024 m/s² per LSB.
	AccelFullScale int
	// DLPF is DLPF_CFG, 0..6: the bandwidth of the digital low-pass filter
	// on both sensors (accel/gyro): 0: 260/256 Hz (gyro output at 8 kHz),
	// 1: 184/188 Hz, 2: 94/98 Hz, 3: 44/42 Hz, 4: 21/20 Hz, 5: 10 Hz, 6: 5 Hz,
	// delays about 0, 2, 3, 4.9, 8.5, 13.8, 19 ms. Default 3 (~44 Hz, ~5 ms
	// delay): it removes most propeller vibration at a 250-400 Hz loop.
	DLPF uint8
	// SampleRateDiv is SMPLRT_DIV: sample rate = 1 kHz / (1 + div) (8 kHz
	// with DLPF 0). Default 0: 1 kHz, faster than any control loop reads.
	SampleRateDiv uint8
}

// DefaultOpts: ±1000 °/s, ±8 g, DLPF 3 (~44 Hz), 1 kHz.
var DefaultOpts = Opts{Addr: 0x68, GyroFullScale: 1000, AccelFullScale: 8, DLPF: 3, SampleRateDiv: 0}

var (
	gyroFS  = map[int]uint8{250: 0, 500: 1, 1000: 2, 2000: 3}
	accelFS = map[int]uint8{2: 0, 4: 1, 8: 2, 16: 3}
	// LSB per °/s and per g, indexed by FS_SEL / AFS_SEL.
	gyroLSB  = [4]float64{131, 65.5, 32.8, 16.4}
	accelLSB = [4]float64{16384, 8192, 4096, 2048}
)

// regs are the four configuration registers SMPLRT_DIV..ACCEL_CONFIG as the
// options want them.
type regs [4]byte

func (o *Opts) resolve() (Opts, regs, error) {
	r := DefaultOpts
	if o != nil {
		r = *o
		if r.Addr == 0 {
			r.Addr = DefaultOpts.Addr
		}
		if r.GyroFullScale == 0 {
			r.GyroFullScale = DefaultOpts.GyroFullScale
		}
		if r.AccelFullScale == 0 {
			r.AccelFullScale = DefaultOpts.AccelFullScale
		}
	}
	g, ok := gyroFS[r.GyroFullScale]
	if !ok {
		return r, regs{}, fmt.Errorf("mpu6050: gyro full scale %d °/s, want 250, 500, 1000 or 2000", r.GyroFullScale)
	}
	a, ok := accelFS[r.AccelFullScale]
	if !ok {
		return r, regs{}, fmt.Errorf("mpu6050: accel full scale %d g, want 2, 4, 8 or 16", r.AccelFullScale)
	}
	if r.DLPF > 6 {
		return r, regs{}, fmt.Errorf("mpu6050: DLPF %d, want 0..6", r.DLPF)
	}
	return r, regs{r.SampleRateDiv, r.DLPF, g << 3, a << 3}, nil
}

// Raw is one burst as the chip gives it.
type Raw struct {
	Accel [3]int16
	Temp  int16
	Gyro  [3]int16
}

// Sample is one measurement in SI units, body frame.
type Sample struct {
	Accel [3]float64 // specific force, m/s²
	Gyro  [3]float64 // body rates, rad/s
	TempC float64    // die temperature, °C
}

// Dev is an MPU-6050. It is owned by one goroutine.
type Dev struct {
	bus     i2c.Bus
	o       Opts
	want    regs
	accelK  float64 // m/s² per LSB
	gyroK   float64 // rad/s per LSB
	rateHz  float64
	burstW  [1]byte // always RegAccelXOutH
	burst   [BurstLen]byte
	w       [BurstLen]byte
	r       [4]byte
	raw     Raw
	scratch Sample
}

func newDev(bus i2c.Bus, o *Opts) (*Dev, error) {
	opts, want, err := o.resolve()
	if err != nil {
		return nil, err
	}
	d := &Dev{bus: bus, o: opts, want: want}
	d.burstW[0] = RegAccelXOutH
	d.accelK = G / accelLSB[want[3]>>3]
	d.gyroK = math.Pi / 180 / gyroLSB[want[2]>>3]
	out := 1000.0
	if opts.DLPF == 0 {
		out = 8000
	}
	d.rateHz = out / (1 + float64(opts.SampleRateDiv))
	return d, nil
}

// New initialises the chip from any state: for the ground only, never in the
// air (DEVICE_RESET blanks the IMU for more than 100 ms). It checks WHO_AM_I,
// resets, waits, wakes with the PLL gyro-X clock, configures, waits for the
// gyro to start, and verifies as Attach does.
func New(bus i2c.Bus, o *Opts) (*Dev, error) {
	d, err := newDev(bus, o)
	if err != nil {
		return nil, err
	}
	if err := d.checkWhoAmI(); err != nil {
		return nil, fmt.Errorf("mpu6050: init: %w", err)
	}
	if err := d.writeReg("reset", RegPwrMgmt1, PwrDeviceReset); err != nil {
		return nil, err
	}
	doSleep(ResetWait)
	if err := d.writeReg("wake", RegPwrMgmt1, PwrClkPLLGyroX); err != nil {
		return nil, err
	}
	if err := d.writeReg("configure", RegSmplrtDiv, d.want[:]...); err != nil {
		return nil, err
	}
	doSleep(StartupWait)
	if err := d.verify(); err != nil {
		return nil, fmt.Errorf("mpu6050: init: %w", err)
	}
	return d, nil
}

// Attach attaches to a chip another controller initialised, for a takeover in
// the air. It reads WHO_AM_I, PWR_MGMT_1 and SMPLRT_DIV..ACCEL_CONFIG and
// WRITES NO REGISTER: if the chip is asleep, cycling, stopped or configured
// otherwise than o, it returns ErrMismatch and the chip is untouched.
func Attach(bus i2c.Bus, o *Opts) (*Dev, error) {
	d, err := newDev(bus, o)
	if err != nil {
		return nil, err
	}
	if err := d.checkWhoAmI(); err != nil {
		return nil, fmt.Errorf("mpu6050: attach: %w", err)
	}
	if err := d.verify(); err != nil {
		return nil, fmt.Errorf("mpu6050: attach: %w", err)
	}
	return d, nil
}

func (d *Dev) checkWhoAmI() error {
	if err := d.readReg(RegWhoAmI, d.r[:1]); err != nil {
		return err
	}
	if d.r[0] != WhoAmI {
		return fmt.Errorf("WHO_AM_I %#02x at %#02x: %w", d.r[0], d.o.Addr, ErrWhoAmI)
	}
	return nil
}

// verify reads PWR_MGMT_1 and the configuration; reads only.
func (d *Dev) verify() error {
	if err := d.readReg(RegPwrMgmt1, d.r[:1]); err != nil {
		return err
	}
	switch p := d.r[0]; {
	case p&PwrDeviceReset != 0:
		return fmt.Errorf("PWR_MGMT_1 %#02x: resetting: %w", p, ErrMismatch)
	case p&PwrSleep != 0:
		return fmt.Errorf("PWR_MGMT_1 %#02x: asleep: %w", p, ErrMismatch)
	case p&PwrCycle != 0:
		return fmt.Errorf("PWR_MGMT_1 %#02x: cycling: %w", p, ErrMismatch)
	case p&PwrClkMask == PwrClkStop:
		return fmt.Errorf("PWR_MGMT_1 %#02x: clock stopped: %w", p, ErrMismatch)
	}
	if err := d.readReg(RegSmplrtDiv, d.r[:4]); err != nil {
		return err
	}
	got := regs(d.r)
	// CONFIG's EXT_SYNC_SET (bits 5:3) and the self-test bits must be 0 too;
	// reserved bits (CONFIG 7:6, GYRO_CONFIG 2:0, ACCEL_CONFIG 2:0) are ignored.
	got[1] &= 0x3f
	got[2] &= 0xf8
	got[3] &= 0xf8
	if got != d.want {
		return fmt.Errorf("SMPLRT_DIV..ACCEL_CONFIG % x, want % x: %w", got[:], d.want[:], ErrMismatch)
	}
	return nil
}

func (d *Dev) readReg(reg byte, r []byte) error {
	d.w[0] = reg
	if err := d.bus.Tx(d.o.Addr, d.w[:1], r); err != nil {
		return fmt.Errorf("read register %#02x: %w", reg, err)
	}
	return nil
}

func (d *Dev) writeReg(what string, reg byte, v ...byte) error {
	d.w[0] = reg
	n := copy(d.w[1:], v)
	if err := d.bus.Tx(d.o.Addr, d.w[:1+n], nil); err != nil {
		return fmt.Errorf("mpu6050: init: %s: write register %#02x: %w", what, reg, err)
	}
	return nil
}

// Opts are the options in effect (defaults filled in).
func (d *Dev) Opts() Opts { return d.o }

// SampleRateHz is the chip's output data rate.
func (d *Dev) SampleRateHz() float64 { return d.rateHz }

// ReadRaw reads one 14-byte burst from ACCEL_XOUT_H (one transaction). It
// allocates nothing.
func (d *Dev) ReadRaw(r *Raw) error {
	if err := d.bus.Tx(d.o.Addr, d.burstW[:], d.burst[:]); err != nil {
		return fmt.Errorf("mpu6050: read: %w", err)
	}
	b := &d.burst
	for i := 0; i < 3; i++ {
		r.Accel[i] = int16(uint16(b[2*i])<<8 | uint16(b[2*i+1]))
		r.Gyro[i] = int16(uint16(b[8+2*i])<<8 | uint16(b[9+2*i]))
	}
	r.Temp = int16(uint16(b[6])<<8 | uint16(b[7]))
	return nil
}

// Scale converts a raw burst to SI units with the Dev's full scales.
func (d *Dev) Scale(r *Raw, s *Sample) {
	for i := 0; i < 3; i++ {
		s.Accel[i] = float64(r.Accel[i]) * d.accelK
		s.Gyro[i] = float64(r.Gyro[i]) * d.gyroK
	}
	s.TempC = float64(r.Temp)/340 + 36.53
}

// Read reads one measurement (one 14-byte burst) into s, in SI units. It
// allocates nothing.
func (d *Dev) Read(s *Sample) error {
	if err := d.ReadRaw(&d.raw); err != nil {
		return err
	}
	d.Scale(&d.raw, s)
	return nil
}

// CalibrateGyro averages n gyro samples, one per output sample period, while
// the drone stands still, and returns the mean as the gyro bias (rad/s). If
// the standard deviation of any axis exceeds maxStd (rad/s; DefaultMaxStd when
// <= 0) the drone is moving and it returns ErrMoving with the figures.
//
// The bias is NOT applied by the driver: Read keeps returning uncorrected
// rates. The caller (the controller) keeps the bias in its own state,
// subtracts it, and hands it over in a takeover, so a standby never has to
// calibrate in the air.
func (d *Dev) CalibrateGyro(ctx context.Context, n int, maxStd float64) (bias [3]float64, err error) {
	if n < 2 {
		return bias, fmt.Errorf("mpu6050: calibrate with %d samples, need at least 2", n)
	}
	if maxStd <= 0 {
		maxStd = DefaultMaxStd
	}
	period := time.Duration(float64(time.Second) / d.rateHz)
	var mean, m2 [3]float64
	s := &d.scratch
	for i := 1; i <= n; i++ {
		if err := ctx.Err(); err != nil {
			return bias, fmt.Errorf("mpu6050: calibrate: %w", err)
		}
		if err := d.Read(s); err != nil {
			return bias, fmt.Errorf("mpu6050: calibrate: %w", err)
		}
		for a := 0; a < 3; a++ { // Welford
			delta := s.Gyro[a] - mean[a]
			mean[a] += delta / float64(i)
			m2[a] += delta * (s.Gyro[a] - mean[a])
		}
		if i < n {
			doSleep(period)
		}
	}
	var std [3]float64
	for a := 0; a < 3; a++ {
		std[a] = math.Sqrt(m2[a] / float64(n-1))
	}
	if std[0] > maxStd || std[1] > maxStd || std[2] > maxStd {
		return bias, fmt.Errorf("mpu6050: gyro std dev %.4f %.4f %.4f rad/s over %d samples exceeds %.4f: %w", std[0], std[1], std[2], n, maxStd, ErrMoving)
	}
	return mean, nil
}
