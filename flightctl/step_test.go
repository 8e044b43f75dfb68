package flightctl

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/inflight-ota/inflight/sim/physics"
)

const g0 = 9.80665

// still returns the inputs of a drone resting with the given attitude.
func still(roll, pitch float64, gyroBias [3]float64) Inputs {
	// Gravity's "up" in the body frame: R^T (0, 0, g).
	w, x, y, z := eulerToQuat(roll, pitch, 0.3)
	up := [3]float64{2 * (x*z - w*y), 2 * (y*z + w*x), w*w - x*x - y*y + z*z}
	var in Inputs
	for i := range 3 {
		in.Accel[i] = g0 * up[i]
		in.Gyro[i] = gyroBias[i]
	}
	in.Dt = 0.0025
	in.BaroPa = 101325
	return in
}

// stepN steps n ticks, with a new barometer sample every tenth, and a tiny
// dither on the IMU so it never looks stuck.
func stepN(st *State, p *Params, in *Inputs, n int) Outputs {
	var out Outputs
	for i := range n {
		in.BaroNew = (st.Tick % 10) == 0
		d := 1e-7 * float64(i%3)
		in.Accel[0] += d
		Step(st, p, in, &out)
		in.Accel[0] -= d
		in.Cmd = Command{}
	}
	return out
}

func TestEstimatorConvergesToTiltAndMeasuresGyroBias(t *testing.T) {
	p := DefaultParams()
	bias := [3]float64{0.007, -0.004, 0.0026}
	roll, pitch := deg(12), deg(-7)
	in := still(roll, pitch, bias)
	var st State
	stepN(&st, &p, &in, 800)
	if !st.Est.Calibrated {
		t.Fatal("gyro not calibrated after 2 s still")
	}
	for i := range 3 {
		if math.Abs(st.Est.GyroBias[i]-bias[i]) > 1e-6 {
			t.Errorf("gyro bias[%d] = %g, want %g", i, st.Est.GyroBias[i], bias[i])
		}
	}
	if math.Abs(st.Est.Roll-roll) > deg(0.1) || math.Abs(st.Est.Pitch-pitch) > deg(0.1) {
		t.Errorf("attitude %.2f°, %.2f°, want 12°, -7°", st.Est.Roll*180/math.Pi, st.Est.Pitch*180/math.Pi)
	}
	// Beyond ArmMaxTilt the tilt is not taken as trim, and arming is refused.
	if st.Est.AccTrim[0] != 0 || st.Est.AccTrim[1] != 0 {
		t.Errorf("trim %v taken on a 14° slope", st.Est.AccTrim)
	}
	in.Cmd = Command{Kind: CmdArm}
	if out := stepN(&st, &p, &in, 1); out.CmdOK || out.Reason != ReasonNotLevel {
		t.Errorf("arm on a slope: ok=%v reason=%v", out.CmdOK, out.Reason)
	}
}

func TestEstimatorHoldsAttitudeFromGyroInFlight(t *testing.T) {
	// In flight the estimate follows the gyro: a rotation at a known rate
	// integrates to the right angle.
	p := DefaultParams()
	var st State
	st.Mode, st.Airborne = ModeHover, true
	st.Est.Calibrated = true
	in := still(0, 0, [3]float64{})
	in.Gyro = [3]float64{deg(10), 0, 0} // 10°/s roll for 1 s
	in.Accel = [3]float64{0, 0, g0}     // thrust along body z, as in a coordinated turn
	for range 400 {
		var out Outputs
		in.Accel[1] += 1e-9
		estimate(&st, &p, &in, 0.0025, true, false, 0, &out)
	}
	if got := st.Est.Roll * 180 / math.Pi; math.Abs(got-10) > 0.3 {
		t.Fatalf("roll after 1 s at 10°/s: %.2f°", got)
	}
}

