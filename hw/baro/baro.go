package baro

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/bmxx80"
)

// DefaultAddr is the BMP280's address with SDO low.
const DefaultAddr = 0x76

// SeaLevelPa is the standard atmosphere's pressure at sea level.
const SeaLevelPa = 101325.0

// Errors callers branch on.
var (
	// ErrNoSample: no reading has arrived yet.
	ErrNoSample = errors.New("baro: no reading yet")
	// ErrStale: the latest reading is older than Opts.StaleAfter.
	ErrStale = errors.New("baro: reading is stale")
	// ErrStopped: bmxx80 stopped sensing (bus error), or the Baro was closed
	// or detached.
	ErrStopped = errors.New("baro: sensing stopped")
)

// Opts are the flight options. Zero fields take DefaultOpts' values.
type Opts struct {
	// Pressure oversampling: more is less noise and a longer conversion.
	// Default ×16 (0.2 Pa RMS noise).
	Pressure bmxx80.Oversampling
	// Temperature oversampling; temperature only compensates pressure here.
	// Default ×2 (the datasheet's pairing with pressure ×16).
	Temperature bmxx80.Oversampling
	// Filter is the chip's IIR filter (normal mode only). More is steadier
	// and slower: ×4 reaches 75% of a step in about 5 samples (~0.2 s).
	// Default F4. Use bmxx80.NoFilter explicitly via NoFilter below.
	Filter bmxx80.Filter
	// NoFilter turns the IIR filter off (Filter's zero value means default).
	NoFilter bool
	// Interval is how often bmxx80 reads the chip. It must be at least the
	// conversion time (37.5 ms at ×16/×2); below conversion time + 10 ms the
	// chip uses its shortest standby (0.5 ms). Default 40 ms.
	Interval time.Duration
	// StaleAfter: Read returns ErrStale when the latest reading is older.
	// Default 5 × Interval.
	StaleAfter time.Duration
}

// DefaultOpts suit altitude hold: pressure ×16, temperature ×2, IIR ×4, 40 ms.
var DefaultOpts = Opts{Pressure: bmxx80.O16x, Temperature: bmxx80.O2x, Filter: bmxx80.F4, Interval: 40 * time.Millisecond}

// MeasurementTime is the BMP280's typical conversion time for the given
// oversamplings (datasheet 3.8.1; the same formula bmxx80 sleeps on).
func MeasurementTime(temperature, pressure bmxx80.Oversampling) time.Duration {
	us := 1000
	if temperature != bmxx80.Off {
		us += 2000 * factor(temperature)
	}
	if pressure != bmxx80.Off {
		us += 2000*factor(pressure) + 500
	}
	return time.Duration(us) * time.Microsecond
}

func factor(o bmxx80.Oversampling) int {
	if o == bmxx80.Off {
		return 0
	}
	return 1 << (o - 1)
}

func (o *Opts) resolve() (Opts, error) {
	r := DefaultOpts
	if o != nil {
		if o.Pressure != 0 {
			r.Pressure = o.Pressure
		}
		if o.Temperature != 0 {
			r.Temperature = o.Temperature
		}
		if o.Filter != 0 {
			r.Filter = o.Filter
		}
		if o.NoFilter {
			r.Filter, r.NoFilter = bmxx80.NoFilter, true
		}
		if o.Interval != 0 {
			r.Interval = o.Interval
		}
		r.StaleAfter = o.StaleAfter
	}
	if r.StaleAfter == 0 {
		r.StaleAfter = 5 * r.Interval
	}
	if r.Pressure > bmxx80.O16x || r.Temperature > bmxx80.O16x || r.Filter > bmxx80.F16 {
		return r, fmt.Errorf("baro: oversampling %v/%v or filter %d out of range", r.Pressure, r.Temperature, r.Filter)
	}
	if m := MeasurementTime(r.Temperature, r.Pressure); r.Interval < m {
		return r, fmt.Errorf("baro: interval %v is shorter than the %v conversion", r.Interval, m)
	}
	return r, nil
}

// Reading is one barometer measurement.
type Reading struct {
	PressurePa float64
	TempC      float64
	At         time.Time // when bmxx80 read it off the chip
	Seq        uint64    // 1 for the first reading, +1 for each new one
}

// Baro is a BMP280 sensing continuously in normal mode. Its methods are safe
// for concurrent use.
type Baro struct {
	dev  *bmxx80.Dev
	o    Opts
	now  func() time.Time
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	last    Reading
	stopped bool
	first   chan struct{} // closed at the first kept reading

	attached bool // Attach: reads only; Close never writes
}

