package sim_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/bmxx80"
	"periph.io/x/devices/v3/pca9685"

	"github.com/inflight-ota/inflight/hw"
	"github.com/inflight-ota/inflight/hw/simbus"
	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/chips"
	"github.com/inflight-ota/inflight/sim/physics"
	"github.com/inflight-ota/inflight/sim/trace"
)

// bench is a drone served on a temporary socket.
type bench struct {
	t     *testing.T
	d     *sim.Drone
	path  string
	trace string
	stop  func() *trace.Trace
}

func startBench(t *testing.T, o *sim.Options) *bench {
	t.Helper()
	dir := t.TempDir()
	b := &bench{t: t, path: filepath.Join(dir, "bus.sock"), trace: filepath.Join(dir, "trace.jsonl")}
	f, err := os.Create(b.trace)
	if err != nil {
		t.Fatal(err)
	}
	var opts sim.Options
	if o != nil {
		opts = *o
	}
	opts.Trace = f
	b.d = sim.New(&opts)
	l, err := sim.Listen(b.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancelServe := context.WithCancel(context.Background())
	runCtx, cancelRun := context.WithCancel(context.Background())
	served, ran := make(chan error, 1), make(chan error, 1)
	go func() { served <- sim.ServeListener(ctx, l, b.d, nil) }()
	go func() { ran <- b.d.Run(runCtx) }()
	var tr *trace.Trace
	stopped := false
	b.stop = func() *trace.Trace {
		if stopped {
			return tr
		}
		stopped = true
		cancelServe()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		cancelRun()
		if err := <-ran; err != nil {
			t.Errorf("run: %v", err)
		}
		f.Close()
		tr, err = trace.ReadFile(b.trace)
		if err != nil {
			t.Fatalf("reading the trace: %v", err)
		}
		return tr
	}
	t.Cleanup(func() { b.stop() })
	return b
}

func (b *bench) dial(name string) *simbus.Bus {
	b.t.Helper()
	bus, err := simbus.Dial(b.path, name)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { bus.Close() })
	return bus
}

func events(tr *trace.Trace, name string) []trace.Event {
	var out []trace.Event
	for _, e := range tr.Events {
		if e.Event == name {
			out = append(out, e)
		}
	}
	return out
}