func TestCalibrationRefusedWhileMoving(t *testing.T) {
	p := DefaultParams()
	var st State
	in := still(0, 0, [3]float64{})
	var out Outputs
	for i := range 800 {
		in.Gyro[0] = 0.05 * math.Sin(float64(i)) // someone is carrying it
		in.BaroNew = i%10 == 0
		Step(&st, &p, &in, &out)
	}
	if st.Est.Calibrated {
		t.Fatal("calibrated while moving")
	}
	in.Cmd = Command{Kind: CmdArm}
	Step(&st, &p, &in, &out)
	if out.CmdOK || out.Reason != ReasonNotCalibrated {
		t.Fatalf("arm: ok=%v reason=%v", out.CmdOK, out.Reason)
	}
}

func TestPIDAntiWindupAndLimits(t *testing.T) {
	g := PIDGains{Kp: 1, Ki: 10, ILimit: 0.5, OutLimit: 2}
	var s PIDState
	for range 1000 {
		PIDStep(&s, &g, 1, 0, 0, 0.01, false, false, false)
	}
	if s.I != 0.5 {
		t.Fatalf("integrator %v, want clamped at 0.5", s.I)
	}
	if out := PIDStep(&s, &g, 100, 0, 0, 0.01, false, false, false); out != 2 {
		t.Fatalf("output %v, want limited to 2", out)
	}
	// Saturated upwards: a positive error does not integrate, a negative one does.
	s = PIDState{}
	PIDStep(&s, &g, 1, 0, 0, 0.01, false, true, false)
	if s.I != 0 {
		t.Fatalf("integrated %v while saturated high", s.I)
	}
	PIDStep(&s, &g, -1, 0, 0, 0.01, false, true, false)
	if s.I >= 0 {
		t.Fatalf("did not unwind while saturated high: %v", s.I)
	}
	// Frozen: nothing integrates.
	s = PIDState{}
	PIDStep(&s, &g, 1, 0, 0, 0.01, true, false, false)
	if s.I != 0 {
		t.Fatalf("integrated while frozen")
	}
	// Derivative on measurement: a setpoint step gives no kick.
	g = PIDGains{Kd: 1}
	s = PIDState{}
	if out := PIDStep(&s, &g, 5, 0, 0, 0.01, false, false, false); out != 0 {
		t.Fatalf("derivative kick %v", out)
	}
}

func TestMixerMovesTheRightMotors(t *testing.T) {
	const lo, hi = 0.08, 1.0
	base, _, _ := Mix(0.5, 0, 0, 0, lo, hi)
	cases := []struct {
		name             string
		roll, pitch, yaw float64
		up, down         []int // channels
	}{
		{"roll+ (left motors up)", 0.05, 0, 0, []int{1, 2}, []int{0, 3}},
		{"pitch+ (rear motors up)", 0, 0.05, 0, []int{1, 3}, []int{0, 2}},
		{"yaw+ (clockwise motors up)", 0, 0, 0.05, []int{2, 3}, []int{0, 1}},
	}
	for _, c := range cases {
		u, _, _ := Mix(0.5, c.roll, c.pitch, c.yaw, lo, hi)
		for _, i := range c.up {
			if u[i] <= base[i] {
				t.Errorf("%s: channel %d %.3f not above %.3f", c.name, i, u[i], base[i])
			}
		}
		for _, i := range c.down {
			if u[i] >= base[i] {
				t.Errorf("%s: channel %d %.3f not below %.3f", c.name, i, u[i], base[i])
			}
		}
		// And on the airframe of docs/conventions.md the body accelerates
		// about the commanded axis, positively.
		q := physics.New(physics.DefaultParams())
		q.S.OnGround = false
		q.S.Pos[2] = 10
		for i := range q.S.Motor {
			q.S.Motor[i] = u[i] * q.P.OmegaMax
		}
		q.Step(0.001, u)
		axis := 0
		if c.pitch != 0 {
			axis = 1
		} else if c.yaw != 0 {
			axis = 2
		}
		for i := range 3 {
			if i == axis && q.S.Omega[i] <= 0 || i != axis && math.Abs(q.S.Omega[i]) > 1e-9 {
				t.Errorf("%s: body rates %v", c.name, q.S.Omega)
			}
		}
	}
}

