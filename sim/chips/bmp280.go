package chips

import (
	"math"
	"math/rand/v2"
	"time"
)

// BMP280 registers.
const (
	bmpCalib    = 0x88
	bmpChipID   = 0xD0
	bmpReset    = 0xE0
	bmpStatus   = 0xF3
	bmpCtrlMeas = 0xF4
	bmpConfig   = 0xF5
	bmpPressMSB = 0xF7
)

// Calib280 is the BMP280's factory trim (registers 0x88..0x9F).
type Calib280 struct {
	T1                             uint16
	T2, T3                         int16
	P1                             uint16
	P2, P3, P4, P5, P6, P7, P8, P9 int16
}

// DatasheetCalib is the trim of the worked example in the BMP280 datasheet
// (section 8.2, table 23).
var DatasheetCalib = Calib280{
	T1: 27504, T2: 26435, T3: -1000,
	P1: 36477, P2: -10685, P3: 3024, P4: 2855, P5: 140, P6: -7, P7: 15500, P8: -14600, P9: 6000,
}

// standby times of normal mode by t_sb (BMP280), s.
var bmpStandby = [8]float64{0.0005, 0.0625, 0.125, 0.25, 0.5, 1, 2, 4}

// osrs → number of samples (0 = skipped, 5..7 = 16).
var bmpOS = [8]int{0, 1, 2, 4, 8, 16, 16, 16}

// BMP280 emulates a Bosch BMP280 on I2C at register level.
//
// Its raw 20-bit readings are computed by inverting the datasheet's integer
// compensation, so a driver applying that compensation (periph's bmxx80)
// reads the drone's true pressure and temperature plus noise. Forced mode
// measures once and returns to sleep; normal mode cycles with the standby
// time of config. Writes are register/value pairs; reads auto-increment.
type BMP280 struct {
	cal   Calib280
	noise Noise
	rng   *rand.Rand
	reg   [256]byte
	ptr   byte

	now       time.Duration
	measuring bool
	measEnd   time.Duration
	nextCycle time.Duration
	iirP      float64
	iirT      float64
	iirInit   bool
}

var _ Device = (*BMP280)(nil)

// NewBMP280 returns a chip as at power-up, with the given trim.
func NewBMP280(cal Calib280, n Noise) *BMP280 {
	b := &BMP280{cal: cal, noise: n, rng: newRand(n.Seed, 0x280)}
	b.reset()
	return b
}

func (b *BMP280) reset() {
	b.reg = [256]byte{}
	c := &b.cal
	for i, v := range []uint16{c.T1, uint16(c.T2), uint16(c.T3), c.P1, uint16(c.P2), uint16(c.P3),
		uint16(c.P4), uint16(c.P5), uint16(c.P6), uint16(c.P7), uint16(c.P8), uint16(c.P9)} {
		b.reg[bmpCalib+2*i] = byte(v)
		b.reg[bmpCalib+2*i+1] = byte(v >> 8)
	}
	b.reg[bmpChipID] = 0x58
	// Data registers reset to 0x80000 (skipped measurement).
	b.reg[bmpPressMSB] = 0x80
	b.reg[bmpPressMSB+3] = 0x80
	b.measuring = false
	b.iirInit = false
}

// Tx implements Device.
func (b *BMP280) Tx(w, r []byte) (Effect, error) {
	if len(w) > 0 {
		b.ptr = w[0]
		// Writes are (register, value) pairs; an odd trailing byte only
		// sets the register pointer for a read.
		for i := 0; i+1 < len(w); i += 2 {
			b.write(w[i], w[i+1])
		}
		if len(w)%2 == 1 {
			b.ptr = w[len(w)-1]
		}
	}
	for i := range r {
		if b.ptr == bmpStatus {
			var s byte
			if b.measuring {
				s |= 8
			}
			r[i] = s
		} else {
			r[i] = b.reg[b.ptr]
		}
		b.ptr++
	}
	return Effect{}, nil
}

func (b *BMP280) write(a, v byte) {
	switch a {
	case bmpReset:
		if v == 0xB6 {
			b.reset()
		}
	case bmpConfig:
		b.reg[a] = v
	case bmpCtrlMeas:
		b.reg[a] = v
		switch v & 3 {
		case 1, 2: // forced
			b.startMeasurement()
		case 3: // normal: first measurement at once
			if !b.measuring {
				b.startMeasurement()
			}
		default:
			b.measuring = false
		}
	}
}

// measTime is the typical measurement time (datasheet 9.1).
func (b *BMP280) measTime() time.Duration {
	ct := b.reg[bmpCtrlMeas]
	ot, op := bmpOS[ct>>5], bmpOS[(ct>>2)&7]
	ms := 1.0 + 2*float64(ot) + 2*float64(op)
	if op > 0 {
		ms += 0.5
	}
	return time.Duration(ms * float64(time.Millisecond))
}

func (b *BMP280) startMeasurement() {
	b.measuring = true
	b.measEnd = b.now + b.measTime()
}

// Step implements Device.
func (b *BMP280) Step(env *Env) {
	b.now = env.T
	mode := b.reg[bmpCtrlMeas] & 3
	if b.measuring && b.now >= b.measEnd {
		b.measuring = false
		b.latch(env)
		if mode == 1 || mode == 2 {
			b.reg[bmpCtrlMeas] &^= 3 // back to sleep
		} else if mode == 3 {
			sb := bmpStandby[b.reg[bmpConfig]>>5]
			b.nextCycle = b.measEnd + time.Duration(sb*float64(time.Second))
		}
	}
	if mode == 3 && !b.measuring && b.now >= b.nextCycle {
		b.startMeasurement()
	}
}