// The acceptance: periph's own drivers against the bench.
func TestPeriphDriversAgainstBench(t *testing.T) {
	b := startBench(t, nil)
	if fi, err := os.Stat(b.path); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode %v (%v), want 0666", fi.Mode(), err)
	}
	// Only hw.OpenBus and periph's own drivers, as a program on a Pi would.
	bus, err := hw.OpenBus("unix://" + b.path)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	alpha := filepath.Base(os.Args[0]) + "-" + strconv.Itoa(os.Getpid()) // hw.OpenBus's client name
	if len(alpha) > simbus.MaxName {
		alpha = alpha[len(alpha)-simbus.MaxName:]
	}

	// BMP280 through bmxx80.
	baro, err := bmxx80.NewI2C(bus, chips.AddrBMP280, &bmxx80.DefaultOpts)
	if err != nil {
		t.Fatal(err)
	}
	var env physic.Env
	if err := baro.Sense(&env); err != nil {
		t.Fatal(err)
	}
	if p := float64(env.Pressure) / float64(physic.Pascal); math.Abs(p-101325) > 20 {
		t.Errorf("pressure on the ground %.1f Pa, want 101325 ± 20", p)
	}
	if c := env.Temperature.Celsius(); math.Abs(c-15) > 0.1 {
		t.Errorf("temperature %.2f °C, want 15", c)
	}

	// MPU-6050 with raw register reads.
	var who [1]byte
	if err := bus.Tx(chips.AddrMPU6050, []byte{0x75}, who[:]); err != nil || who[0] != 0x68 {
		t.Fatalf("WHO_AM_I %#x, %v", who[0], err)
	}
	var raw [14]byte
	if err := bus.Tx(chips.AddrMPU6050, []byte{0x3B}, raw[:]); err != nil || raw != [14]byte{} {
		t.Fatalf("asleep MPU reads %x, %v; want zeros", raw, err)
	}
	if err := bus.Tx(chips.AddrMPU6050, []byte{0x6B, 0x01}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if err := bus.Tx(chips.AddrMPU6050, []byte{0x3B}, raw[:]); err != nil {
		t.Fatal(err)
	}
	az := float64(int16(binary.BigEndian.Uint16(raw[4:]))) / 16384
	ax := float64(int16(binary.BigEndian.Uint16(raw[0:]))) / 16384
	if math.Abs(az-1) > 0.05 || math.Abs(ax) > 0.05 {
		t.Errorf("resting accel x %.3f z %.3f g, want 0 and +1", ax, az)
	}

	// Absent address: NACK, as on a real bus.
	if err := bus.Tx(0x50, []byte{0}, who[:]); !errors.Is(err, simbus.ErrNACK) {
		t.Errorf("absent device: %v, want ErrNACK", err)
	}

	// Cold PCA9685 init, then pulses; they show in the trace.
	pwm, err := pca9685.NewI2C(bus, chips.AddrPCA9685)
	if err != nil {
		t.Fatal(err)
	}
	counts := [4]int{244, 250, 260, 270} // at periph's 50 Hz prescale (122): 4.92 µs a count
	for ch, c := range counts {
		if err := pwm.SetPwm(ch, 0, gpio.Duty(c)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	tr := b.stop()
	var want [4]float64
	for i, c := range counts {
		want[i] = math.Round(float64(c)*123/25*1e3) / 1e3
	}
	found := false
	for _, s := range tr.Samples {
		if s.PWM == want && s.Writer == alpha {
			found = true
			break
		}
	}
	if !found {
		t.Fatalf("no sample with pwm_us %v written by %s; last %+v", want, alpha, tr.Samples[len(tr.Samples)-1])
	}
	if tr.Summary == nil || tr.Summary.ReinitEvents != 0 || tr.Summary.TwoWriterEvents != 0 || tr.Summary.Clients != 1 {
		t.Fatalf("summary %+v: a cold init on the ground is no reinit", tr.Summary)
	}
	if n := len(events(tr, trace.EventClientConnect)); n != 1 {
		t.Fatalf("%d client_connect events", n)
	}
	if got := tr.Header.SampleHz; got < 100 {
		t.Fatalf("sample rate %g Hz", got)
	}
}

// coldInit sets prescale 14 (~400 Hz) and auto-increment cold, then writes the
// four motor pulses in one burst, the way a flight controller does.
func coldInit(t *testing.T, bus *simbus.Bus) {
	t.Helper()
	for _, w := range [][]byte{{0x00, 0x31}, {0xFE, 14}, {0x00, 0x21}, {0x00, 0xA1}} {
		if err := bus.Tx(chips.AddrPCA9685, w, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func writePulses(t *testing.T, bus *simbus.Bus, us float64) {
	t.Helper()
	c := int(math.Round(us / 0.6))
	w := []byte{0x06}
	for range 4 {
		w = append(w, 0, 0, byte(c), byte(c>>8))
	}
	if err := bus.Tx(chips.AddrPCA9685, w, nil); err != nil {
		t.Fatal(err)
	}
}

func waitSpin(t *testing.T, d *sim.Drone) {
	t.Helper()
	for range 200 {
		s, _ := d.State()
		if s.Motor[0] > 200 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("motors never spun up")
}

func TestReinitWhileSpinning(t *testing.T) {
	b := startBench(t, nil)
	a := b.dial("alpha")
	coldInit(t, a)
	writePulses(t, a, 1300) // u = 0.3: spinning, still on the ground
	waitSpin(t, b.d)
	if s := b.d.Summary(); s.ReinitEvents != 0 {
		t.Fatalf("cold init on the ground counted %d reinits", s.ReinitEvents)
	}

	bb := b.dial("bravo")
	if err := bb.Tx(chips.AddrMPU6050, []byte{0x6B, 0x80}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pca9685.NewI2C(bb, chips.AddrPCA9685); err != nil {
		t.Fatal(err)
	}
	tr := b.stop()
	re := events(tr, trace.EventReinit)
	if len(re) == 0 || tr.Summary.ReinitEvents != len(re) {
		t.Fatalf("%d reinit events, summary %d", len(re), tr.Summary.ReinitEvents)
	}
	var whats []string
	for _, e := range re {
		if e.Client != "bravo" {
			t.Errorf("reinit by %q, want bravo", e.Client)
		}
		whats = append(whats, e.What)
	}
	for _, w := range []string{"pca9685 ALL_LED", "pca9685 MODE1", "mpu6050 DEVICE_RESET"} {
		if !slices.Contains(whats, w) {
			t.Errorf("no reinit for %s in %v", w, whats)
		}
	}
}

func TestTwoWritersInterleaved(t *testing.T) {
	// A wide window keeps the test immune to a loaded machine's scheduling.
	b := startBench(t, &sim.Options{Window: 500 * time.Millisecond})
	a, bb := b.dial("alpha"), b.dial("bravo")
	coldInit(t, a)
	for range 20 {
		writePulses(t, a, 1200)
		time.Sleep(2 * time.Millisecond)
		writePulses(t, bb, 1210)
		time.Sleep(2 * time.Millisecond)
	}
	tr := b.stop()
	if n := len(events(tr, trace.EventTwoWriters)); n != 1 || tr.Summary.TwoWriterEvents != 1 {
		t.Fatalf("%d two_writers events (summary %d), want one episode", n, tr.Summary.TwoWriterEvents)
	}
	if tr.Summary.ReinitEvents != 0 {
		t.Fatalf("LEDn writes counted as reinit: %+v", tr.Summary)
	}
}

// A clean handover — alpha writes, stops, bravo attaches warm and writes
// only LEDn — is neither two_writers nor reinit. A rollback to alpha is not
// either, until bravo writes again inside the window.
func TestHandoverAndRollback(t *testing.T) {
	const window = 300 * time.Millisecond // wide, for a loaded machine
	b := startBench(t, &sim.Options{Window: window})
	a, bb := b.dial("alpha"), b.dial("bravo")
	coldInit(t, a)
	tick := func(bus *simbus.Bus, n int) {
		for range n {
			writePulses(t, bus, 1300)
			time.Sleep(2500 * time.Microsecond)
		}
	}
	tick(a, 40)
	waitSpin(t, b.d)
	// Warm attach: read MODE1, MODE2, PRE_SCALE, then LEDn bursts only.
	var m [2]byte
	var pre [1]byte
	if err := bb.Tx(chips.AddrPCA9685, []byte{0x00}, m[:]); err != nil {
		t.Fatal(err)
	}
	if err := bb.Tx(chips.AddrPCA9685, []byte{0xFE}, pre[:]); err != nil || pre[0] != 14 || m[0]&0x20 == 0 {
		t.Fatalf("warm attach reads MODE1 %#x PRE_SCALE %d (%v)", m[0], pre[0], err)
	}
	tick(bb, 40)
	s := b.d.Summary()
	if s.TwoWriterEvents != 0 || s.ReinitEvents != 0 || len(s.Handovers) != 1 {
		t.Fatalf("after a clean handover: %+v", s)
	}
	h := s.Handovers[0]
	if h.From != "alpha" || h.To != "bravo" || h.GapMS <= 0 {
		t.Fatalf("handover %+v", h)
	}
	if s.MaxPWMGapMS < h.GapMS {
		t.Fatalf("max gap %.2f ms < handover gap %.2f ms", s.MaxPWMGapMS, h.GapMS)
	}
	// bravo flies on alone until alpha's writes leave the window.
	for start := time.Now(); time.Since(start) < window+50*time.Millisecond; {
		tick(bb, 1)
	}
	// bravo hands back to alpha, which hands back to bravo, all within
	// 100 ms: X…X Y…Y X…X (X = bravo) is a switch and a rollback, no
	// two_writers.
	tick(a, 4)
	tick(bb, 4)
	if s := b.d.Summary(); s.TwoWriterEvents != 0 {
		t.Fatalf("a rollback counted as two_writers: %+v", s)
	}
	// Y (alpha) writes again inside the window: now it is interleaved.
	tick(a, 1)
	tr := b.stop()
	if tr.Summary.TwoWriterEvents != 1 {
		t.Fatalf("X Y X Y within the window: %d two_writers events", tr.Summary.TwoWriterEvents)
	}
	if n := len(events(tr, trace.EventWriterSwitch)); n != 4 {
		t.Fatalf("%d writer_switch events, want 4", n)
	}
}

func TestMalformedDropsOnlyThatClient(t *testing.T) {
	b := startBench(t, nil)
	good := b.dial("good")
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: b.path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := []byte{9, 2, 0x68, 0, 1, 0, 0, 0, 7, 0, 0, 0} // version 9
	if _, err := c.Write(bad); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var buf [64]byte
	n, err := c.Read(buf[:])
	var resp simbus.Response
	if err != nil || simbus.DecodeResponse(buf[:n], &resp) != nil || resp.Status != simbus.StatusMalformed || resp.Seq != 7 {
		t.Fatalf("malformed request answered %x (%v), want StatusMalformed seq 7", buf[:n], err)
	}
	if n, err := c.Read(buf[:]); n != 0 || err == nil {
		t.Fatalf("malformed client not dropped: %d bytes, %v", n, err)
	}
	t0 := b.d.Summary().SimS
	time.Sleep(20 * time.Millisecond)
	var who [1]byte
	if err := good.Tx(chips.AddrMPU6050, []byte{0x75}, who[:]); err != nil || who[0] != 0x68 {
		t.Fatalf("the other client stopped working: %v", err)
	}
	if t1 := b.d.Summary().SimS; t1-t0 < 0.015 {
		t.Fatalf("physics stalled: %.3f → %.3f s", t0, t1)
	}
	tr := b.stop()
	drops := events(tr, trace.EventClientDrop)
	if len(drops) == 0 || drops[0].Reason == "" || drops[0].Reason[:9] != "malformed" {
		t.Fatalf("drops %+v", drops)
	}
}

func TestCrashDetection(t *testing.T) {
	b := startBench(t, nil)
	b.d.Quad(func(q *physics.Quad) { // drop from 2 m: ~6 m/s at impact
		q.S.Pos[2] = 2
		q.S.OnGround = false
	})
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, crashed := b.d.State(); crashed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no crash after a 2 m drop")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tr := b.stop()
	cr := events(tr, trace.EventCrash)
	if len(cr) != 1 || cr[0].Reason != "impact" || math.Abs(cr[0].Speed-6.2) > 0.3 || !tr.Summary.Crashed {
		t.Fatalf("crash events %+v summary %+v", cr, tr.Summary)
	}

	b = startBench(t, nil)
	b.d.Quad(func(q *physics.Quad) { // 70° of roll in the air
		q.S.Pos[2] = 5
		q.S.OnGround = false
		q.S.Q = [4]float64{math.Cos(35 * math.Pi / 180), math.Sin(35 * math.Pi / 180), 0, 0}
	})
	time.Sleep(20 * time.Millisecond)
	tr = b.stop()
	if cr := events(tr, trace.EventCrash); len(cr) != 1 || cr[0].Reason != "tilt" || math.Abs(cr[0].Tilt-70) > 1 {
		t.Fatalf("tilt crash events %+v", cr)
	}
}

func TestHoverFliesInRealTime(t *testing.T) {
	// An open-loop hover at the hover throttle, written at 400 Hz by one
	// client, lifts off and the trace samples at ≥100 Hz.
	b := startBench(t, &sim.Options{Noise: &chips.Noise{}})
	a := b.dial("alpha")
	coldInit(t, a)
	hover := 1000 + 1000*physics.New(physics.DefaultParams()).HoverThrottle()
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		writePulses(t, a, hover+60)
		time.Sleep(2500 * time.Microsecond)
	}
	tr := b.stop()
	span := tr.Samples[len(tr.Samples)-1].T - tr.Samples[0].T
	if rate := float64(len(tr.Samples)-1) / span; rate < 100 {
		t.Fatalf("trace sample rate %.1f Hz", rate)
	}
	last := tr.Samples[len(tr.Samples)-1]
	if last.Z <= 0.05 || last.Writer != "alpha" {
		t.Fatalf("did not lift off: %+v", last)
	}
	if tr.Summary.MaxPWMGapMS <= 0 || tr.Summary.PWMWrites < 50 {
		t.Fatalf("summary %+v", tr.Summary)
	}
	if tr.Summary.Overruns > 0 {
		t.Logf("physics overruns: %d", tr.Summary.Overruns)
	}
}