func TestMixerSaturationKeepsAttitudeAuthority(t *testing.T) {
	const lo, hi = 0.08, 1.0
	// Full collective with a roll command: thrust gives way, roll stays.
	u, satHi, _ := Mix(0.98, 0.1, 0, 0, lo, hi)
	if d := u[1] - u[0]; math.Abs(d-0.2) > 1e-12 {
		t.Fatalf("roll differential %v, want 0.2 (outputs %v)", d, u)
	}
	if satHi&satThrust == 0 || satHi&satRoll != 0 {
		t.Fatalf("saturation bits %04b", satHi)
	}
	// A roll command bigger than the range is scaled, inside the limits.
	u, satHi, _ = Mix(0.5, 1, 0, 0, lo, hi)
	for _, v := range u {
		if v < lo-1e-12 || v > hi+1e-12 {
			t.Fatalf("output %v outside [%v, %v]", u, lo, hi)
		}
	}
	if satHi&satRoll == 0 {
		t.Fatal("roll saturation not reported")
	}
	// Yaw gets only what roll and pitch leave.
	u, satHi, _ = Mix(0.5, 0.45, 0, 0.3, lo, hi)
	if d := u[1] - u[0] - (u[2] - u[3]); math.Abs(u[1]-u[3]-0.9-(u[1]-u[2])) > 1 && d > 0 {
		t.Fatalf("unexpected %v", u)
	}
	if satHi&satYaw == 0 {
		t.Fatal("yaw limit not reported")
	}
	// Collective at idle: motors never go below idle.
	u, _, satLo := Mix(0, 0, 0, 0, lo, hi)
	if u != [4]float64{lo, lo, lo, lo} || satLo&satThrust == 0 {
		t.Fatalf("idle outputs %v, satLo %04b", u, satLo)
	}
}

// armed returns a calibrated, armed state on the ground.
func armedState(t *testing.T, p *Params) (State, Inputs) {
	var st State
	in := still(0, 0, [3]float64{0.001, 0, 0})
	stepN(&st, p, &in, 500)
	in.Cmd = Command{Kind: CmdArm}
	if out := stepN(&st, p, &in, 1); !out.CmdOK || st.Mode != ModeArmed {
		t.Fatalf("arm: ok=%v reason=%v mode=%v", out.CmdOK, out.Reason, st.Mode)
	}
	return st, in
}

func TestArmChecks(t *testing.T) {
	p := DefaultParams()
	var st State
	in := still(0, 0, [3]float64{})
	in.Cmd = Command{Kind: CmdArm}
	var out Outputs
	if Step(&st, &p, &in, &out); out.CmdOK || out.Reason != ReasonNoBaro {
		t.Fatalf("first tick, no barometer yet: ok=%v reason=%v", out.CmdOK, out.Reason)
	}
	// An absent IMU (every read fails).
	st = State{}
	in.IMUErr = true
	stepN(&st, &p, &in, 500)
	in.Cmd = Command{Kind: CmdArm}
	if out := stepN(&st, &p, &in, 1); out.CmdOK || out.Reason != ReasonNoIMU {
		t.Fatalf("absent IMU: ok=%v reason=%v", out.CmdOK, out.Reason)
	}
	// Idle spin once armed, disarmed pulses otherwise.
	st, in = armedState(t, &p)
	out = stepN(&st, &p, &in, 1)
	for i, us := range out.PulseUS {
		if math.Abs(us-(1000+1000*p.IdleThrottle)) > 1e-9 {
			t.Fatalf("armed channel %d pulse %v", i, us)
		}
	}
	in.Cmd = Command{Kind: CmdDisarm}
	out = stepN(&st, &p, &in, 1)
	if !out.CmdOK || out.PulseUS != [4]float64{1000, 1000, 1000, 1000} {
		t.Fatalf("disarm: ok=%v pulses %v", out.CmdOK, out.PulseUS)
	}
}

func TestTiltCut(t *testing.T) {
	p := DefaultParams()
	st, in := armedState(t, &p)
	st.Mode, st.Airborne = ModeHover, true
	st.Est.Roll = deg(70)
	in.Accel = [3]float64{0, g0 * math.Sin(deg(70)), g0 * math.Cos(deg(70))}
	out := stepN(&st, &p, &in, 1)
	if st.Mode != ModeDisarmed || out.Reason != ReasonTilt || out.Events&EvFailsafe == 0 {
		t.Fatalf("mode %v reason %v events %b", st.Mode, out.Reason, out.Events)
	}
	if out.PulseUS != [4]float64{1000, 1000, 1000, 1000} {
		t.Fatalf("pulses after tilt cut %v", out.PulseUS)
	}
}

