package chips

// PCA9685 registers and bits.
const (
	pcaMode1    = 0x00
	pcaMode2    = 0x01
	pcaLED0     = 0x06
	pcaLEDLast  = 0x45
	pcaAllLED   = 0xFA
	pcaPrescale = 0xFE

	pcaRestart = 0x80
	pcaAI      = 0x20
	pcaSleep   = 0x10
	pcaInvrt   = 0x10 // MODE2

	// OscHz is the internal oscillator frequency.
	OscHz = 25e6
)

// PCA9685 emulates an NXP PCA9685 16-channel PWM controller at register
// level, as an ESC driver sees it.
//
// MODE1 powers up as 0x11 (SLEEP, ALLCALL): no output until SLEEP clears.
// PRE_SCALE (default 30) can only be written while asleep. Putting the chip
// to sleep while its outputs run sets RESTART; the outputs stay held off
// until RESTART is written with 1 or a PWM register is written. AI selects
// register auto-increment (0x00..0x45 rolls over to 0x00). LEDn_ON/OFF carry
// the full-on (ON_H bit 4) and full-off (OFF_H bit 4, which wins) bits;
// ALL_LED (0xFA..0xFD) writes every channel and reads as zero. Outputs
// change at the end of a write transaction (MODE2 OCH = 0, change on STOP),
// so a 16-byte burst over four channels updates them at once.
type PCA9685 struct {
	reg     [256]byte
	ptr     byte
	held    bool // RESTART pending: outputs held off after a sleep
	running bool // outputs ran before the last sleep
	pulse   [16]float64
}

var _ Device = (*PCA9685)(nil)

// NewPCA9685 returns a chip as at power-up.
func NewPCA9685() *PCA9685 {
	p := &PCA9685{}
	p.reg[pcaMode1] = 0x11
	p.reg[pcaMode2] = 0x04
	p.reg[0x02], p.reg[0x03], p.reg[0x04], p.reg[0x05] = 0xE2, 0xE4, 0xE8, 0xE0
	for ch := range 16 {
		p.reg[pcaLED0+4*ch+3] = 0x10 // LEDn_OFF_H: full off
	}
	p.reg[pcaPrescale] = 0x1E
	p.update()
	return p
}

// Tx implements Device.
func (p *PCA9685) Tx(w, r []byte) (Effect, error) {
	var e Effect
	if len(w) > 0 {
		p.ptr = w[0]
		for _, v := range w[1:] {
			p.write(p.ptr, v, &e)
			p.advance()
		}
		if e.PWM {
			p.held = false
		}
		p.update()
	}
	for i := range r {
		if p.ptr >= pcaAllLED && p.ptr < pcaPrescale {
			r[i] = 0 // ALL_LED reads as zero
		} else if p.ptr == pcaMode1 && p.held {
			r[i] = p.reg[pcaMode1] | pcaRestart
		} else {
			r[i] = p.reg[p.ptr]
		}
		p.advance()
	}
	return e, nil
}

func (p *PCA9685) advance() {
	if p.reg[pcaMode1]&pcaAI == 0 {
		return
	}
	switch {
	case p.ptr == pcaLEDLast, p.ptr == 0xFF:
		p.ptr = 0
	default:
		p.ptr++
	}
}

func (p *PCA9685) write(a, v byte, e *Effect) {
	switch {
	case a == pcaMode1:
		e.Reinit = "pca9685 MODE1"
		old := p.reg[pcaMode1]
		if v&pcaSleep != 0 && old&pcaSleep == 0 && p.outputsOn() {
			p.held = true // RESTART reads 1
		}
		if v&pcaRestart != 0 && v&pcaSleep == 0 {
			p.held = false // restart the previous outputs
		}
		p.reg[pcaMode1] = v &^ pcaRestart
	case a == pcaMode2:
		p.reg[a] = v
	case a >= 0x02 && a <= 0x05:
		p.reg[a] = v
	case a >= pcaLED0 && a <= pcaLEDLast:
		p.reg[a] = v
		e.PWM = true
	case a >= pcaAllLED && a < pcaPrescale:
		e.Reinit = "pca9685 ALL_LED"
		e.PWM = true
		for ch := range 16 {
			p.reg[pcaLED0+4*ch+int(a-pcaAllLED)] = v
		}
	case a == pcaPrescale:
		e.Reinit = "pca9685 PRE_SCALE"
		if p.reg[pcaMode1]&pcaSleep != 0 { // writable only while asleep
			p.reg[a] = max(v, 3)
		}
	}
}

func (p *PCA9685) outputsOn() bool {
	return p.reg[pcaMode1]&pcaSleep == 0 && !p.held
}

// update recomputes the outputs from the registers.
func (p *PCA9685) update() {
	on := p.outputsOn()
	period := p.PeriodUS()
	inv := p.reg[pcaMode2]&pcaInvrt != 0
	for ch := range 16 {
		b := p.reg[pcaLED0+4*ch : pcaLED0+4*ch+4]
		var w float64
		switch {
		case !on:
			w = 0
		case b[3]&0x10 != 0: // full off wins
			w = 0
		case b[1]&0x10 != 0:
			w = period
		default:
			ton := int(b[0]) | int(b[1]&0x0F)<<8
			toff := int(b[2]) | int(b[3]&0x0F)<<8
			n := (toff - ton + 4096) % 4096
			w = float64(n) * period / 4096
		}
		if inv && on {
			w = period - w
		}
		p.pulse[ch] = w
	}
}

// Prescale is the PRE_SCALE value in effect.
func (p *PCA9685) Prescale() byte { return p.reg[pcaPrescale] }

// PeriodUS is the PWM period in µs for the prescale in effect.
func (p *PCA9685) PeriodUS() float64 {
	return 4096 * float64(int(p.reg[pcaPrescale])+1) / OscHz * 1e6
}

// Pulse is channel ch's high time in µs (0 when off, asleep or held).
func (p *PCA9685) Pulse(ch int) float64 { return p.pulse[ch] }

// Step implements Device; the PCA9685 senses nothing.
func (p *PCA9685) Step(*Env) {}

// ESCCommand maps a pulse width to an ESC throttle command in [0, 1]
// (docs/conventions.md): 1000 µs stopped, 2000 µs full; anything under
// 1000 µs, or no pulse at all, stops the motor.
func ESCCommand(pulseUS float64) float64 {
	u := (pulseUS - 1000) / 1000
	if !(u > 0) {
		return 0
	}
	return min(u, 1)
}
