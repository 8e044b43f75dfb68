package hw_test

import (
	"errors"
	"math"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"periph.io/x/conn/v3/physic"

	"github.com/inflight-ota/inflight/hw"
	"github.com/inflight-ota/inflight/hw/mpu6050"
	"github.com/inflight-ota/inflight/hw/pca9685"
	"github.com/inflight-ota/inflight/hw/pwmlock"
	"github.com/inflight-ota/inflight/hw/simbus"
)

// regServer serves register files (auto-incrementing, 256 registers per
// device) over the socket bus, allocating nothing per transaction.
type regServer struct {
	mu   sync.Mutex
	devs map[uint16]*[256]byte
}

func (s *regServer) serve(c *net.UnixConn) {
	defer c.Close()
	in := make([]byte, simbus.MaxPacket)
	out := make([]byte, 0, simbus.MaxPacket)
	rd := make([]byte, simbus.MaxPayload)
	var req simbus.Request
	var resp simbus.Response
	for {
		n, err := c.Read(in)
		if err != nil {
			return
		}
		if simbus.DecodeRequest(in[:n], &req) != nil {
			return
		}
		resp = simbus.Response{Status: simbus.StatusOK, Seq: req.Seq}
		if req.Kind == simbus.KindTx {
			s.mu.Lock()
			regs := s.devs[req.Addr]
			if regs == nil {
				resp.Status = simbus.StatusNACK
			} else if len(req.Write) > 0 {
				p := req.Write[0]
				for _, v := range req.Write[1:] {
					regs[p] = v
					p++
				}
				for i := range rd[:req.ReadLen] {
					rd[i] = regs[p]
					p++
				}
				resp.Read = rd[:req.ReadLen]
			}
			s.mu.Unlock()
		}
		if _, err := c.Write(simbus.AppendResponse(out[:0], &resp)); err != nil {
			return
		}
	}
}

// TestDriversOverTheSocketBus runs the very drivers of the air over the
// bench's socket bus: warm attach, IMU read, motor write, and the tick path
// (IMU read + motor write) allocation-free end to end.
func TestDriversOverTheSocketBus(t *testing.T) {
	var mpu, pca [256]byte
	mpu[mpu6050.RegWhoAmI] = 0x68
	mpu[mpu6050.RegPwrMgmt1] = mpu6050.PwrClkPLLGyroX
	copy(mpu[mpu6050.RegSmplrtDiv:], []byte{0x00, 0x03, 0x10, 0x10})
	copy(mpu[mpu6050.RegAccelXOutH:], []byte{0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // +1 g on z
	pca[pca9685.RegMode1] = pca9685.Mode1AI | pca9685.Mode1AllCall
	pca[pca9685.RegMode2] = pca9685.Mode2OutDrv
	pca[pca9685.RegPreScale] = 14
	srv := &regServer{devs: map[uint16]*[256]byte{0x68: &mpu, 0x40: &pca}}

	path := filepath.Join(t.TempDir(), "bus.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); srv.serve(c) }()
		}
	}()

	bus, err := hw.OpenBus("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	imu, err := mpu6050.Attach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	pwm, err := pca9685.WarmAttach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	pwm.SetAuthority(always{})

	var s mpu6050.Sample
	if err := imu.Read(&s); err != nil {
		t.Fatal(err)
	}
	if math.Abs(s.Accel[2]-mpu6050.G) > 1e-9 {
		t.Fatalf("accel z %v, want 1 g", s.Accel[2])
	}
	us := []float64{1000, 1500, 2000, 1200}
	if err := pwm.WriteMotors(us); err != nil {
		t.Fatal(err)
	}
	got := make([]float64, 4)
	if err := pwm.ReadMotors(got); err != nil {
		t.Fatal(err)
	}
	for i := range us {
		if math.Abs(got[i]-us[i]) > pwm.USPerCount() {
			t.Fatalf("motor %d: wrote %v µs, chip has %v", i, us[i], got[i])
		}
	}
	allocs := testing.AllocsPerRun(200, func() {
		if err := imu.Read(&s); err != nil {
			t.Fatal(err)
		}
		if err := pwm.WriteMotors(us); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("one tick's bus traffic allocates %v times, want 0", allocs)
	}
}

var _ pca9685.Authority = (*pwmlock.Lock)(nil)

// A controller fenced by a Seize stops writing PWM at its next write.
func TestSeizedLockStopsMotorWrites(t *testing.T) {
	var pca [256]byte
	pca[pca9685.RegMode1] = pca9685.Mode1AI
	pca[pca9685.RegMode2] = pca9685.Mode2OutDrv
	pca[pca9685.RegPreScale] = 14
	bus := &regBus{regs: &pca}
	pwm, err := pca9685.WarmAttach(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	v1, v2 := pwmlock.New(dir), pwmlock.New(dir)
	if ok, err := v1.TryAcquire(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	defer v1.Release()
	pwm.SetAuthority(v1)
	us := []float64{1400, 1400, 1400, 1400}
	if err := pwm.WriteMotors(us); err != nil {
		t.Fatal(err)
	}
	if err := v2.Seize(); err != nil {
		t.Fatal(err)
	}
	defer v2.Release()
	writes := bus.writes
	if err := pwm.WriteMotors([]float64{2000, 2000, 2000, 2000}); !errors.Is(err, pca9685.ErrNoAuthority) {
		t.Fatalf("fenced write = %v, want ErrNoAuthority", err)
	}
	if bus.writes != writes {
		t.Fatal("a fenced holder reached the bus")
	}
}

// regBus is an in-process auto-incrementing register file.
type regBus struct {
	regs   *[256]byte
	writes int
}

func (b *regBus) String() string                  { return "regs" }
func (b *regBus) SetSpeed(physic.Frequency) error { return nil }
func (b *regBus) Tx(addr uint16, w, r []byte) error {
	if len(w) > 1 {
		b.writes++
	}
	p := w[0]
	for _, v := range w[1:] {
		b.regs[p] = v
		p++
	}
	for i := range r {
		r[i] = b.regs[p]
		p++
	}
	return nil
}

type always struct{}

func (always) Held() bool { return true }
