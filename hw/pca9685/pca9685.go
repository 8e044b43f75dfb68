package pca9685

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"periph.io/x/conn/v3/i2c"
)

// Registers.
const (
	RegMode1     = 0x00
	RegMode2     = 0x01
	RegLED0OnL   = 0x06
	RegAllLEDOnL = 0xFA
	RegPreScale  = 0xFE
)

// MODE1 and MODE2 bits, and the LEDn_ON_H / LEDn_OFF_H full bits.
const (
	Mode1Restart = 0x80
	Mode1ExtClk  = 0x40
	Mode1AI      = 0x20
	Mode1Sleep   = 0x10
	Mode1AllCall = 0x01
	Mode2Invrt   = 0x10
	Mode2OutDrv  = 0x04
	FullBit      = 0x10
)

// OscStartup is the wait after clearing SLEEP before RESTART (datasheet: the
// oscillator needs at most 500 µs).
const OscStartup = 500 * time.Microsecond

// MaxChannels is the number of PWM channels of the chip.
const MaxChannels = 16

// Errors callers branch on.
var (
	// ErrNoAuthority: a write was refused because the PWM authority is not held.
	ErrNoAuthority = errors.New("pca9685: PWM authority not held")
	// ErrMismatch: WarmAttach found the chip not in the state ColdInit leaves
	// (asleep, no auto-increment, inverted or open-drain outputs, or another
	// prescale). Nothing was written.
	ErrMismatch = errors.New("pca9685: chip state does not match the options")
	// ErrChannels: WriteMotors got a number of pulses other than Opts.Channels.
	ErrChannels = errors.New("pca9685: wrong number of motor pulses")
)

// doSleep is the seam tests replace to skip the oscillator wait.
var doSleep = time.Sleep

// Authority says whether this process may write PWM now. *pwmlock.Lock
// implements it. Held must be cheap and allocation-free: it runs every tick.
type Authority interface {
	Held() bool
}

// Opts configures the chip. Zero fields take DefaultOpts' values.
type Opts struct {
	// Addr is the 7-bit I2C address. Default 0x40.
	Addr uint16
	// FreqHz is the PWM frequency asked for. Default 400 (prescale 14 at
	// 25 MHz: 406.9 Hz). Higher rates let the ESC see a new command sooner;
	// standard PWM ESCs accept up to about 490 Hz.
	FreqHz float64
	// OscHz is the oscillator frequency. Default 25e6 (the internal one). A
	// single chip's internal oscillator is only within a few % of this, which
	// shifts every pulse width by the same factor; trim it here if measured.
	OscHz float64
	// DisarmedUS is the pulse that stops a motor, written by ColdInit and
	// Disarm. Default 1000.
	DisarmedUS float64
	// Channels is the number of motors. Default 4.
	Channels int
	// FirstChannel is the channel of motor 1; motor n is FirstChannel+n-1.
	// Default 0.
	FirstChannel int
}

// DefaultOpts are the options of the drone in docs/conventions.md.
var DefaultOpts = Opts{Addr: 0x40, FreqHz: 400, OscHz: 25e6, DisarmedUS: 1000, Channels: 4, FirstChannel: 0}

func (o *Opts) withDefaults() (Opts, error) {
	r := DefaultOpts
	if o != nil {
		if o.Addr != 0 {
			r.Addr = o.Addr
		}
		if o.FreqHz != 0 {
			r.FreqHz = o.FreqHz
		}
		if o.OscHz != 0 {
			r.OscHz = o.OscHz
		}
		if o.DisarmedUS != 0 {
			r.DisarmedUS = o.DisarmedUS
		}
		if o.Channels != 0 {
			r.Channels = o.Channels
		}
		r.FirstChannel = o.FirstChannel
	}
	if r.Channels < 1 || r.FirstChannel < 0 || r.FirstChannel+r.Channels > MaxChannels {
		return r, fmt.Errorf("pca9685: channels %d..%d out of 0..%d", r.FirstChannel, r.FirstChannel+r.Channels-1, MaxChannels-1)
	}
	if !(r.FreqHz > 0) || !(r.OscHz > 0) || !(r.DisarmedUS >= 0) {
		return r, fmt.Errorf("pca9685: bad frequency %v Hz, oscillator %v Hz or disarmed pulse %v µs", r.FreqHz, r.OscHz, r.DisarmedUS)
	}
	if p := Prescale(r.OscHz, r.FreqHz); p < 3 || p > 255 {
		return r, fmt.Errorf("pca9685: %v Hz needs prescale %d, outside 3..255", r.FreqHz, p)
	}
	return r, nil
}

