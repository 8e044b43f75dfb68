package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/hw/simbus"
	"github.com/inflight-ota/inflight/sim/chips"
	"github.com/inflight-ota/inflight/sim/physics"
	"github.com/inflight-ota/inflight/sim/trace"
)

// Options configure a Drone. The zero value (or nil) is a valid default.
type Options struct {
	Params    *physics.Params // nil: physics.DefaultParams()
	PhysicsHz float64         // physics steps per second; default 1000
	SampleHz  float64         // trace samples per second; default 200
	Gusts     bool            // enable the wind-gust model
	Seed      uint64          // seeds gusts and sensor noise; default 1
	Noise     *chips.Noise    // nil: chips.DefaultNoise(); &chips.Noise{} for none
	Wind      [3]float64      // mean wind, world m/s

	Trace io.Writer // where the JSONL trace goes; nil: no trace

	SiteElevation float64 // m above sea level, for the barometer
	GroundTempC   float64 // air temperature at the site; default 15 °C

	// Window is the stretch of time over which interleaved PWM writers
	// count as two_writers; default 100 ms.
	Window time.Duration
	// SpinRadS is the motor speed above which a motor counts as spinning;
	// default 5 % of OmegaMax.
	SpinRadS float64

	// Clock returns monotonic time since an arbitrary origin; default a
	// clock started by New.
	Clock  func() time.Duration
	Logger *slog.Logger

	// OnPWM, if set, is called for every PWM write with the writer's name
	// and the drone's time (the bench's per-write figures). It runs under the
	// drone's lock: it must be quick and must not call the Drone.
	OnPWM func(client string, t time.Duration)
}

// Drone is the simulated quadcopter and its bus.
type Drone struct {
	opts  Options
	log   *slog.Logger
	clock func() time.Duration
	step  time.Duration
	dt    float64

	mu      sync.Mutex
	quad    *physics.Quad
	mpu     *chips.MPU6050
	bmp     *chips.BMP280
	pca     *chips.PCA9685
	devs    [128]chips.Device
	simT    time.Duration
	nextSmp time.Duration
	smpStep time.Duration
	env     chips.Env

	nextID  uint64
	clients int

	// PWM write tracking.
	ring      [1024]pwmWrite
	ringLen   int
	ringHead  int // index of the newest
	last      pwmWrite
	lastName  string
	haveWrite bool
	episode   bool // inside a two_writers episode

	sum trace.Summary

	out     chan traceItem
	running bool
}

type pwmWrite struct {
	id uint64
	t  time.Duration
}

type traceItem struct {
	sample trace.Sample
	event  trace.Event
	isEvt  bool
}

// New returns a drone resting on the ground, chips as at power-up.
func New(o *Options) *Drone {
	var opts Options
	if o != nil {
		opts = *o
	}
	p := physics.DefaultParams()
	if opts.Params != nil {
		p = *opts.Params
	}
	opts.Params = &p
	if opts.PhysicsHz <= 0 {
		opts.PhysicsHz = 1000
	}
	if opts.SampleHz <= 0 {
		opts.SampleHz = 200
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	n := chips.DefaultNoise()
	if opts.Noise != nil {
		n = *opts.Noise
	}
	n.Seed ^= opts.Seed
	opts.Noise = &n
	if opts.GroundTempC == 0 {
		opts.GroundTempC = 15
	}
	if opts.Window <= 0 {
		opts.Window = 100 * time.Millisecond
	}
	if opts.SpinRadS <= 0 {
		opts.SpinRadS = 0.05 * p.OmegaMax
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Drone{opts: opts, log: opts.Logger}
	d.clock = opts.Clock
	if d.clock == nil {
		start := time.Now()
		d.clock = func() time.Duration { return time.Since(start) }
	}
	d.step = time.Duration(float64(time.Second) / opts.PhysicsHz)
	d.dt = d.step.Seconds()
	d.smpStep = time.Duration(float64(time.Second) / opts.SampleHz)
	d.quad = physics.New(p)
	d.quad.Wind = opts.Wind
	if opts.Gusts {
		d.quad.EnableGusts(opts.Seed)
	}
	d.mpu = chips.NewMPU6050(n)
	d.bmp = chips.NewBMP280(chips.DatasheetCalib, n)
	d.pca = chips.NewPCA9685()
	d.devs[chips.AddrMPU6050] = d.mpu
	d.devs[chips.AddrBMP280] = d.bmp
	d.devs[chips.AddrPCA9685] = d.pca
	d.out = make(chan traceItem, 8192)
	d.simT = d.clock()
	d.nextSmp = d.simT
	d.updateEnv()
	return d
}

// Quad gives f exclusive access to the physics, e.g. to place the drone in
// the air before a test. f must not keep q.
func (d *Drone) Quad(f func(q *physics.Quad)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d.quad)
}

// State returns the drone's physical state and whether it has crashed.
func (d *Drone) State() (physics.State, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.quad.S, d.sum.Crashed
}

// Pulses returns the PCA9685's pulse widths on the four motor channels, µs.
func (d *Drone) Pulses() [4]float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pulses()
}

