package flightctl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// SchemaVersion is the version of State and of its encoding. A controller
// that changes State bumps it and registers a migration from the previous
// version with the handoff (see docs/flightctl.md, "State schema").
const SchemaVersion = 1

// SchemaV2 is the second state schema: the attitude is encoded as a unit
// quaternion (EstState.Q) instead of Euler angles, and the camera's state
// (CamState) is added. A controller runs one schema natively (Params.Schema);
// RegisterMigrations converts between them.
const SchemaV2 = 2

// Schemas lists the state schemas this package encodes.
var Schemas = []int{SchemaVersion, SchemaV2}

// State is everything the controller remembers between ticks. Step reads and
// writes nothing else, so copying a State into another process (AppendState,
// DecodeState) lets that process continue the flight on the next tick.
//
// Schema 1 keeps the attitude as ZYX Euler angles.
type State struct {
	Tick     uint64  // ticks stepped so far
	Time     float64 // controller time: the sum of the dt of every tick, s
	Mode     Mode
	Reason   Reason // the latest refusal or failsafe reason (status only)
	Failsafe Reason // non-zero while a failsafe landing is in progress
	Airborne bool   // the controller believes the quad has left the ground

	Est     EstState
	Ctl     CtlState
	Health  HealthState
	Mission MissionState
	Last    LastOut
	Cam     CamState // schema 2 only
}

// CamState is the simulated camera stream's state (schema 2; a schema-1
// encoding drops it). The camera is a small feature v2 brings that the
// ground can see: frames counted at Params.CameraFPS while the controller runs.
type CamState struct {
	Frames uint64  // frames produced so far
	Acc    float64 // time since the last frame, s
}

// EstState is the estimator's state.
type EstState struct {
	Roll, Pitch, Yaw float64 // attitude, rad (ZYX Euler, body FLU to world ENU)
	// Q is the attitude as a unit quaternion (w, x, y, z), the native
	// attitude of schema 2 (Params.Schema 2): the filter integrates it and
	// derives the Euler angles from it. Zero means "take it from the Euler
	// angles". Schema 1 neither uses nor encodes it.
	Q                [4]float64
	GyroBias         [3]float64 // rad/s (calibration at rest, then refined in flight)
	AccTrim          [3]float64 // accelerometer trim subtracted from every sample, m/s²
	Rate             [3]float64 // bias-corrected, low-passed body rates for the rate loop, rad/s
	Alt, VZ, AccBias float64    // altitude above the take-off point m, vertical speed m/s, vertical accel bias m/s²
	P                [9]float64 // altitude filter covariance, row-major 3×3 over (Alt, VZ, AccBias)
	AccZ             float64    // last vertical acceleration (world, gravity removed), m/s²
	BaroRef          float64    // pressure at altitude 0, Pa
	BaroAlt          float64    // last barometric altitude, m
	Aligned          bool       // the attitude has converged to the accelerometer at least once
	Calibrated       bool       // the gyro bias has been measured at rest
	CalTime          float64    // length of the current still window, s
	CalN             uint32     // samples in it
	CalGyroSum       [3]float64 // sums over it
	CalGyroSq        [3]float64
	CalAccSum        [3]float64
}

// PIDState is the memory of one PID loop.
type PIDState struct {
	I        float64 // integrator (output units)
	D        float64 // filtered derivative
	PrevMeas float64 // previous measurement (derivative on measurement)
}

// CtlState is the controllers' state: setpoints, loop memories, last commands.
type CtlState struct {
	Rate       [3]PIDState // roll, pitch, yaw rate loops
	VZ         PIDState    // climb-rate loop
	SpRoll     float64     // rad
	SpPitch    float64     // rad
	SpYaw      float64     // heading hold, rad
	SpRate     [3]float64  // rad/s
	TargetAlt  float64     // m
	SpAlt      float64     // ramped altitude setpoint, m
	SpVZ       float64     // m/s
	Torque     [3]float64  // last roll, pitch, yaw commands (ESC units)
	Collective float64     // last collective command (ESC units)
	SatHi      uint8       // axes (bit 0 roll, 1 pitch, 2 yaw, 3 thrust) the mixer limited upwards last tick
	SatLo      uint8       // ... downwards
	TouchTime  float64     // time spent looking landed, s
	BlindTime  float64     // time spent landing without an IMU, s
	BlindAlt   float64     // estimated altitude when the IMU was lost, m
}