// Prescale is the PRE_SCALE value for freqHz: round(osc / (4096 * f)) - 1.
func Prescale(oscHz, freqHz float64) int {
	return int(math.Round(oscHz/(4096*freqHz))) - 1
}

// Dev is the PCA9685 with the motor channels. WriteMotors and Disarm are safe
// for concurrent use.
type Dev struct {
	bus  i2c.Bus
	o    Opts
	pre  uint8
	usPC float64 // µs per count, from the chip's real prescale

	mu   sync.Mutex
	auth Authority
	buf  [1 + 4*MaxChannels]byte
	reg  [1]byte
	r1   [1]byte
}

// ColdInit initialises the chip from any state; for the ground only (it
// stops every output for a moment). See the package doc for the sequence. The
// returned Dev has no Authority yet.
func ColdInit(ctx context.Context, bus i2c.Bus, o *Opts) (*Dev, error) {
	opts, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Dev{bus: bus, o: opts}
	pre := uint8(Prescale(opts.OscHz, opts.FreqHz))
	step := func(what string, w ...byte) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("pca9685: cold init: %w", err)
		}
		if err := bus.Tx(opts.Addr, w, nil); err != nil {
			return fmt.Errorf("pca9685: cold init: %s: %w", what, err)
		}
		return nil
	}
	if err := step("sleep", RegMode1, Mode1Sleep|Mode1AI|Mode1AllCall); err != nil {
		return nil, err
	}
	if err := step("prescale", RegPreScale, pre); err != nil {
		return nil, err
	}
	if err := step("mode2", RegMode2, Mode2OutDrv); err != nil {
		return nil, err
	}
	// The disarmed pulses, while the oscillator still sleeps (auto-increment
	// is already on), with the conversion of the prescale just written.
	d.pre = pre
	d.usPC = usPerCount(opts.OscHz, pre)
	d.fill(nil)
	if err := step("disarmed pulses", d.buf[:1+4*opts.Channels]...); err != nil {
		return nil, err
	}
	if err := step("wake", RegMode1, Mode1AI|Mode1AllCall); err != nil {
		return nil, err
	}
	doSleep(OscStartup)
	m1, err := d.read(RegMode1)
	if err != nil {
		return nil, fmt.Errorf("pca9685: cold init: %w", err)
	}
	if m1&Mode1Restart != 0 {
		// Datasheet 7.3.1.1: writing 1 to RESTART restarts every channel.
		if err := step("restart", RegMode1, m1&^Mode1Sleep|Mode1Restart); err != nil {
			return nil, err
		}
	}
	// Check that the chip now is what WarmAttach will accept.
	if err := d.attach(); err != nil {
		return nil, fmt.Errorf("pca9685: cold init: %w", err)
	}
	return d, nil
}

// WarmAttach attaches to a chip that a running controller initialised, for a
// takeover in the air. It reads MODE1, MODE2 and PRE_SCALE and writes nothing:
// if the chip is asleep, lacks auto-increment, has inverted or open-drain
// outputs, or its prescale is more than 1 away from the one FreqHz needs, it
// returns ErrMismatch. The µs-to-count conversion uses the prescale the chip
// really has. The returned Dev has no Authority yet.
func WarmAttach(bus i2c.Bus, o *Opts) (*Dev, error) {
	opts, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Dev{bus: bus, o: opts}
	if err := d.attach(); err != nil {
		return nil, fmt.Errorf("pca9685: warm attach: %w", err)
	}
	return d, nil
}

// attach reads and checks MODE1, MODE2 and PRE_SCALE; reads only.
func (d *Dev) attach() error {
	m1, err := d.read(RegMode1)
	if err != nil {
		return err
	}
	m2, err := d.read(RegMode2)
	if err != nil {
		return err
	}
	pre, err := d.read(RegPreScale)
	if err != nil {
		return err
	}
	switch {
	case m1&Mode1Sleep != 0:
		return fmt.Errorf("MODE1 %#02x: asleep: %w", m1, ErrMismatch)
	case m1&Mode1AI == 0:
		return fmt.Errorf("MODE1 %#02x: auto-increment off: %w", m1, ErrMismatch)
	case m2&Mode2Invrt != 0:
		return fmt.Errorf("MODE2 %#02x: inverted outputs: %w", m2, ErrMismatch)
	case m2&Mode2OutDrv == 0:
		return fmt.Errorf("MODE2 %#02x: open-drain outputs: %w", m2, ErrMismatch)
	}
	want := Prescale(d.o.OscHz, d.o.FreqHz)
	if diff := int(pre) - want; diff < -1 || diff > 1 {
		return fmt.Errorf("PRE_SCALE %d, want %d±1 for %v Hz: %w", pre, want, d.o.FreqHz, ErrMismatch)
	}
	d.pre = pre
	d.usPC = usPerCount(d.o.OscHz, pre)
	return nil
}

