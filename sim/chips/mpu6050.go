package chips

import (
	"math"
	"math/rand/v2"
)

// MPU-6050 registers.
const (
	mpuSmplrtDiv   = 0x19
	mpuConfig      = 0x1A
	mpuGyroConfig  = 0x1B
	mpuAccelConfig = 0x1C
	mpuIntStatus   = 0x3A
	mpuAccelXoutH  = 0x3B
	mpuGyroZoutL   = 0x48
	mpuPwrMgmt1    = 0x6B
	mpuWhoAmI      = 0x75

	mpuDeviceReset = 0x80
	mpuSleep       = 0x40
)

// dlpfBW is the bandwidth in Hz of the accelerometer and gyroscope for each
// DLPF_CFG (register map, CONFIG). 7 is reserved; it behaves as 0.
var dlpfBW = [8][2]float64{{260, 256}, {184, 188}, {94, 98}, {44, 42}, {21, 20}, {10, 10}, {5, 5}, {260, 256}}

// MPU6050 emulates an InvenSense MPU-6050 at register level.
//
// It powers up asleep (PWR_MGMT_1 = 0x40) with its data registers at zero;
// once awake it samples at the rate SMPLRT_DIV and CONFIG set, low-pass
// filters at the DLPF bandwidth (first order), adds noise and bias, scales by
// GYRO_CONFIG and ACCEL_CONFIG, and latches the 14 big-endian data bytes at
// 0x3B..0x48. The register pointer auto-increments on reads and writes.
type MPU6050 struct {
	noise Noise
	rng   *rand.Rand
	reg   [128]byte
	ptr   byte

	acc, gyro [3]float64 // filtered, g and °/s
	temp      float64
	primed    bool
	sinceSmp  float64
}

var _ Device = (*MPU6050)(nil)

// NewMPU6050 returns a chip as at power-up.
func NewMPU6050(n Noise) *MPU6050 {
	m := &MPU6050{noise: n, rng: newRand(n.Seed, 0x6050)}
	m.reset()
	return m
}

func (m *MPU6050) reset() {
	m.reg = [128]byte{}
	m.reg[mpuPwrMgmt1] = mpuSleep
	m.reg[mpuWhoAmI] = 0x68
	m.primed = false
	m.sinceSmp = 0
}

// Asleep reports whether the SLEEP bit is set.
func (m *MPU6050) Asleep() bool { return m.reg[mpuPwrMgmt1]&mpuSleep != 0 }

// Tx implements Device.
func (m *MPU6050) Tx(w, r []byte) (Effect, error) {
	var e Effect
	if len(w) > 0 {
		m.ptr = w[0] & 0x7f
		for _, v := range w[1:] {
			if re := m.write(m.ptr, v); re != "" {
				e.Reinit = re
			}
			m.ptr = (m.ptr + 1) & 0x7f
		}
	}
	for i := range r {
		r[i] = m.reg[m.ptr]
		if m.ptr == mpuIntStatus {
			m.reg[mpuIntStatus] = 0 // cleared on read
		}
		m.ptr = (m.ptr + 1) & 0x7f
	}
	return e, nil
}

func (m *MPU6050) write(a, v byte) string {
	switch {
	case a == mpuWhoAmI, a >= mpuIntStatus && a <= mpuGyroZoutL:
		return "" // read only
	case a == mpuPwrMgmt1:
		if v&mpuDeviceReset != 0 {
			m.reset()
			return "mpu6050 DEVICE_RESET"
		}
		was := m.Asleep()
		m.reg[a] = v
		if !was && m.Asleep() {
			return "mpu6050 SLEEP"
		}
		return ""
	}
	m.reg[a] = v
	return ""
}

// Step implements Device.
func (m *MPU6050) Step(env *Env) {
	if m.Asleep() {
		return
	}
	cfg := m.reg[mpuConfig] & 7
	bwA, bwG := dlpfBW[cfg][0], dlpfBW[cfg][1]
	const g = 9.80665
	const deg = 180 / math.Pi
	if !m.primed {
		for i := range 3 {
			m.acc[i] = env.SpecificForce[i] / g
			m.gyro[i] = env.Gyro[i] * deg
		}
		m.primed = true
	}
	aA := 1 - math.Exp(-2*math.Pi*bwA*env.Dt)
	aG := 1 - math.Exp(-2*math.Pi*bwG*env.Dt)
	for i := range 3 {
		m.acc[i] += aA * (env.SpecificForce[i]/g - m.acc[i])
		m.gyro[i] += aG * (env.Gyro[i]*deg - m.gyro[i])
	}
	m.temp = env.TempC

	// Sample rate = gyro output rate / (1 + SMPLRT_DIV).
	out := 1000.0
	if cfg == 0 || cfg == 7 {
		out = 8000
	}
	period := float64(1+int(m.reg[mpuSmplrtDiv])) / out
	m.sinceSmp += env.Dt
	if m.sinceSmp+1e-9 < period {
		return
	}
	m.sinceSmp -= period
	if m.sinceSmp >= period { // sampling faster than the physics steps
		m.sinceSmp = 0
	}
	m.latch(bwA, bwG)
}

var (
	accelLSB = [4]float64{16384, 8192, 4096, 2048} // LSB/g
	gyroLSB  = [4]float64{131, 65.5, 32.8, 16.4}   // LSB/(°/s)
)

func (m *MPU6050) latch(bwA, bwG float64) {
	al := accelLSB[(m.reg[mpuAccelConfig]>>3)&3]
	gl := gyroLSB[(m.reg[mpuGyroConfig]>>3)&3]
	// White noise through a first-order filter: equivalent noise bandwidth π/2·fc.
	sa := m.noise.AccelDensity * math.Sqrt(bwA*math.Pi/2)
	sg := m.noise.GyroDensity * math.Sqrt(bwG*math.Pi/2)
	for i := range 3 {
		a := m.acc[i] + m.noise.AccelBias[i]
		gy := m.gyro[i] + m.noise.GyroBias[i]
		if sa > 0 {
			a += sa * m.rng.NormFloat64()
		}
		if sg > 0 {
			gy += sg * m.rng.NormFloat64()
		}
		put16(m.reg[mpuAccelXoutH+2*i:], a*al)
		put16(m.reg[mpuAccelXoutH+8+2*i:], gy*gl)
	}
	put16(m.reg[mpuAccelXoutH+6:], (m.temp-36.53)*340)
	m.reg[mpuIntStatus] |= 1 // DATA_RDY_INT
}

// put16 stores v rounded and saturated to int16, big endian.
func put16(b []byte, v float64) {
	v = math.Round(v)
	if v > math.MaxInt16 {
		v = math.MaxInt16
	} else if v < math.MinInt16 {
		v = math.MinInt16
	}
	x := uint16(int16(v))
	b[0] = byte(x >> 8)
	b[1] = byte(x)
}