func TestBadIMUSamplesOnTheGroundDisarm(t *testing.T) {
	p := DefaultParams()
	for _, bad := range []struct {
		name string
		f    func(in *Inputs, i int)
	}{
		{"read errors", func(in *Inputs, i int) { in.IMUErr = true }},
		{"NaN", func(in *Inputs, i int) { in.Gyro[1] = math.NaN() }},
		{"Inf", func(in *Inputs, i int) { in.Accel[2] = math.Inf(1) }},
	} {
		st, in := armedState(t, &p)
		var out Outputs
		for i := range int(p.IMUFailTicks) {
			bad.f(&in, i)
			in.BaroNew = i%10 == 0
			Step(&st, &p, &in, &out)
			if i < int(p.IMUFailTicks)-1 && st.Mode != ModeArmed {
				t.Fatalf("%s: gave up after %d ticks", bad.name, i+1)
			}
		}
		if st.Mode != ModeDisarmed || out.Reason != ReasonIMUFail {
			t.Fatalf("%s: mode %v reason %v", bad.name, st.Mode, out.Reason)
		}
	}
}

func TestStuckIMUCountsAsFailed(t *testing.T) {
	p := DefaultParams()
	st, in := armedState(t, &p)
	var out Outputs
	n := int(p.StuckTicks + p.IMUFailTicks)
	for i := range n + 1 {
		in.BaroNew = i%10 == 0
		Step(&st, &p, &in, &out) // bit-identical samples
	}
	if st.Mode != ModeDisarmed || st.Reason != ReasonIMUFail {
		t.Fatalf("stuck IMU: mode %v reason %v", st.Mode, st.Reason)
	}
}

// The closed loop (closedloop_test.go) flies through sensor faults.
func TestFailsafeLandingsInFlight(t *testing.T) {
	cases := []struct {
		name   string
		imu    func(tm float64, in *Inputs)
		baro   func(tm float64, in *Inputs)
		reason Reason
	}{
		{"IMU NaN", func(tm float64, in *Inputs) {
			if tm > 8 {
				in.Gyro[0] = math.NaN()
			}
		}, nil, ReasonIMUFail},
		{"IMU read errors", func(tm float64, in *Inputs) {
			if tm > 8 {
				in.IMUErr = true
			}
		}, nil, ReasonIMUFail},
		{"IMU stuck", func() func(tm float64, in *Inputs) {
			var keep Inputs
			return func(tm float64, in *Inputs) {
				if tm > 8 {
					in.Accel, in.Gyro = keep.Accel, keep.Gyro
				} else {
					keep = *in
				}
			}
		}(), nil, ReasonIMUFail},
		{"barometer errors", nil, func(tm float64, in *Inputs) {
			if tm > 8 {
				in.BaroErr, in.BaroNew = true, false
			}
		}, ReasonBaroFail},
		{"barometer silent", nil, func(tm float64, in *Inputs) {
			if tm > 8 {
				in.BaroNew = false
			}
		}, ReasonBaroFail},
	}
	for _, c := range cases {
		var sawFailsafe Reason
		r := flyLoop(t, loopOpts{mission: "takeoff:2m,hover:20s,land", seed: 5, maxTime: 40, imuFault: c.imu, baroFault: c.baro,
			onTick: func(tm float64, st *State, q *physics.Quad) {
				if st.Failsafe != ReasonNone && sawFailsafe == ReasonNone {
					sawFailsafe = st.Failsafe
				}
			}})
		t.Logf("%s: crashed=%v end=%v/%v failsafe=%v t=%.1f", c.name, r.crashed, r.endMode, r.endReason, sawFailsafe, r.time)
		if r.crashed || r.endMode != ModeDisarmed || sawFailsafe != c.reason {
			t.Errorf("%s: crashed=%v end mode %v, failsafe %v (want %v)", c.name, r.crashed, r.endMode, sawFailsafe, c.reason)
		}
	}
}