// HealthState tracks the sensors.
type HealthState struct {
	IMUFails  uint32     // consecutive unusable IMU ticks
	Stuck     uint32     // consecutive bit-identical IMU samples
	LastAccel [3]float64 // the previous raw sample, to detect a stuck IMU
	LastGyro  [3]float64
	IMUSeen   bool    // a good IMU sample has been seen
	BaroFails uint32  // consecutive failed barometer reads
	BaroAge   float64 // time since the last new barometer sample, s
	BaroSeen  bool    // a good barometer sample has been seen
}

// MissionState is the mission and its progress.
type MissionState struct {
	Plan       Mission
	Active     bool
	Done       bool    // the last mission completed
	Index      uint8   // current step
	StepTime   float64 // time in the current step, s
	Started    bool    // the current step's action has been taken
	ArmRefused Reason  // last reported reason the mission could not arm (logged once per reason)
}

// LastOut is the last tick's output.
type LastOut struct {
	Motor [4]float64 // ESC commands 0..1
	Flags OutFlags
}

// Encoding: a 12-byte header, the fields in the order of walkState, all little
// endian (float64 as IEEE-754 bits, bool as one byte 0 or 1), and a CRC-32
// (IEEE) of everything before it.
//
//	offset size field
//	0      4    magic "FCST"
//	4      2    schema version
//	6      2    reserved, 0
//	8      4    payload length
//	12     n    payload
//	12+n   4    crc32
const stateHeaderLen = 12

var stateMagic = [4]byte{'F', 'C', 'S', 'T'}

// StateSize is the encoded size of a schema-1 State.
var StateSize = stateHeaderLen + statePayloadLen() + 4

// Errors of the codecs.
var (
	ErrMalformed = errors.New("flightctl: malformed encoding")
	ErrSchema    = errors.New("flightctl: unsupported schema version")
)

// AppendState appends the schema-1 encoding of s to b. It allocates only if b
// lacks capacity.
func AppendState(b []byte, s *State) []byte { return AppendStateSchema(b, s, SchemaVersion) }

// AppendStateSchema appends the encoding of s in schema (1 or 2) to b. For
// schema 2 a zero Q is taken from the Euler angles. It panics on another
// schema (a programming error).
func AppendStateSchema(b []byte, s *State, schema int) []byte {
	n := statePayloadLenOf(schema)
	if n < 0 {
		panic(fmt.Sprintf("flightctl: no state schema %d", schema))
	}
	if schema == SchemaV2 && s.Est.Q == ([4]float64{}) {
		t := *s
		t.Est.Q = quatOf(&t.Est)
		s = &t
	}
	start := len(b)
	var h [stateHeaderLen]byte
	copy(h[:], stateMagic[:])
	binary.LittleEndian.PutUint16(h[4:], uint16(schema))
	binary.LittleEndian.PutUint32(h[8:], uint32(n))
	b = append(b, h[:]...)
	e := encoder{b: b}
	walkState(&e, s, schema)
	b = e.b
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b[start:]))
}

// quatOf is the quaternion of the Euler angles of e.
func quatOf(e *EstState) [4]float64 {
	w, x, y, z := eulerToQuat(e.Roll, e.Pitch, e.Yaw)
	return [4]float64{w, x, y, z}
}

// StateSchema returns the schema version of an encoded State, for a migration
// registry to choose a decoder.
func StateSchema(b []byte) (uint16, error) {
	if len(b) < stateHeaderLen || [4]byte(b[:4]) != stateMagic {
		return 0, fmt.Errorf("flightctl: state header: %w", ErrMalformed)
	}
	return binary.LittleEndian.Uint16(b[4:]), nil
}

// DecodeState decodes a schema-1 State. On error s is left unchanged.
func DecodeState(b []byte, s *State) error { return DecodeStateSchema(b, s, SchemaVersion) }

