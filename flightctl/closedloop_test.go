package flightctl

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/inflight-ota/inflight/sim/physics"
)

// A test-only closed loop against sim/physics with sensor models like the
// bench drone's (bias, noise, first-order DLPF, 16-bit quantisation, 25 Hz
// barometer). The bench figures come from package bench; this is for fast
// tuning and regression.

type loopOpts struct {
	mission   string
	gusts     bool
	seed      uint64
	maxTime   float64
	rate      float64
	params    *Params
	imuFault  func(t float64, in *Inputs) // may corrupt the sample
	baroFault func(t float64, in *Inputs)
	onTick    func(t float64, st *State, q *physics.Quad)
}

type loopResult struct {
	crashed, landed      bool
	altRMSE, attRMS      float64 // over the steady hover window
	maxAtt               float64 // deg, while airborne
	hoverN               int
	endMode              Mode
	endReason            Reason
	maxAlt, time         float64
	estAltErr, estAttErr float64 // rms estimator errors in hover
}

func flyLoop(t testing.TB, o loopOpts) loopResult {
	p := DefaultParams()
	if o.params != nil {
		p = *o.params
	}
	if o.rate == 0 {
		o.rate = 400
	}
	if o.maxTime == 0 {
		o.maxTime = 60
	}
	m, err := ParseMission(o.mission)
	if err != nil {
		t.Fatal(err)
	}
	q := physics.New(physics.DefaultParams())
	if o.gusts {
		q.EnableGusts(o.seed)
	}
	rng := rand.New(rand.NewPCG(o.seed, 7))
	const g0 = 9.80665
	gyroBias := [3]float64{deg(0.4), deg(-0.25), deg(0.15)}
	accBias := [3]float64{0.012 * g0, -0.008 * g0, 0.02 * g0}
	sa := 400e-6 * g0 * math.Sqrt(44*math.Pi/2)
	sg := deg(0.005) * math.Sqrt(42*math.Pi/2)
	var st State
	var in Inputs
	var out Outputs
	dt := 1 / o.rate
	const sub = 5
	hdt := dt / sub
	var u [4]float64
	var accF, gyroF [3]float64
	var res loopResult
	var hoverStart = -1.0
	var sumAlt, sumAtt, sumEA, sumEAtt float64
	baroNext := 0.0
	baroIIR := 0.0
	in.Cmd = Command{Kind: CmdMission, Mission: m}
	tm := 0.0
	for tm < o.maxTime {
		for range sub {
			q.Step(hdt, u)
			// first-order DLPF at ~44 Hz
			a := 1 - math.Exp(-hdt*2*math.Pi*44)
			sf := q.SpecificForce()
			for i := range 3 {
				accF[i] += a * (sf[i] - accF[i])
				gyroF[i] += a * (q.S.Omega[i] - gyroF[i])
			}
			if q.Landed && q.Impact > 1 { // as the bench drone
				res.crashed = true
			}
		}
		tm += dt
		for i := range 3 {
			in.Accel[i] = math.Round((accF[i]+accBias[i]+sa*rng.NormFloat64())/g0*4096) / 4096 * g0
			in.Gyro[i] = math.Round((gyroF[i]+gyroBias[i]+sg*rng.NormFloat64())*180/math.Pi*65.5) / 65.5 * math.Pi / 180
		}
		in.IMUErr = false
		in.BaroNew = false
		if tm >= baroNext {
			// As the bench's BMP280 at hw/baro's defaults: 16× pressure
			// oversampling (2.6 Pa/√16 of noise), the chip's IIR filter
			// with coefficient 4, a sample every 40 ms.
			baroNext += 0.04
			h := q.S.Pos[2]
			pa := 101325*math.Pow(1-2.25577e-5*h, 5.25588) + 2.6/4*rng.NormFloat64()
			if baroIIR == 0 {
				baroIIR = pa
			}
			baroIIR += (pa - baroIIR) / 4
			in.BaroPa = baroIIR
			in.BaroNew = true
		}
		in.Dt = dt
		if o.imuFault != nil {
			o.imuFault(tm, &in)
		}
		if o.baroFault != nil {
			o.baroFault(tm, &in)
		}
		Step(&st, &p, &in, &out)
		in.Cmd = Command{}
		for i := range 4 {
			u[i] = (out.PulseUS[i] - 1000) / 1000
		}
		if o.onTick != nil {
			o.onTick(tm, &st, q)
		}
		roll, pitch, _ := q.Euler()
		att := math.Hypot(roll, pitch) * 180 / math.Pi
		if !q.S.OnGround {
			res.maxAtt = math.Max(res.maxAtt, att)
		}
		res.maxAlt = math.Max(res.maxAlt, q.S.Pos[2])
		if st.Mode == ModeHover && st.Mission.Active && st.Mission.Plan.Steps[st.Mission.Index].Kind == StepHover {
			if hoverStart < 0 {
				hoverStart = tm
			}
			if tm-hoverStart > 3 {
				d := q.S.Pos[2] - st.Ctl.TargetAlt
				sumAlt += d * d
				sumAtt += att * att
				ea := st.Est.Alt - q.S.Pos[2]
				sumEA += ea * ea
				er, ep := st.Est.Roll-roll, st.Est.Pitch-pitch
				sumEAtt += (er*er + ep*ep) * (180 / math.Pi) * (180 / math.Pi)
				res.hoverN++
			}
		}
		if res.crashed || q.Tilt() > math.Pi/2 {
			res.crashed = true
			break
		}
		if st.Mission.Done && st.Mode == ModeDisarmed && q.S.OnGround {
			res.landed = true
			break
		}
		if !st.Mission.Active && !st.Mission.Done && st.Mode == ModeDisarmed && tm > 5 {
			break
		}
	}
	// Let a drone disarmed in the air fall: the crash must show.
	for i := 0; i < 3000 && !res.crashed; i++ {
		q.Step(0.001, [4]float64{})
		if q.Landed && q.Impact > 1 {
			res.crashed = true
		}
	}
	if res.hoverN > 0 {
		n := float64(res.hoverN)
		res.altRMSE = math.Sqrt(sumAlt / n)
		res.attRMS = math.Sqrt(sumAtt / n)
		res.estAltErr = math.Sqrt(sumEA / n)
		res.estAttErr = math.Sqrt(sumEAtt / n)
	}
	res.endMode, res.endReason, res.time = st.Mode, st.Reason, tm
	return res
}