func TestCommands(t *testing.T) {
	p := DefaultParams()
	st, in := armedState(t, &p)
	in.Cmd = Command{Kind: CmdHover}
	if out := stepN(&st, &p, &in, 1); out.CmdOK || out.Reason != ReasonBadMode {
		t.Fatalf("hover on the ground: %v %v", out.CmdOK, out.Reason)
	}
	in.Cmd = Command{Kind: CmdTakeoff, Alt: 3}
	if out := stepN(&st, &p, &in, 1); !out.CmdOK || st.Mode != ModeTakeoff || st.Ctl.TargetAlt != 3 {
		t.Fatalf("takeoff: %v %v %v", out.CmdOK, st.Mode, st.Ctl.TargetAlt)
	}
	st.Airborne = true
	in.Cmd = Command{Kind: CmdDisarm}
	if out := stepN(&st, &p, &in, 1); out.CmdOK || out.Reason != ReasonAirborne {
		t.Fatalf("disarm in the air: %v %v", out.CmdOK, out.Reason)
	}
	in.Cmd = Command{Kind: CmdDisarm, Force: true}
	if out := stepN(&st, &p, &in, 1); !out.CmdOK || st.Mode != ModeDisarmed {
		t.Fatalf("forced disarm: %v %v", out.CmdOK, st.Mode)
	}
	in.Cmd = Command{Kind: CmdTakeoff, Alt: math.NaN()}
	if out := stepN(&st, &p, &in, 1); out.CmdOK || out.Reason != ReasonBadArg {
		t.Fatalf("takeoff NaN: %v %v", out.CmdOK, out.Reason)
	}
}

func TestStepAllocatesNothing(t *testing.T) {
	p := DefaultParams()
	st, in := armedState(t, &p)
	in.Cmd = Command{Kind: CmdTakeoff}
	var out Outputs
	allocs := testing.AllocsPerRun(1000, func() {
		in.Accel[0] += 1e-9
		Step(&st, &p, &in, &out)
	})
	if allocs != 0 {
		t.Fatalf("Step allocates %v", allocs)
	}
}

func TestStepIsDeterministicAcrossEncoding(t *testing.T) {
	// The handoff's premise: a state copied through its encoding mid-flight
	// and stepped on the same inputs gives bit-identical outputs.
	var a State
	var snapAt = 12.0
	var enc []byte
	var inputs []Inputs
	var outs []Outputs
	p := DefaultParams()
	flyLoop(t, loopOpts{mission: "takeoff:2m,hover:5s,land", seed: 3, maxTime: 16,
		onTick: func(tm float64, st *State, q *physics.Quad) {
			if enc == nil && tm >= snapAt {
				enc = AppendState(nil, st)
				a = *st
			}
		}})
	if enc == nil {
		t.Fatal("no snapshot")
	}
	var b State
	if err := DecodeState(enc, &b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(AppendState(nil, &b), enc) {
		t.Fatal("re-encoding differs")
	}
	in := still(deg(0.1), deg(-0.2), [3]float64{})
	in.Cmd = Command{}
	for i := range 400 {
		in.Accel[0] = 0.01 * math.Sin(float64(i))
		in.BaroNew = i%10 == 0
		in.BaroPa = 101325 - 24 + 0.5*math.Cos(float64(i))
		inputs = append(inputs, in)
	}
	for i := range inputs {
		var oa Outputs
		Step(&a, &p, &inputs[i], &oa)
		outs = append(outs, oa)
	}
	for i := range inputs {
		var ob Outputs
		Step(&b, &p, &inputs[i], &ob)
		if ob != outs[i] {
			t.Fatalf("tick %d: outputs differ after the state went through its encoding", i)
		}
	}
}

func TestStateCodec(t *testing.T) {
	var st State
	st.Tick, st.Time, st.Mode, st.Airborne = 12345, 31.5, ModeHover, true
	st.Est.Roll, st.Est.P[4], st.Ctl.Rate[2].I = 0.01, 0.002, -0.03
	st.Mission.Plan, _ = ParseMission("takeoff:2m,hover:30s,land")
	st.Mission.Active, st.Mission.Index = true, 1
	b := AppendState(nil, &st)
	if len(b) != StateSize {
		t.Fatalf("encoded %d bytes, StateSize %d", len(b), StateSize)
	}
	var got State
	if err := DecodeState(b, &got); err != nil {
		t.Fatal(err)
	}
	if got != st {
		t.Fatal("round trip differs")
	}
	if v, err := StateSchema(b); err != nil || v != SchemaVersion {
		t.Fatalf("schema %v %v", v, err)
	}
	bad := append([]byte(nil), b...)
	bad[40] ^= 1
	if err := DecodeState(bad, &got); !errors.Is(err, ErrMalformed) {
		t.Fatalf("corrupted: %v", err)
	}
	bad = append([]byte(nil), b...)
	bad[4] = 2
	if err := DecodeState(bad, &got); !errors.Is(err, ErrSchema) {
		t.Fatalf("schema 2: %v", err)
	}
	if err := DecodeState(b[:len(b)-1], &got); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short: %v", err)
	}
}