// DecodeStateSchema decodes a State encoded in schema (1 or 2); an encoding
// of another schema is refused (ErrSchema): migrate it first. Decoding
// schema 2 derives the Euler angles from the quaternion; decoding schema 1
// leaves Q zero. On error s is left unchanged.
func DecodeStateSchema(b []byte, s *State, schema int) error {
	v, err := StateSchema(b)
	if err != nil {
		return err
	}
	n := statePayloadLenOf(int(v))
	if int(v) != schema || n < 0 {
		return fmt.Errorf("flightctl: state schema %d, want %d: %w", v, schema, ErrSchema)
	}
	if binary.LittleEndian.Uint16(b[6:]) != 0 || int(binary.LittleEndian.Uint32(b[8:])) != n || len(b) != stateHeaderLen+n+4 {
		return fmt.Errorf("flightctl: state of %d bytes, want %d: %w", len(b), stateHeaderLen+n+4, ErrMalformed)
	}
	if crc32.ChecksumIEEE(b[:len(b)-4]) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return fmt.Errorf("flightctl: state checksum: %w", ErrMalformed)
	}
	var t State
	d := decoder{b: b[stateHeaderLen : stateHeaderLen+n]}
	walkState(&d, &t, schema)
	if d.bad {
		return fmt.Errorf("flightctl: state field: %w", ErrMalformed)
	}
	if schema == SchemaV2 {
		q := &t.Est.Q
		m := math.Sqrt(q[0]*q[0] + q[1]*q[1] + q[2]*q[2] + q[3]*q[3])
		if !(math.Abs(m-1) < 1e-6) {
			return fmt.Errorf("flightctl: state quaternion of norm %g: %w", m, ErrMalformed)
		}
		t.Est.Roll, t.Est.Pitch, t.Est.Yaw = quatToEuler(q[0], q[1], q[2], q[3])
	}
	if err := t.validate(); err != nil {
		return err
	}
	*s = t
	return nil
}

func (s *State) validate() error {
	switch {
	case s.Mode >= numModes:
		return fmt.Errorf("flightctl: state mode %d: %w", s.Mode, ErrMalformed)
	case s.Reason >= numReasons || s.Failsafe >= numReasons || s.Mission.ArmRefused >= numReasons:
		return fmt.Errorf("flightctl: state reason: %w", ErrMalformed)
	case !s.Mission.Plan.valid() || s.Mission.Index > s.Mission.Plan.N:
		return fmt.Errorf("flightctl: state mission: %w", ErrMalformed)
	}
	return nil
}

// coder visits fields in encoding order; encoder writes them, decoder reads them.
type coder interface {
	f64(*float64)
	u64(*uint64)
	u32(*uint32)
	u16(*uint16)
	u8(*uint8)
	flag(*bool)
}

func walkState[C coder](c C, s *State, schema int) {
	c.u64(&s.Tick)
	c.f64(&s.Time)
	c.u8((*uint8)(&s.Mode))
	c.u8((*uint8)(&s.Reason))
	c.u8((*uint8)(&s.Failsafe))
	c.flag(&s.Airborne)

	e := &s.Est
	if schema == SchemaV2 {
		vec(c, e.Q[:])
	} else {
		c.f64(&e.Roll)
		c.f64(&e.Pitch)
		c.f64(&e.Yaw)
	}
	vec(c, e.GyroBias[:])
	vec(c, e.AccTrim[:])
	vec(c, e.Rate[:])
	c.f64(&e.Alt)
	c.f64(&e.VZ)
	c.f64(&e.AccBias)
	vec(c, e.P[:])
	c.f64(&e.AccZ)
	c.f64(&e.BaroRef)
	c.f64(&e.BaroAlt)
	c.flag(&e.Aligned)
	c.flag(&e.Calibrated)
	c.f64(&e.CalTime)
	c.u32(&e.CalN)
	vec(c, e.CalGyroSum[:])
	vec(c, e.CalGyroSq[:])
	vec(c, e.CalAccSum[:])

	k := &s.Ctl
	for i := range k.Rate {
		pid(c, &k.Rate[i])
	}
	pid(c, &k.VZ)
	c.f64(&k.SpRoll)
	c.f64(&k.SpPitch)
	c.f64(&k.SpYaw)
	vec(c, k.SpRate[:])
	c.f64(&k.TargetAlt)
	c.f64(&k.SpAlt)
	c.f64(&k.SpVZ)
	vec(c, k.Torque[:])
	c.f64(&k.Collective)
	c.u8(&k.SatHi)
	c.u8(&k.SatLo)
	c.f64(&k.TouchTime)
	c.f64(&k.BlindTime)
	c.f64(&k.BlindAlt)

	h := &s.Health
	c.u32(&h.IMUFails)
	c.u32(&h.Stuck)
	vec(c, h.LastAccel[:])
	vec(c, h.LastGyro[:])
	c.flag(&h.IMUSeen)
	c.u32(&h.BaroFails)
	c.f64(&h.BaroAge)
	c.flag(&h.BaroSeen)

	m := &s.Mission
	mission(c, &m.Plan)
	c.flag(&m.Active)
	c.flag(&m.Done)
	c.u8(&m.Index)
	c.f64(&m.StepTime)
	c.flag(&m.Started)
	c.u8((*uint8)(&m.ArmRefused))

	vec(c, s.Last.Motor[:])
	c.u16((*uint16)(&s.Last.Flags))

	if schema == SchemaV2 {
		c.u64(&s.Cam.Frames)
		c.f64(&s.Cam.Acc)
	}
}

