package flightctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"periph.io/x/conn/v3/i2c"

	"github.com/inflight-ota/inflight/hw"
	"github.com/inflight-ota/inflight/hw/baro"
	"github.com/inflight-ota/inflight/hw/mpu6050"
	"github.com/inflight-ota/inflight/hw/pca9685"
	"github.com/inflight-ota/inflight/hw/pwmlock"
	"github.com/inflight-ota/inflight/hw/simbus"
	"github.com/inflight-ota/inflight/internal/buildinfo"
)

// Role is how a controller process starts and what it drives.
type Role uint8

// Roles.
const (
	// RoleCold: on the ground. Cold-initialise the chips, take the PWM
	// authority, fly.
	RoleCold Role = iota
	// RoleActive: the controller drives the motors (after a cold start or a
	// takeover). Run with RoleActive attaches to the chips warm (writing no
	// configuration) and waits for the authority.
	RoleActive
	// RoleStandby: inputs come from the active controller's handoff stream,
	// outputs are not written. The handoff installs it (Options.Setup).
	RoleStandby
)

func (r Role) String() string {
	switch r {
	case RoleCold:
		return "cold"
	case RoleActive:
		return "active"
	case RoleStandby:
		return "standby"
	}
	return "invalid"
}

// ParseRole parses "cold", "active" or "standby".
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleCold, RoleActive, RoleStandby} {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("flightctl: role %q: want cold, active or standby", s)
}

// Options configure Run. The zero value of every field takes its default.
type Options struct {
	Bus     string        // as hw.OpenBus takes it; default "1"
	RunDir  string        // PWM lock, control socket, later the handoff socket; default /run/inflight
	RateHz  float64       // control rate, ≥ 250; default 400
	Mission string        // a mission spec or @file, started at once; "" = wait for commands
	RT      bool          // ask for SCHED_FIFO and locked memory
	RTPrio  int           // SCHED_FIFO priority; default 50
	Name    string        // the bus client name (the bench trace shows it); default flightctl-<pid>
	Role    Role          // default RoleCold
	Params  *Params       // default DefaultParams()
	Logger  *slog.Logger  // default slog.Default()
	Spin    time.Duration // busy-wait before each deadline; default none (negative = none)
	GoSleep bool          // sleep with time.Sleep instead of clock_nanosleep
	// LandTimeout bounds the landing Run performs when its context ends while
	// airborne with the authority; default 60 s.
	LandTimeout time.Duration
	// Version is the program version label shown in status and the handoff's
	// HELLO; default the build's version (internal/buildinfo).
	Version string
	// StateSchema is the state schema the controller runs natively: 1
	// (Euler attitude, the default) or 2 (quaternion attitude and the camera
	// stream). Any other value is only declared in the HELLO (a test of the
	// handoff's refusal); the controller then runs schema 1.
	StateSchema int
	// CameraFPS is the simulated camera's frame rate in schema 2; default 30,
	// negative for none.
	CameraFPS float64
	// GainScale, if not 0 or 1, multiplies every control gain (a debug aid:
	// a v2 with wrong gains diverges in the handoff's shadow).
	GainScale float64
	// Handoff configures the controller's side of a handoff.
	Handoff HandoffOptions
	// Setup, if set, runs before the first tick with the loop and the control
	// server: the handoff installs its roles, observer and commands there.
	Setup func(ctx context.Context, l *Loop, s *ControlServer) error

	socketName string
}

// ControlSocketNameOf is the control socket of a controller started with a
// name: control.<name>.sock (two controllers share the run directory during a
// handoff).
func ControlSocketNameOf(name string) string { return "control." + name + ".sock" }

// HandoffSocketNameOf is the handoff socket a standby called name listens
// on: handoff.<name>.sock.
func HandoffSocketNameOf(name string) string { return "handoff." + name + ".sock" }

// Errors Run returns.
var (
	ErrOptions     = errors.New("flightctl: bad options")
	ErrNoPWM       = errors.New("flightctl: PWM chip absent")
	ErrAuthorityTO = errors.New("flightctl: PWM authority not obtained")
)

