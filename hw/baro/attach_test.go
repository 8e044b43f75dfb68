package baro

import (
	"errors"
	"math"
	"testing"
	"time"
)

// A takeover never re-initialises a chip: Attach reads the calibration and
// the configuration of a BMP280 that Open configured, reads the same
// pressure, and writes no register, ever (Close included).
func TestAttachWritesNothing(t *testing.T) {
	chip := newBMP280()
	cold, err := Open(chip, 0, &Opts{Interval: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	chip.mu.Lock()
	before := len(chip.writes[0xF4]) + len(chip.writes[0xF5]) + len(chip.writes[0xE0])
	chip.mu.Unlock()

	warm, err := Attach(chip, 0, &Opts{Interval: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	rw, err := warm.Latest()
	if err != nil || rw.Seq < 2 {
		t.Fatalf("attached reading %+v, %v; want several", rw, err)
	}
	rc, err := cold.Latest()
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(rw.PressurePa-rc.PressurePa) > 0.01 || math.Abs(rw.TempC-rc.TempC) > 0.01 {
		t.Errorf("attached reads %.3f Pa %.2f °C, bmxx80 %.3f Pa %.2f °C", rw.PressurePa, rw.TempC, rc.PressurePa, rc.TempC)
	}
	if err := warm.Close(); err != nil {
		t.Fatal(err)
	}
	chip.mu.Lock()
	after := len(chip.writes[0xF4]) + len(chip.writes[0xF5]) + len(chip.writes[0xE0])
	chip.mu.Unlock()
	if after != before {
		t.Errorf("Attach/Close wrote %d configuration registers", after-before)
	}
	cold.Detach()
}

func TestAttachRefusesASleepingChip(t *testing.T) {
	chip := newBMP280() // power-up: sleep mode
	if _, err := Attach(chip, 0, nil); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Attach on a sleeping chip: %v, want ErrNotRunning", err)
	}
	if len(chip.writes) != 0 {
		t.Errorf("Attach wrote %v", chip.writes)
	}
}
