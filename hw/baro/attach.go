package baro

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"periph.io/x/conn/v3/i2c"
)

// BMP280 registers used by Attach (datasheet section 4.3).
const (
	regCalib    = 0x88 // 24 bytes: dig_T1..T3, dig_P1..P9
	regID       = 0xD0
	regCtrlMeas = 0xF4 // osrs_t[7:5] osrs_p[4:2] mode[1:0]
	regConfig   = 0xF5 // t_sb[7:5] filter[4:2] spi3w_en[0]
	regData     = 0xF7 // press msb, lsb, xlsb, temp msb, lsb, xlsb
	chipID280   = 0x58
	modeNormal  = 0x03
)

// ErrNotRunning: Attach found the chip not in normal mode; only a cold start
// (Open) may configure it.
var ErrNotRunning = errors.New("baro: BMP280 is not sensing in normal mode")

// Attach takes over a BMP280 that another controller configured (Open) and
// that is sensing in normal mode: it reads the chip id, the calibration and
// the configuration, and from then on only reads the data registers, every
// Opts.Interval, in its own goroutine. It writes nothing to the chip, ever:
// a takeover never re-initialises a chip. Close on an attached Baro is
// Detach. Only Interval and StaleAfter of o are used.
func Attach(bus i2c.Bus, addr uint16, o *Opts) (*Baro, error) {
	opts, err := o.resolve()
	if err != nil {
		return nil, err
	}
	if addr == 0 {
		addr = DefaultAddr
	}
	d := &i2c.Dev{Bus: bus, Addr: addr}
	var id [1]byte
	if err := d.Tx([]byte{regID}, id[:]); err != nil {
		return nil, fmt.Errorf("baro: attach %#x: read id: %w", addr, err)
	}
	if id[0] != chipID280 {
		return nil, fmt.Errorf("baro: attach %#x: chip id %#x, want %#x (BMP280)", addr, id[0], chipID280)
	}
	var cal [24]byte
	if err := d.Tx([]byte{regCalib}, cal[:]); err != nil {
		return nil, fmt.Errorf("baro: attach %#x: read calibration: %w", addr, err)
	}
	var cfg [2]byte
	if err := d.Tx([]byte{regCtrlMeas}, cfg[:]); err != nil {
		return nil, fmt.Errorf("baro: attach %#x: read configuration: %w", addr, err)
	}
	if cfg[0]&0x03 != modeNormal || cfg[0]>>2&0x07 == 0 {
		return nil, fmt.Errorf("baro: attach %#x: ctrl_meas %#02x: %w", addr, cfg[0], ErrNotRunning)
	}
	c := parseCalib(cal[:])
	b := &Baro{o: opts, now: time.Now, stop: make(chan struct{}), done: make(chan struct{}), first: make(chan struct{}), attached: true}
	read := func() (pa, tc float64, err error) {
		var raw [6]byte
		if err := d.Tx([]byte{regData}, raw[:]); err != nil {
			return 0, 0, err
		}
		rp := int32(raw[0])<<12 | int32(raw[1])<<4 | int32(raw[2])>>4
		rt := int32(raw[3])<<12 | int32(raw[4])<<4 | int32(raw[5])>>4
		t, fine := c.temp(rt)
		return float64(c.pressure(rp, fine)) / 256, float64(t) / 100, nil
	}
	// The first reading synchronously: the chip already holds a converted
	// sample (it has been sensing all along).
	pa, tc, err := read()
	if err != nil {
		return nil, fmt.Errorf("baro: attach %#x: read data: %w", addr, err)
	}
	b.last = Reading{PressurePa: pa, TempC: tc, At: b.now(), Seq: 1}
	close(b.first)
	go b.poll(read)
	return b, nil
}

// poll reads the data registers every interval until stopped; a failed
// read stops sensing (Latest then says ErrStopped), as bmxx80 does.
func (b *Baro) poll(read func() (float64, float64, error)) {
	defer close(b.done)
	t := time.NewTicker(b.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		pa, tc, err := read()
		b.mu.Lock()
		if err != nil {
			b.stopped = true
			b.mu.Unlock()
			return
		}
		b.last = Reading{PressurePa: pa, TempC: tc, At: b.now(), Seq: b.last.Seq + 1}
		b.mu.Unlock()
	}
}

// calib280 is the BMP280's trimming (datasheet 3.11.2).
type calib280 struct {
	t1                             uint16
	t2, t3                         int16
	p1                             uint16
	p2, p3, p4, p5, p6, p7, p8, p9 int16
}

func parseCalib(b []byte) calib280 {
	u := func(i int) uint16 { return binary.LittleEndian.Uint16(b[i:]) }
	s := func(i int) int16 { return int16(u(i)) }
	return calib280{t1: u(0), t2: s(2), t3: s(4), p1: u(6), p2: s(8), p3: s(10), p4: s(12), p5: s(14), p6: s(16), p7: s(18), p8: s(20), p9: s(22)}
}

// temp is the datasheet's integer compensation (3.11.3): °C × 100, t_fine.
func (c *calib280) temp(raw int32) (int32, int32) {
	x := ((raw>>3 - int32(c.t1)<<1) * int32(c.t2)) >> 11
	y := ((((raw>>4 - int32(c.t1)) * (raw>>4 - int32(c.t1))) >> 12) * int32(c.t3)) >> 14
	fine := x + y
	return (fine*5 + 128) >> 8, fine
}

// pressure is the datasheet's 64-bit integer compensation: Pa in Q24.8 (the
// same arithmetic bmxx80 uses, so an attached reader and the cold one agree).
func (c *calib280) pressure(raw, fine int32) uint32 {
	x := int64(fine) - 128000
	y := x * x * int64(c.p6)
	y += (x * int64(c.p5)) << 17
	y += int64(c.p4) << 35
	x = (x*x*int64(c.p3))>>8 + ((x * int64(c.p2)) << 12)
	x = ((int64(1)<<47 + x) * int64(c.p1)) >> 33
	if x == 0 {
		return 0
	}
	p := ((((1048576 - int64(raw)) << 31) - y) * 3125) / x
	x = (int64(c.p9) * (p >> 13) * (p >> 13)) >> 25
	y = (int64(c.p8) * p) >> 19
	return uint32(((p + x + y) >> 8) + (int64(c.p7) << 4))
}
