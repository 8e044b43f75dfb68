package sim

import (
	"io"
	"testing"
)

// One physics tick of the drone — motors from the PCA9685, rigid body,
// sensors, crash checks, trace sampling — allocates nothing.
func TestStepAllocatesNothing(t *testing.T) {
	d := New(&Options{Trace: io.Discard, Gusts: true})
	if n := testing.AllocsPerRun(2000, func() {
		d.stepLocked()
		select { // keep the trace queue from filling
		case <-d.out:
		default:
		}
	}); n != 0 {
		t.Fatalf("a drone step allocates %.1f times", n)
	}
}

// BenchmarkDroneStep measures one full tick: physics plus the three chips.
func BenchmarkDroneStep(b *testing.B) {
	d := New(&Options{Gusts: true})
	d.mpu.Tx([]byte{0x6B, 0x01}, nil)
	d.bmp.Tx([]byte{0xF4, 0x57}, nil) // normal mode
	b.ReportAllocs()
	for b.Loop() {
		d.stepLocked()
	}
}