func (d *Drone) pulses() (p [4]float64) {
	for i := range p {
		p[i] = d.pca.Pulse(i)
	}
	return p
}

// Summary returns the run's figures so far.
func (d *Drone) Summary() trace.Summary {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sum
	s.Handovers = append([]trace.Handover{}, d.sum.Handovers...)
	s.SimS = d.simT.Seconds()
	return s
}

// Run steps the physics in real time until ctx is done, and writes the
// trace. It returns once the trace, ended by a summary, is flushed.
func (d *Drone) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.running {
		d.mu.Unlock()
		return fmt.Errorf("sim: drone already running")
	}
	d.running = true
	d.simT = d.clock()
	d.nextSmp = d.simT
	d.mu.Unlock()

	var wg sync.WaitGroup
	var traceErr error
	if d.opts.Trace != nil {
		w, err := trace.NewWriter(d.opts.Trace, d.header())
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		wg.Go(func() { traceErr = d.writeTrace(ctx, w) })
	}

	timer := time.NewTimer(d.step)
	defer timer.Stop()
	maxCatchUp := 100 * d.step
	for {
		now := d.clock()
		d.mu.Lock()
		if now-d.simT > maxCatchUp {
			skipped := int((now - d.simT - maxCatchUp) / d.step)
			d.sum.Overruns += skipped
			d.simT += time.Duration(skipped) * d.step
		}
		for d.simT+d.step <= now {
			d.stepLocked()
		}
		next := d.simT + d.step
		d.mu.Unlock()
		timer.Reset(next - d.clock())
		select {
		case <-ctx.Done():
			wg.Wait()
			if traceErr != nil {
				return fmt.Errorf("sim: trace: %w", traceErr)
			}
			return nil
		case <-timer.C:
		}
	}
}

func (d *Drone) header() trace.Header {
	noise := "default"
	if *d.opts.Noise == (chips.Noise{Seed: d.opts.Noise.Seed}) {
		noise = "none"
	}
	return trace.Header{
		Start:     time.Now().UTC().Format(time.RFC3339Nano),
		PhysicsHz: d.opts.PhysicsHz,
		SampleHz:  d.opts.SampleHz,
		Seed:      d.opts.Seed,
		Gusts:     d.opts.Gusts,
		Noise:     noise,
		Mass:      d.opts.Params.Mass,
		Hover:     d.quad.HoverThrottle(),
	}
}

// writeTrace drains the trace queue until ctx is done, then writes the end
// line with the summary.
func (d *Drone) writeTrace(ctx context.Context, w *trace.Writer) error {
	var err error
	put := func(it *traceItem) {
		if err != nil {
			return
		}
		if it.isEvt {
			err = w.Event(&it.event)
		} else {
			err = w.Sample(&it.sample)
		}
	}
	flush := time.NewTicker(250 * time.Millisecond)
	defer flush.Stop()
	for {
		select {
		case it := <-d.out:
			put(&it)
		case <-flush.C:
			if err == nil {
				err = w.Flush()
			}
		case <-ctx.Done():
			for {
				select {
				case it := <-d.out:
					put(&it)
					continue
				default:
				}
				break
			}
			s := d.Summary()
			put(&traceItem{isEvt: true, event: trace.Event{T: d.clock().Seconds(), Event: trace.EventEnd, Summary: &s}})
			if err == nil {
				err = w.Flush()
			}
			return err
		}
	}
}

