package baro

import (
	"encoding/binary"
	"errors"
	"io"
	"log"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/bmxx80"
)

// bmp280 emulates the registers bmxx80 touches, with the calibration and the
// raw readings of the datasheet's compensation example (section 3.11.3:
// adc_T 519888 → 25.08 °C, adc_P 415148 → 100653 Pa).
type bmp280 struct {
	mu     sync.Mutex
	r      [256]byte
	writes map[byte][]byte
	fail   bool
}

func newBMP280() *bmp280 {
	c := &bmp280{writes: map[byte][]byte{}}
	c.r[0xD0] = 0x58
	cal := []int{27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000}
	for i, v := range cal {
		binary.LittleEndian.PutUint16(c.r[0x88+2*i:], uint16(int16(v)))
	}
	// Data registers at their reset value until a conversion ran.
	copy(c.r[0xF7:], []byte{0x80, 0, 0, 0x80, 0, 0})
	return c
}

func (c *bmp280) String() string                  { return "bmp280" }
func (c *bmp280) SetSpeed(physic.Frequency) error { return nil }
func (c *bmp280) Tx(addr uint16, w, r []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail {
		return errors.New("bus error")
	}
	if addr != 0x76 {
		return errors.New("nack")
	}
	if len(r) > 0 {
		copy(r, c.r[w[0]:])
		return nil
	}
	for i := 0; i+1 < len(w); i += 2 {
		c.r[w[i]] = w[i+1]
		c.writes[w[i]] = append(c.writes[w[i]], w[i+1])
		if w[i] == 0xF4 && w[i+1]&3 == 3 {
			// Normal mode: conversions start.
			copy(c.r[0xF7:], []byte{0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00})
		}
	}
	return nil
}

var _ i2c.Bus = (*bmp280)(nil)

func TestMain(m *testing.M) {
	log.SetOutput(io.Discard) // bmxx80 logs bus errors through the global logger
	os.Exit(m.Run())
}

func TestOpenReadClose(t *testing.T) {
	chip := newBMP280()
	b, err := Open(chip, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, tc, err := b.Read()
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(p-100653.27) > 0.5 || math.Abs(tc-25.08) > 0.01 {
		t.Fatalf("read %v Pa %v °C, want 100653.27 Pa 25.08 °C", p, tc)
	}
	chip.mu.Lock()
	config, ctrl := chip.writes[0xF5], chip.writes[0xF4]
	chip.mu.Unlock()
	// Normal mode with T ×2 (010), P ×16 (101): 0b010_101_11; config: 0.5 ms
	// standby (000) and IIR ×4 (010): 0b000_010_00.
	if ctrl[len(ctrl)-1] != 0x57 || config[len(config)-1] != 0x08 {
		t.Fatalf("ctrl_meas %#x config %#x, want 0x57 0x08", ctrl, config)
	}
	if allocs := testing.AllocsPerRun(100, func() { b.Read() }); allocs > 0 {
		// bmxx80's goroutine allocates too, so only a 0 here is meaningful;
		// a rare background allocation is tolerated by checking the mean.
		if allocs >= 1 {
			t.Fatalf("Read allocates %v per call", allocs)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Read(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Read after Close = %v", err)
	}
	chip.mu.Lock()
	ctrl = chip.writes[0xF4]
	chip.mu.Unlock()
	if ctrl[len(ctrl)-1]&3 != 0 {
		t.Fatalf("Close left ctrl_meas %#x, want sleep mode", ctrl[len(ctrl)-1])
	}
}

func TestReadingsKeepComingAndGoStale(t *testing.T) {
	chip := newBMP280()
	b, err := Open(chip, 0x76, &Opts{Interval: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r1, err := b.Latest()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r2, err := b.Latest()
		if err != nil {
			t.Fatal(err)
		}
		if r2.Seq > r1.Seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new reading")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.mu.Lock()
	b.now = func() time.Time { return time.Now().Add(time.Hour) }
	b.mu.Unlock()
	if p, _, err := b.Read(); !errors.Is(err, ErrStale) || p == 0 {
		t.Fatalf("Read an hour later = %v, %v; want the value and ErrStale", p, err)
	}
}

func TestBusErrorStopsSensing(t *testing.T) {
	chip := newBMP280()
	b, err := Open(chip, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	chip.mu.Lock()
	chip.fail = true
	chip.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, err := b.Read(); errors.Is(err, ErrStopped) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sensing did not stop after a bus error")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.Detach()
}

func TestDetachWritesNothing(t *testing.T) {
	chip := newBMP280()
	b, err := Open(chip, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	chip.mu.Lock()
	n := len(chip.writes[0xF4]) + len(chip.writes[0xF5])
	chip.mu.Unlock()
	b.Detach()
	time.Sleep(2 * b.Opts().Interval)
	chip.mu.Lock()
	m := len(chip.writes[0xF4]) + len(chip.writes[0xF5])
	chip.mu.Unlock()
	if m != n {
		t.Fatalf("Detach wrote %d registers", m-n)
	}
	if _, _, err := b.Read(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Read after Detach = %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(newBMP280(), 0x40, nil); err == nil {
		t.Fatal("Open at 0x40 succeeded")
	}
	if _, err := Open(newBMP280(), 0x77, nil); err == nil {
		t.Fatal("Open of an absent chip succeeded")
	}
	if _, err := Open(newBMP280(), 0, &Opts{Interval: 10 * time.Millisecond}); err == nil {
		t.Fatal("an interval shorter than the conversion was accepted")
	}
}

func TestMeasurementTime(t *testing.T) {
	if d := MeasurementTime(bmxx80.O2x, bmxx80.O16x); d != 37500*time.Microsecond {
		t.Fatalf("×2/×16: %v, want 37.5ms", d)
	}
	if d := MeasurementTime(bmxx80.O1x, bmxx80.Off); d != 3*time.Millisecond {
		t.Fatalf("×1/off: %v", d)
	}
}

func TestAltitudeFromPressure(t *testing.T) {
	if h := AltitudeFromPressure(SeaLevelPa, SeaLevelPa); h != 0 {
		t.Fatalf("at p0: %v m", h)
	}
	// Standard atmosphere: 89874.6 Pa at 1000 m, 79495.2 Pa at 2000 m.
	for _, c := range []struct{ p, h float64 }{{89874.6, 1000}, {79495.2, 2000}} {
		if h := AltitudeFromPressure(c.p, SeaLevelPa); math.Abs(h-c.h) > 2 {
			t.Fatalf("%v Pa: %v m, want %v", c.p, h, c.h)
		}
	}
	// Near the ground about 12 Pa per metre; lower pressure is higher.
	if h := AltitudeFromPressure(100000-12, 100000); h < 0.9 || h > 1.1 {
		t.Fatalf("12 Pa below p0: %v m", h)
	}
}
