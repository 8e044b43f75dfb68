package chips

import (
	"errors"
	"math/rand/v2"
	"time"
)

// Bus addresses (docs/conventions.md).
const (
	AddrMPU6050 = 0x68
	AddrBMP280  = 0x76
	AddrPCA9685 = 0x40
)

// ErrDevice is wrapped by every error a Device returns for a transaction it
// refuses; the bus answers it with a device error status.
var ErrDevice = errors.New("chips: device refused the transaction")

// Env is the drone's true state, as the chips sense it.
type Env struct {
	T             time.Duration // simulated time since start (monotonic)
	Dt            float64       // length of the physics step that just ended, s
	SpecificForce [3]float64    // body FLU, m/s² (what an ideal accelerometer reads)
	Gyro          [3]float64    // body rates, rad/s
	TempC         float64       // air and die temperature, °C
	PressurePa    float64       // static pressure, Pa
}

// Effect says what a transaction did that the simulator watches for.
type Effect struct {
	// PWM is true when the transaction wrote any PWM output register
	// (PCA9685 LEDn or ALL_LED).
	PWM bool
	// Reinit names the (re)initialising write the transaction made, or is
	// empty: PCA9685 MODE1, PRE_SCALE or ALL_LED; MPU-6050 DEVICE_RESET or
	// SLEEP.
	Reinit string
}

// Device is one emulated chip on the bus.
type Device interface {
	// Tx runs one I2C transaction: write w, then read len(r) bytes into r.
	Tx(w, r []byte) (Effect, error)
	// Step tells the chip the drone's state at the end of a physics step.
	Step(env *Env)
}

// Noise configures sensor noise and bias. The zero value is noise free.
type Noise struct {
	GyroDensity  float64    // gyro rate noise density, °/s/√Hz
	GyroBias     [3]float64 // constant gyro bias, °/s, per axis
	AccelDensity float64    // accel noise density, g/√Hz
	AccelBias    [3]float64 // constant accel bias, g, per axis
	BaroPa       float64    // pressure noise, Pa RMS, at 1× oversampling (falls with √oversampling)
	BaroTempC    float64    // temperature noise, °C RMS
	Seed         uint64     // seeds the noise generators
}

// DefaultNoise is a realistic MPU-6050 and BMP280: gyro 0.005 °/s/√Hz with
// a bias of a few tenths of °/s, accel 400 µg/√Hz with tens of mg of bias,
// pressure 2.6 Pa RMS at 1× oversampling.
func DefaultNoise() Noise {
	return Noise{
		GyroDensity:  0.005,
		GyroBias:     [3]float64{0.4, -0.25, 0.15},
		AccelDensity: 400e-6,
		AccelBias:    [3]float64{0.012, -0.008, 0.02},
		BaroPa:       2.6,
		BaroTempC:    0.005,
		Seed:         1,
	}
}

func newRand(seed, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream))
}