// emit queues a trace line without ever blocking; d.mu is held.
func (d *Drone) emit(it traceItem) {
	if d.opts.Trace == nil {
		return
	}
	select {
	case d.out <- it:
	default:
		d.sum.DroppedLines++
	}
}

func (d *Drone) event(e trace.Event) {
	e.T = round6(e.T)
	d.log.Info("sim: "+e.Event, "t", e.T, "client", e.Client, "other", e.Other, "what", e.What, "reason", e.Reason, "gap_ms", e.GapMS)
	d.emit(traceItem{isEvt: true, event: e})
}

func (d *Drone) updateEnv() {
	q := d.quad
	z := q.S.Pos[2]
	d.env = chips.Env{
		T:             d.simT,
		Dt:            d.dt,
		SpecificForce: q.SpecificForce(),
		Gyro:          q.S.Omega,
		TempC:         chips.TemperatureAt(d.opts.GroundTempC, z),
		PressurePa:    chips.PressureAt(d.opts.SiteElevation, z),
	}
}

// stepLocked advances the physics and the chips by one step; d.mu is held.
func (d *Drone) stepLocked() {
	var u [4]float64
	for i := range u {
		u[i] = chips.ESCCommand(d.pca.Pulse(i))
	}
	d.quad.Step(d.dt, u)
	d.simT += d.step
	d.updateEnv()
	d.mpu.Step(&d.env)
	d.bmp.Step(&d.env)
	d.pca.Step(&d.env)

	if !d.sum.Crashed {
		q := d.quad
		switch {
		case q.Landed && q.Impact > 1:
			d.crash(trace.Event{Reason: "impact", Speed: round3(q.Impact)})
		case q.Tilt() > 60*math.Pi/180:
			d.crash(trace.Event{Reason: "tilt", Tilt: round3(q.Tilt() * 180 / math.Pi)})
		}
	}
	if d.simT >= d.nextSmp {
		d.nextSmp += d.smpStep
		if d.nextSmp <= d.simT {
			d.nextSmp = d.simT + d.smpStep
		}
		d.emit(traceItem{sample: d.sample()})
	}
}

func (d *Drone) crash(e trace.Event) {
	d.sum.Crashed = true
	d.sum.CrashReason = e.Reason
	e.T = d.simT.Seconds()
	e.Event = trace.EventCrash
	d.event(e)
}

func (d *Drone) sample() trace.Sample {
	q := d.quad
	r, p, y := q.Euler()
	const deg = 180 / math.Pi
	s := trace.Sample{
		T: round6(d.simT.Seconds()),
		X: round3(q.S.Pos[0]), Y: round3(q.S.Pos[1]), Z: round3(q.S.Pos[2]), VZ: round3(q.S.Vel[2]),
		Roll: round3(r * deg), Pitch: round3(p * deg), Yaw: round3(y * deg),
		P: round3(q.S.Omega[0] * deg), Q: round3(q.S.Omega[1] * deg), R: round3(q.S.Omega[2] * deg),
		Writer: d.lastName,
		Ground: q.S.OnGround,
	}
	for i := range 4 {
		s.PWM[i] = round3(d.pca.Pulse(i))
		s.Motor[i] = round3(q.S.Motor[i])
	}
	return s
}

func round3(x float64) float64 { return math.Round(x*1e3) / 1e3 }
func round6(x float64) float64 { return math.Round(x*1e6) / 1e6 }

// spinning reports whether any motor turns faster than the spin threshold.
func (d *Drone) spinning() bool {
	for _, w := range d.quad.S.Motor {
		if w > d.opts.SpinRadS {
			return true
		}
	}
	return false
}

// Client is one bus user. Its methods are safe for concurrent use with the
// drone's, not with each other.
type Client struct {
	d         *Drone
	ID        uint64
	name      string
	announced bool
}

// Connect registers a new client; it is announced in the trace by its first
// transaction or hello.
func (d *Drone) Connect() *Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nextID++
	return &Client{d: d, ID: d.nextID, name: fmt.Sprintf("client-%d", d.nextID)}
}