func (o *Options) defaults() error {
	if o.Bus == "" {
		o.Bus = "1"
	}
	if o.RunDir == "" {
		o.RunDir = "/run/inflight"
	}
	if o.RateHz == 0 {
		o.RateHz = 400
	}
	if o.RateHz < 250 || o.RateHz > 2000 {
		return fmt.Errorf("%w: rate %v Hz, want 250..2000", ErrOptions, o.RateHz)
	}
	if o.RTPrio == 0 {
		o.RTPrio = 50
	}
	o.socketName = ControlSocketName
	if o.Name == "" {
		o.Name = fmt.Sprintf("flightctl-%d", os.Getpid())
	} else {
		o.socketName = ControlSocketNameOf(o.Name)
	}
	if o.Version == "" {
		o.Version = buildinfo.Version
	}
	if o.StateSchema == 0 {
		o.StateSchema = SchemaVersion
	}
	if o.CameraFPS == 0 {
		o.CameraFPS = 30
	}
	if o.Params == nil {
		p := DefaultParams()
		o.Params = &p
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Spin < 0 {
		o.Spin = 0
	}
	if o.LandTimeout == 0 {
		o.LandTimeout = 60 * time.Second
	}
	return nil
}

// openBus opens spec, naming a bench socket-bus client name.
func openBus(spec, name string) (i2c.BusCloser, error) {
	if path, ok := strings.CutPrefix(spec, "unix://"); ok && path != "" {
		b, err := simbus.Dial(path, name)
		if err != nil {
			return nil, fmt.Errorf("flightctl: open bus %q: %w", spec, err)
		}
		return b, nil
	}
	return hw.OpenBus(spec)
}

// mpuIMU adapts the MPU-6050 driver.
type mpuIMU struct {
	d *mpu6050.Dev
	s mpu6050.Sample
}

func (m *mpuIMU) ReadIMU(a, g *[3]float64) error {
	if err := m.d.Read(&m.s); err != nil {
		return err
	}
	*a, *g = m.s.Accel, m.s.Gyro
	return nil
}

// bmpBaro adapts the BMP280 driver, which senses in its own goroutine.
type bmpBaro struct{ b *baro.Baro }

func (m bmpBaro) Get() (pa, c float64, seq uint64, fail bool) {
	r, err := m.b.Latest()
	return r.PressurePa, r.TempC, r.Seq, err != nil
}

// Run is the flight controller program: it opens the bus, the chips, the PWM
// authority and the control socket, and runs the tick loop until ctx ends.
//
// When ctx ends: without the authority (standby) or on the ground it writes
// the disarmed pulses if it holds the authority, releases it, and returns. In
// the air with the authority it lands first (bounded by LandTimeout): the
// PCA9685 would otherwise keep producing the last pulses with nobody flying.
func Run(ctx context.Context, o Options) error {
	if err := o.defaults(); err != nil {
		return err
	}
	log := o.Logger.With("name", o.Name)
	mission := Mission{}
	if o.Mission != "" {
		m, err := LoadMission(o.Mission)
		if err != nil {
			return err
		}
		mission = m
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return fmt.Errorf("flightctl: run dir: %w", err)
	}
	lock := pwmlock.New(o.RunDir)
	defer lock.Release()
	if o.Role == RoleCold {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := lock.Acquire(actx)
		cancel()
		if err != nil {
			return fmt.Errorf("%w: another controller holds %s: %v", ErrAuthorityTO, lock.Path(), err)
		}
	}

	bus, err := openBus(o.Bus, o.Name)
	if err != nil {
		return err
	}
	defer bus.Close()

	// Chips. An absent IMU or barometer does not stop the program: the
	// controller runs, reports it in status, and refuses to arm.
	cold := o.Role == RoleCold
	var imu IMU
	var mpu *mpu6050.Dev
	if cold {
		mpu, err = mpu6050.New(bus, nil)
	} else {
		mpu, err = mpu6050.Attach(bus, nil)
	}
	if err != nil {
		log.Error("IMU absent or failing: arming refused", "chip", "MPU-6050", "addr", "0x68", "err", err)
	} else {
		imu = &mpuIMU{d: mpu}
	}
	var pwm *pca9685.Dev
	if cold {
		pwm, err = pca9685.ColdInit(ctx, bus, nil)
	} else {
		pwm, err = pca9685.WarmAttach(bus, nil)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoPWM, err)
	}
	pwm.SetAuthority(lock)

	// The BMP280 driver configures normal mode and reads it in its own
	// goroutine; the tick loop only picks up its latest sample.
	var baroSrc BaroSource
	var bmp *baro.Baro
	if cold {
		bmp, err = baro.Open(bus, 0, &baro.Opts{NoFilter: true}) // the altitude filter wants noise, not lag
	} else {
		bmp, err = baro.Attach(bus, 0, nil) // reads only: a takeover never re-initialises a chip
	}
	if err != nil {
		log.Error("barometer absent or failing: arming refused", "chip", "BMP280", "addr", "0x76", "err", err)
	} else {
		baroSrc = bmpBaro{bmp}
		defer func() {
			// Only the holder of the authority at exit (on the ground) puts the
			// chip to sleep: after a handoff the next controller reads it.
			if lock.Held() {
				bmp.Close()
			} else {
				bmp.Detach()
			}
		}()
	}

	period := time.Duration(float64(time.Second) / o.RateHz)
	p := *o.Params
	p.NominalDt = period.Seconds()
	if o.StateSchema == SchemaV2 {
		p.Schema = SchemaV2
		p.CameraFPS = max(0, o.CameraFPS)
	}
	if o.GainScale != 0 && o.GainScale != 1 {
		p.ScaleGains(o.GainScale)
		log.Warn("debug: control gains scaled", "scale", o.GainScale)
	}
	var clk Clock = &NanoClock{Spin: o.Spin}
	if o.GoSleep {
		clk = NewMonoClock(o.Spin)
	}
	src := &SensorSource{Clock: clk, Period: period, IMU: imu, Baro: baroSrc}
	var st State
	l := NewLoop(&st, &p, src, &PWMSink{Motors: pwm, Authority: lock}, clk)
	l.Role = RoleActive
	if o.Role == RoleStandby {
		l.Role = RoleStandby
	}
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	h, err := newHand(l, lock, o.Handoff, log, o.Version, o.StateSchema, o.RunDir, o.RateHz, lcancel)
	if err != nil {
		return err
	}
	src.Gate = h
	l.Obs = h
	if mission.N > 0 {
		l.in.Cmd = Command{Kind: CmdMission, Mission: mission}
	}

	srv := NewControlServer(log)
	RegisterFlightCommands(srv, l, o.Name)
	h.register(srv)
	h.freeze = srv.Freeze
	srv.Handle("status", func(ctx context.Context, req *Request) (any, error) {
		var snap Snapshot
		l.Snapshot(&snap)
		s := StatusOf(&snap, &l.P, o.Name)
		s.Version, s.Schema = o.Version, o.StateSchema
		held := lock.Held()
		s.Authority = &held
		s.Phase = s.Mode
		if l.P.Schema == SchemaV2 && l.P.CameraFPS > 0 {
			s.Camera = &CameraStatus{FPS: l.P.CameraFPS, Frames: snap.State.Cam.Frames}
		}
		if p, ok := h.progress(); ok {
			s.Handoff = p.Phase.String()
		}
		return s, nil
	})
	if o.Setup != nil {
		if err := o.Setup(ctx, l, srv); err != nil {
			return err
		}
	}

	// Helpers run until the loop ends.
	hctx, hcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { hcancel(); wg.Wait() }()
	wg.Add(2)
	go func() { defer wg.Done(); l.logEvents(hctx, log) }()
	go func() {
		defer wg.Done()
		if err := srv.Serve(hctx, filepath.Join(o.RunDir, o.socketName)); err != nil {
			log.Error("control socket", "err", err)
		}
	}()
	if o.Role == RoleActive {
		// Attached warm: fly as soon as the authority is free (nobody hands
		// it over: this is a start beside a dying controller).
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := lock.Acquire(hctx); err == nil {
				log.Info("PWM authority taken")
			}
		}()
	}
	if o.Role == RoleStandby {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.listen(hctx, filepath.Join(o.RunDir, HandoffSocketNameOf(o.Name))); err != nil {
				log.Error("handoff socket", "err", err)
				lcancel()
			}
		}()
	}

	log.Info("flightctl running", "role", o.Role.String(), "bus", o.Bus, "rate_hz", o.RateHz, "run_dir", o.RunDir,
		"mission", mission.String(), "schema", o.StateSchema, "version", o.Version, "authority", lock.Held())
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if o.RT {
			realtime(log, o.RTPrio)
		}
		errc <- l.loopUntilDone(lctx, o.LandTimeout, log)
	}()
	err = <-errc
	// On the ground (or landed): disarmed pulses, then release.
	if lock.Held() {
		if derr := pwm.Disarm(); derr != nil {
			log.Warn("disarm pulses on exit", "err", derr)
		}
	}
	var snap Snapshot
	l.Snapshot(&snap)
	s := snap.Ticks.Summary()
	log.Info("flightctl stopped", "mode", snap.State.Mode.String(), "ticks", s.Ticks, "rate_hz", s.RateHz,
		"jitter_p99_us", s.JitterP99US, "missed", s.Missed, "overruns", s.Overruns)
	return err
}

// loopUntilDone ticks until ctx ends; then, if airborne with the authority,
// it lands before returning.
func (l *Loop) loopUntilDone(ctx context.Context, landTimeout time.Duration, log *slog.Logger) error {
	if err := l.Run(ctx); err != nil {
		return err
	}
	if !l.St.Airborne || l.Role == RoleStandby {
		return nil
	}
	if _, ok := l.Sink.(*PWMSink); ok && l.Sink.(*PWMSink).Authority != nil && !l.Sink.(*PWMSink).Authority.Held() {
		return nil
	}
	log.Warn("stop requested in the air: landing first", "alt_m", l.St.Est.Alt, "timeout", landTimeout)
	lctx, cancel := context.WithTimeout(context.Background(), landTimeout)
	defer cancel()
	if l.St.Mode != ModeLand {
		l.in.Cmd = Command{Kind: CmdLand}
	}
	for l.St.Mode != ModeDisarmed {
		if err := l.Tick(lctx); err != nil {
			return fmt.Errorf("flightctl: landing on stop: %w", err)
		}
	}
	return nil
}