func vec[C coder](c C, v []float64) {
	for i := range v {
		c.f64(&v[i])
	}
}

func pid[C coder](c C, p *PIDState) {
	c.f64(&p.I)
	c.f64(&p.D)
	c.f64(&p.PrevMeas)
}

func mission[C coder](c C, m *Mission) {
	c.u8(&m.N)
	for i := range m.Steps {
		c.u8((*uint8)(&m.Steps[i].Kind))
		c.f64(&m.Steps[i].Arg)
	}
}

type sizer struct{ n int }

func (z *sizer) f64(*float64) { z.n += 8 }
func (z *sizer) u64(*uint64)  { z.n += 8 }
func (z *sizer) u32(*uint32)  { z.n += 4 }
func (z *sizer) u16(*uint16)  { z.n += 2 }
func (z *sizer) u8(*uint8)    { z.n++ }
func (z *sizer) flag(*bool)   { z.n++ }

var stateLen = func() [3]int {
	var r [3]int
	for _, v := range []int{SchemaVersion, SchemaV2} {
		var z sizer
		walkState(&z, &State{}, v)
		r[v] = z.n
	}
	return r
}()

func statePayloadLen() int { return stateLen[SchemaVersion] }

// statePayloadLenOf is the payload length of schema, or -1 for an unknown one.
func statePayloadLenOf(schema int) int {
	if schema != SchemaVersion && schema != SchemaV2 {
		return -1
	}
	return stateLen[schema]
}

// StateSizeOf is the encoded size of a State in schema, or -1.
func StateSizeOf(schema int) int {
	n := statePayloadLenOf(schema)
	if n < 0 {
		return -1
	}
	return stateHeaderLen + n + 4
}

type encoder struct{ b []byte }

func (e *encoder) f64(v *float64) { e.b = binary.LittleEndian.AppendUint64(e.b, math.Float64bits(*v)) }
func (e *encoder) u64(v *uint64)  { e.b = binary.LittleEndian.AppendUint64(e.b, *v) }
func (e *encoder) u32(v *uint32)  { e.b = binary.LittleEndian.AppendUint32(e.b, *v) }
func (e *encoder) u16(v *uint16)  { e.b = binary.LittleEndian.AppendUint16(e.b, *v) }
func (e *encoder) u8(v *uint8)    { e.b = append(e.b, *v) }
func (e *encoder) flag(v *bool) {
	var x byte
	if *v {
		x = 1
	}
	e.b = append(e.b, x)
}

type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) take(n int) []byte {
	if len(d.b) < n {
		d.bad = true
		return make([]byte, n)
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}
func (d *decoder) f64(v *float64) { *v = math.Float64frombits(binary.LittleEndian.Uint64(d.take(8))) }
func (d *decoder) u64(v *uint64)  { *v = binary.LittleEndian.Uint64(d.take(8)) }
func (d *decoder) u32(v *uint32)  { *v = binary.LittleEndian.Uint32(d.take(4)) }
func (d *decoder) u16(v *uint16)  { *v = binary.LittleEndian.Uint16(d.take(2)) }
func (d *decoder) u8(v *uint8)    { *v = d.take(1)[0] }
func (d *decoder) flag(v *bool) {
	x := d.take(1)[0]
	if x > 1 {
		d.bad = true
	}
	*v = x == 1
}