func FuzzDecodeState(f *testing.F) {
	var st State
	f.Add(AppendState(nil, &st))
	st.Mode, st.Mission.Plan.N = ModeLand, 2
	f.Add(AppendState(nil, &st))
	f.Add([]byte("FCST"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s State
		if err := DecodeState(b, &s); err != nil {
			return
		}
		if !bytes.Equal(AppendState(nil, &s), b) {
			t.Fatal("decoded state re-encodes differently")
		}
		// A decoded state must be safe to step.
		p := DefaultParams()
		in := still(0, 0, [3]float64{})
		var out Outputs
		Step(&s, &p, &in, &out)
	})
}

func TestParseMission(t *testing.T) {
	m, err := ParseMission("takeoff:2m, hover:1m30s ;land # done")
	if err != nil {
		t.Fatal(err)
	}
	if m.N != 3 || m.Steps[0] != (MissionStep{StepTakeoff, 2}) || m.Steps[1] != (MissionStep{StepHover, 90}) || m.Steps[2].Kind != StepLand {
		t.Fatalf("%+v", m)
	}
	if s := m.String(); s != "takeoff:2m,hover:90s,land" {
		t.Fatalf("String %q", s)
	}
	for _, bad := range []string{"", "takeoff", "takeoff:-1m", "hover:x", "land:3", "fly:2", "takeoff:NaN"} {
		if _, err := ParseMission(bad); !errors.Is(err, ErrMission) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func BenchmarkStep(b *testing.B) {
	p := DefaultParams()
	var st State
	in := still(0, 0, [3]float64{})
	stepN(&st, &p, &in, 500)
	in.Cmd = Command{Kind: CmdTakeoff}
	var out Outputs
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		in.Accel[0] = 1e-6 * float64(i&7)
		in.BaroNew = i%10 == 0
		Step(&st, &p, &in, &out)
		in.Cmd = Command{}
	}
}

// The ground reference is a running mean of the barometer at rest, not an
// exponential filter seeded with the first sample: an error in it is an
// altitude offset for the whole flight.
func TestBaroGroundReferenceIsTheMeanAtRest(t *testing.T) {
	p := DefaultParams()
	var st State
	in := still(0, 0, [3]float64{})
	var out Outputs
	for i := range 41 {
		in.BaroNew = true
		in.BaroPa = 101325
		if i == 0 {
			in.BaroPa = 101335 // a first sample 10 Pa (0.8 m) off
		}
		Step(&st, &p, &in, &out)
	}
	// The mean of 41 samples is 10/41 ≈ 0.24 Pa off.
	if d := st.Est.BaroRef - 101325; math.Abs(d) > 0.3 {
		t.Fatalf("ground reference %.2f Pa off after 41 samples, want the mean (0.24)", d)
	}
	if sd := math.Sqrt(st.Est.P[0]); sd > p.AltBaroNoise/6 {
		t.Fatalf("ground reference std %.4f m after 41 samples", sd)
	}
}