func TestClosedLoopHover(t *testing.T) {
	for _, gusts := range []bool{false, true} {
		for seed := uint64(1); seed <= 3; seed++ {
			r := flyLoop(t, loopOpts{mission: "takeoff:2m,hover:15s,land", gusts: gusts, seed: seed})
			t.Logf("gusts=%v seed=%d crashed=%v landed=%v altRMSE=%.3f attRMS=%.2f maxAtt=%.1f estAlt=%.3f estAtt=%.2f end=%v/%v t=%.1f maxAlt=%.2f",
				gusts, seed, r.crashed, r.landed, r.altRMSE, r.attRMS, r.maxAtt, r.estAltErr, r.estAttErr, r.endMode, r.endReason, r.time, r.maxAlt)
			altMax, attMax := 0.06, 1.0 // the bench figure (≤ 0.05) comes from package bench
			if gusts {
				altMax, attMax = 0.15, 2.5
			}
			if r.crashed || !r.landed || r.altRMSE > altMax || r.attRMS > attMax || r.hoverN == 0 {
				t.Errorf("gusts=%v seed=%d: crashed=%v landed=%v altRMSE=%.3f attRMS=%.2f", gusts, seed, r.crashed, r.landed, r.altRMSE, r.attRMS)
			}
		}
	}
}