// Name is the client's name: its hello's, or "client-<id>".
func (c *Client) Name() string {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	return c.name
}

// Seen announces the client, on its first packet of any kind.
func (c *Client) Seen() {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.announce()
}

// Hello names the client.
func (c *Client) Hello(name string) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if name != "" {
		c.name = name
	}
	c.announce()
}

func (c *Client) announce() {
	if c.announced {
		return
	}
	c.announced = true
	c.d.sum.Clients++
	c.d.event(trace.Event{T: c.d.clock().Seconds(), Event: trace.EventClientConnect, Client: c.name, ClientID: c.ID})
}

// Drop records that the client went away.
func (c *Client) Drop(reason string) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if !c.announced {
		return
	}
	d.event(trace.Event{T: d.clock().Seconds(), Event: trace.EventClientDrop, Client: c.name, ClientID: c.ID, Reason: reason})
}

// Tx runs one I2C transaction on the drone's bus and returns its
// simbus status. len(r) bytes are read into r on StatusOK.
func (c *Client) Tx(addr uint16, w, r []byte) uint8 {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	c.announce()
	if addr > 0x7f || d.devs[addr] == nil {
		return simbus.StatusNACK
	}
	e, err := d.devs[addr].Tx(w, r)
	if err != nil {
		return simbus.StatusDevice
	}
	if e.Reinit == "" && !e.PWM {
		return simbus.StatusOK
	}
	now := d.clock()
	if e.Reinit != "" && d.spinning() {
		d.sum.ReinitEvents++
		d.event(trace.Event{T: now.Seconds(), Event: trace.EventReinit, Client: c.name, ClientID: c.ID, What: e.Reinit})
	}
	if e.PWM {
		d.recordPWM(c, now)
	}
	return simbus.StatusOK
}

// recordPWM tracks writers, gaps and interleaving; d.mu is held.
func (d *Drone) recordPWM(c *Client, now time.Duration) {
	d.sum.PWMWrites++
	if d.haveWrite {
		gap := now - d.last.t
		if d.spinning() {
			if ms := gap.Seconds() * 1e3; ms > d.sum.MaxPWMGapMS {
				d.sum.MaxPWMGapMS = round3(ms)
			}
		}
		if d.last.id != c.ID {
			h := trace.Handover{T: round6(now.Seconds()), From: d.lastName, To: c.name, GapMS: round3(gap.Seconds() * 1e3)}
			d.sum.Handovers = append(d.sum.Handovers, h)
			d.event(trace.Event{T: h.T, Event: trace.EventWriterSwitch, Client: c.name, ClientID: c.ID, Other: h.From, GapMS: h.GapMS})
		}
	}
	if d.opts.OnPWM != nil {
		d.opts.OnPWM(c.name, now)
	}
	d.haveWrite = true
	d.last = pwmWrite{id: c.ID, t: now}
	d.lastName = c.name
	d.ringHead = (d.ringHead + 1) % len(d.ring)
	d.ring[d.ringHead] = d.last
	d.ringLen = min(d.ringLen+1, len(d.ring))

	// The last runs of writers within the window, newest first.
	var runs [4]uint64
	n := 0
	for i := 0; i < d.ringLen && n <= 4; i++ {
		w := d.ring[(d.ringHead-i+len(d.ring))%len(d.ring)]
		if now-w.t > d.opts.Window {
			break
		}
		if n == 0 || runs[n-1] != w.id {
			if n == 4 {
				break
			}
			runs[n] = w.id
			n++
		}
	}
	switch {
	case n == 1:
		d.episode = false
	case n == 4 && runs[0] == runs[2] && runs[1] == runs[3] && !d.episode:
		d.episode = true
		d.sum.TwoWriterEvents++
		other := ""
		for _, cl := range d.sum.Handovers[max(0, len(d.sum.Handovers)-1):] {
			other = cl.From
		}
		d.event(trace.Event{T: round6(now.Seconds()), Event: trace.EventTwoWriters, Client: c.name, ClientID: c.ID, Other: other})
	}
}