func (b *BMP280) latch(env *Env) {
	ct := b.reg[bmpCtrlMeas]
	ot, op := bmpOS[ct>>5], bmpOS[(ct>>2)&7]
	t := env.TempC
	p := env.PressurePa
	if b.noise.BaroTempC > 0 {
		t += b.noise.BaroTempC * b.rng.NormFloat64()
	}
	if b.noise.BaroPa > 0 && op > 0 {
		p += b.noise.BaroPa / math.Sqrt(float64(op)) * b.rng.NormFloat64()
	}
	// IIR filter of config (coefficient 1, 2, 4, 8, 16).
	coef := [8]float64{1, 2, 4, 8, 16, 16, 16, 16}[(b.reg[bmpConfig]>>2)&7]
	if !b.iirInit || coef == 1 {
		b.iirP, b.iirT, b.iirInit = p, t, true
	} else {
		b.iirP = (b.iirP*(coef-1) + p) / coef
		b.iirT = (b.iirT*(coef-1) + t) / coef
	}
	rawT, rawP := int32(0x80000), int32(0x80000)
	var tFine int32
	if ot > 0 {
		rawT = b.rawTemp(b.iirT)
		_, tFine = b.cal.compensateT(rawT)
		rawT = quantize(rawT, dropBits(ot))
	}
	if op > 0 {
		if ot == 0 {
			_, tFine = b.cal.compensateT(b.rawTemp(b.iirT))
		}
		rawP = b.rawPressure(b.iirP, tFine)
		rawP = quantize(rawP, dropBits(op))
	}
	put20(b.reg[bmpPressMSB:], rawP)
	put20(b.reg[bmpPressMSB+3:], rawT)
}

// dropBits is how many low bits of the 20-bit result an oversampling count
// leaves at zero: 16-bit resolution at 1×, one more bit per doubling.
func dropBits(os int) uint {
	n := uint(4)
	for os > 1 && n > 0 {
		n--
		os >>= 1
	}
	return n
}

// quantize rounds a 20-bit raw value to a multiple of 2^n.
func quantize(v int32, n uint) int32 {
	if n == 0 {
		return v
	}
	v = (v + 1<<(n-1)) &^ (1<<n - 1)
	if v > 1<<20-1 {
		v = 1<<20 - 1<<n
	}
	return v
}

func put20(b []byte, v int32) {
	b[0] = byte(v >> 12)
	b[1] = byte(v >> 4)
	b[2] = byte(v<<4) & 0xF0
}

// rawTemp finds the 20-bit raw temperature the compensation maps to tempC.
func (b *BMP280) rawTemp(tempC float64) int32 {
	want := int32(math.Round(tempC * 100))
	lo, hi := int32(0), int32(1<<20-1)
	inc := b.cal.T2 >= 0
	for lo < hi {
		mid := lo + (hi-lo)/2
		t, _ := b.cal.compensateT(mid)
		if (t < want) == inc {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// rawPressure finds the 20-bit raw pressure the compensation maps to pa.
func (b *BMP280) rawPressure(pa float64, tFine int32) int32 {
	want := int64(math.Round(pa * 256)) // compensation output is Q24.8 Pa
	lo, hi := int32(0), int32(1<<20-1)
	for lo < hi { // compensated pressure falls as raw rises
		mid := lo + (hi-lo)/2
		if int64(b.cal.compensateP(mid, tFine)) > want {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// compensateT is the datasheet's bmp280_compensate_T_int32: temperature in
// 0.01 °C, and t_fine.
func (c *Calib280) compensateT(adc int32) (int32, int32) {
	v1 := ((adc>>3 - int32(c.T1)<<1) * int32(c.T2)) >> 11
	v2 := (((adc>>4 - int32(c.T1)) * (adc>>4 - int32(c.T1))) >> 12 * int32(c.T3)) >> 14
	tf := v1 + v2
	return (tf*5 + 128) >> 8, tf
}

// compensateP is the datasheet's bmp280_compensate_P_int64: pressure in Pa
// as Q24.8.
func (c *Calib280) compensateP(adc, tFine int32) uint32 {
	v1 := int64(tFine) - 128000
	v2 := v1 * v1 * int64(c.P6)
	v2 += (v1 * int64(c.P5)) << 17
	v2 += int64(c.P4) << 35
	v1 = (v1*v1*int64(c.P3))>>8 + (v1*int64(c.P2))<<12
	v1 = ((int64(1)<<47 + v1) * int64(c.P1)) >> 33
	if v1 == 0 {
		return 0
	}
	p := ((int64(1048576-adc)<<31 - v2) * 3125) / v1
	v1 = (int64(c.P9) * (p >> 13) * (p >> 13)) >> 25
	v2 = (int64(c.P8) * p) >> 19
	return uint32((p+v1+v2)>>8 + int64(c.P7)<<4)
}

// PressureAt is the ICAO standard atmosphere's static pressure at altitude h
// (m) above a site at elevation site (m), Pa.
func PressureAt(site, h float64) float64 {
	return 101325 * math.Pow(1-2.25577e-5*(site+h), 5.25588)
}

// TemperatureAt is the standard atmosphere's temperature at altitude h above
// a site whose ground temperature is ground °C.
func TemperatureAt(ground, h float64) float64 { return ground - 0.0065*h }