func (d *Dev) read(reg byte) (byte, error) {
	d.reg[0] = reg
	if err := d.bus.Tx(d.o.Addr, d.reg[:], d.r1[:]); err != nil {
		return 0, fmt.Errorf("read register %#02x: %w", reg, err)
	}
	return d.r1[0], nil
}

func usPerCount(oscHz float64, pre uint8) float64 {
	return 1e6 * float64(int(pre)+1) / oscHz
}

// SetAuthority sets what WriteMotors and Disarm ask before writing.
func (d *Dev) SetAuthority(a Authority) {
	d.mu.Lock()
	d.auth = a
	d.mu.Unlock()
}

// Prescale is the chip's PRE_SCALE as read (or written by ColdInit).
func (d *Dev) Prescale() uint8 { return d.pre }

// USPerCount is the pulse width of one of the 4096 counts of a period, µs.
func (d *Dev) USPerCount() float64 { return d.usPC }

// PeriodUS is the PWM period, µs.
func (d *Dev) PeriodUS() float64 { return 4096 * d.usPC }

// Opts are the options in effect (defaults filled in).
func (d *Dev) Opts() Opts { return d.o }

// Counts converts a pulse width to OFF counts: rounded, clamped to 0..4095.
// NaN gives the disarmed pulse.
func (d *Dev) Counts(us float64) uint16 {
	if us != us {
		us = d.o.DisarmedUS
	}
	c := math.Round(us / d.usPC)
	if c < 0 {
		return 0
	}
	if c > 4095 {
		return 4095
	}
	return uint16(c)
}

// fill encodes the burst for us (nil: every channel disarmed) into d.buf.
func (d *Dev) fill(us []float64) {
	d.buf[0] = byte(RegLED0OnL + 4*d.o.FirstChannel)
	for i := 0; i < d.o.Channels; i++ {
		u := d.o.DisarmedUS
		if us != nil {
			u = us[i]
		}
		c := d.Counts(u)
		b := d.buf[1+4*i:]
		b[0], b[1] = 0, 0                // ON at count 0, full-on bit clear
		b[2], b[3] = byte(c), byte(c>>8) // OFF at c, full-off bit clear
	}
}

// WriteMotors sets motor n's pulse to us[n] µs (len(us) == Opts.Channels) in
// one auto-increment burst from LEDn_ON_L of the first motor channel: ON=0,
// OFF=counts. It refuses with ErrNoAuthority, writing nothing, unless the
// Authority is held. It allocates nothing.
func (d *Dev) WriteMotors(us []float64) error {
	if len(us) != d.o.Channels {
		return fmt.Errorf("pca9685: %d pulses for %d channels: %w", len(us), d.o.Channels, ErrChannels)
	}
	return d.write(us)
}

// Disarm writes the disarmed pulse to every motor channel (one burst). It
// also needs the authority.
func (d *Dev) Disarm() error { return d.write(nil) }

func (d *Dev) write(us []float64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.auth == nil || !d.auth.Held() {
		return ErrNoAuthority
	}
	d.fill(us)
	if err := d.bus.Tx(d.o.Addr, d.buf[:1+4*d.o.Channels], nil); err != nil {
		return fmt.Errorf("pca9685: write motors: %w", err)
	}
	return nil
}

// ReadMotors reads the pulse widths the chip outputs now on the motor
// channels into us (len(us) == Opts.Channels), µs; a channel with its
// full-off bit set reads 0, full-on reads PeriodUS. It only reads, so a
// standby or a controller taking over may call it without the authority.
func (d *Dev) ReadMotors(us []float64) error {
	if len(us) != d.o.Channels {
		return fmt.Errorf("pca9685: %d pulses for %d channels: %w", len(us), d.o.Channels, ErrChannels)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reg[0] = byte(RegLED0OnL + 4*d.o.FirstChannel)
	r := d.buf[1 : 1+4*d.o.Channels]
	if err := d.bus.Tx(d.o.Addr, d.reg[:], r); err != nil {
		return fmt.Errorf("pca9685: read motors: %w", err)
	}
	for i := range us {
		b := r[4*i:]
		on := int(b[0]) | int(b[1]&0x0f)<<8
		off := int(b[2]) | int(b[3]&0x0f)<<8
		switch {
		case b[3]&FullBit != 0:
			us[i] = 0
		case b[1]&FullBit != 0:
			us[i] = d.PeriodUS()
		default:
			us[i] = float64((off-on+4096)%4096) * d.usPC
		}
	}
	return nil
}