// Open initialises the BMP280 at addr (0 means DefaultAddr) through bmxx80
// and starts normal-mode sensing. It returns once the first reading has
// arrived, or an error after a few intervals without one. Open writes the
// chip's ctrl_meas and config registers (see the package doc).
func Open(bus i2c.Bus, addr uint16, o *Opts) (*Baro, error) {
	opts, err := o.resolve()
	if err != nil {
		return nil, err
	}
	if addr == 0 {
		addr = DefaultAddr
	}
	dev, err := bmxx80.NewI2C(bus, addr, &bmxx80.Opts{Temperature: opts.Temperature, Pressure: opts.Pressure, Filter: opts.Filter})
	if err != nil {
		return nil, fmt.Errorf("baro: open %#x: %w", addr, err)
	}
	if strings.HasPrefix(dev.String(), "BMP180") {
		return nil, fmt.Errorf("baro: %s at %#x has no normal mode; want a BMP280", dev, addr)
	}
	ch, err := dev.SenseContinuous(opts.Interval)
	if err != nil {
		return nil, fmt.Errorf("baro: start sensing: %w", err)
	}
	b := &Baro{dev: dev, o: opts, now: time.Now, stop: make(chan struct{}), done: make(chan struct{}), first: make(chan struct{})}
	go b.drain(ch)
	wait := time.NewTimer(4*opts.Interval + 100*time.Millisecond)
	defer wait.Stop()
	select {
	case <-b.first:
		return b, nil
	case <-b.done:
		dev.Halt()
		return nil, fmt.Errorf("baro: sensing stopped before the first reading: %w", ErrStopped)
	case <-wait.C:
		b.Close()
		return nil, fmt.Errorf("baro: no reading within %v: %w", 4*opts.Interval+100*time.Millisecond, ErrNoSample)
	}
}

// drain keeps the latest reading. bmxx80 sends its first reading right after
// switching to normal mode, before any conversion finished (the data
// registers still hold their reset or previous values), so it is dropped.
func (b *Baro) drain(ch <-chan physic.Env) {
	defer close(b.done)
	defer func() {
		b.mu.Lock()
		b.stopped = true
		b.mu.Unlock()
	}()
	skipped := false
	for {
		select {
		case <-b.stop:
			return
		case e, ok := <-ch:
			if !ok {
				return
			}
			if !skipped {
				skipped = true
				continue
			}
			b.mu.Lock()
			b.last = Reading{PressurePa: float64(e.Pressure) / float64(physic.Pascal), TempC: e.Temperature.Celsius(), At: b.now(), Seq: b.last.Seq + 1}
			if b.last.Seq == 1 {
				close(b.first)
			}
			b.mu.Unlock()
		}
	}
}

// Read returns the latest pressure (Pa) and temperature (°C). It never
// touches the bus and allocates nothing. With ErrStale the values are still
// the latest ones.
func (b *Baro) Read() (pressurePa, tempC float64, err error) {
	r, err := b.Latest()
	return r.PressurePa, r.TempC, err
}

// Latest returns the latest reading with its time stamp and sequence number
// (a new Seq means a new measurement to fuse).
func (b *Baro) Latest() (Reading, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.last
	switch {
	case b.stopped:
		return r, ErrStopped
	case r.Seq == 0:
		return r, ErrNoSample
	case b.now().Sub(r.At) > b.o.StaleAfter:
		return r, ErrStale
	}
	return r, nil
}

// Opts are the options in effect.
func (b *Baro) Opts() Opts { return b.o }

// Detach stops using the chip without writing to it, for a controller that
// hands the drone over: another controller may be reading the same chip.
// After Open, bmxx80's goroutine stays blocked, with no bus traffic, until
// the process exits; after Attach the polling goroutine ends.
func (b *Baro) Detach() {
	b.stopOnce()
	<-b.done
}

// Close stops sensing and puts the chip to sleep (bmxx80 Halt writes
// ctrl_meas). Only for a controller that is sure nobody else uses the chip:
// on the ground, or at the end of a bench run.
//
// bmxx80's Halt holds its mutex while it waits for its sensing goroutine,
// which takes the same mutex at the top of each cycle: if Halt lands in that
// window it never returns. Close therefore gives Halt HaltTimeout and then
// returns an error instead of hanging (leaving that goroutine behind).
func (b *Baro) Close() error {
	if b.attached {
		b.Detach()
		return nil
	}
	halted := make(chan error, 1)
	go func() { halted <- b.dev.Halt() }()
	t := time.NewTimer(HaltTimeout)
	defer t.Stop()
	var err error
	select {
	case err = <-halted:
	case <-t.C:
		err = fmt.Errorf("bmxx80 Halt did not return within %v", HaltTimeout)
	}
	b.stopOnce()
	<-b.done
	if err != nil {
		return fmt.Errorf("baro: halt: %w", err)
	}
	return nil
}

// HaltTimeout bounds Close's wait for bmxx80's Halt.
const HaltTimeout = time.Second

func (b *Baro) stopOnce() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
}

// AltitudeFromPressure is the international barometric formula: the height in
// metres at pressure p above the level where the pressure is p0 (both Pa),
// h = 44330 · (1 − (p/p0)^(1/5.255)). With p0 the pressure at take-off it is
// the altitude above the take-off point (the ENU world z of
// docs/conventions.md), to within the weather's drift.
func AltitudeFromPressure(p, p0 float64) float64 {
	return 44330 * (1 - math.Pow(p/p0, 1/5.255))
}
