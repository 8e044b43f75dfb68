package physics

import (
	"math"
	"testing"
)

const dt = 0.001

func all(u float64) [4]float64 { return [4]float64{u, u, u, u} }

// airborne returns a quad released at altitude z with motors already at the
// hover speed.
func airborne(z float64) *Quad {
	q := New(DefaultParams())
	h := q.HoverThrottle()
	q.S.Pos[2] = z
	q.S.OnGround = false
	for i := range q.S.Motor {
		q.S.Motor[i] = h * q.P.OmegaMax
	}
	return q
}

func TestDefaultHoverThrottleIsMidRange(t *testing.T) {
	q := New(DefaultParams())
	if h := q.HoverThrottle(); h < 0.5 || h > 0.6 {
		t.Fatalf("hover throttle %.3f, want 0.50..0.60", h)
	}
}

func TestFreeFall(t *testing.T) {
	p := DefaultParams()
	p.DragLin = 0
	q := New(p)
	q.S.Pos[2] = 100
	q.S.OnGround = false
	for range 1000 {
		q.Step(dt, all(0))
	}
	want := 100 - 0.5*p.Gravity*1.0
	if math.Abs(q.S.Pos[2]-want) > 0.02 {
		t.Fatalf("after 1 s of free fall z = %.3f, want %.3f", q.S.Pos[2], want)
	}
	if math.Abs(q.S.Vel[2]+p.Gravity) > 0.01 {
		t.Fatalf("vz = %.3f, want %.3f", q.S.Vel[2], -p.Gravity)
	}
	sf := q.SpecificForce()
	if n := math.Sqrt(sf[0]*sf[0] + sf[1]*sf[1] + sf[2]*sf[2]); n > 0.01 {
		t.Fatalf("specific force in free fall %v, want ~0", sf)
	}
}

func TestHoverThrottleHoldsAltitude(t *testing.T) {
	q := airborne(10)
	u := all(q.HoverThrottle())
	for range 5000 {
		q.Step(dt, u)
	}
	if math.Abs(q.S.Pos[2]-10) > 0.01 || math.Abs(q.S.Vel[2]) > 0.01 {
		t.Fatalf("after 5 s at hover throttle z=%.4f vz=%.4f, want 10, 0", q.S.Pos[2], q.S.Vel[2])
	}
	r, p, _ := q.Euler()
	if math.Abs(r) > 1e-9 || math.Abs(p) > 1e-9 {
		t.Fatalf("attitude drifted: roll %g pitch %g", r, p)
	}
	sf := q.SpecificForce()
	if math.Abs(sf[2]-q.P.Gravity) > 0.01 {
		t.Fatalf("specific force z %.3f in hover, want g", sf[2])
	}
}

// More thrust on the left motors (channels 1 and 2, body +y) must roll the
// quad positive: right wing down, left up (right-hand rule about +x), and
// then it accelerates towards body −y (right).
func TestDifferentialThrustRollsPerConventions(t *testing.T) {
	q := airborne(10)
	h := q.HoverThrottle()
	u := [4]float64{h - 0.02, h + 0.02, h + 0.02, h - 0.02}
	for range 200 {
		q.Step(dt, u)
	}
	roll, pitch, _ := q.Euler()
	if roll <= 0.01 || math.Abs(pitch) > 1e-6 {
		t.Fatalf("left motors stronger: roll %.4f pitch %.4f, want roll > 0, pitch 0", roll, pitch)
	}
	if q.S.Omega[0] <= 0 {
		t.Fatalf("roll rate %.3f, want > 0", q.S.Omega[0])
	}

	// Front motors (channels 0 and 2, body +x) stronger: nose up, which is
	// negative pitch about +y (FLU).
	q = airborne(10)
	u = [4]float64{h + 0.02, h - 0.02, h + 0.02, h - 0.02}
	for range 200 {
		q.Step(dt, u)
	}
	roll, pitch, _ = q.Euler()
	if pitch >= -0.01 || math.Abs(roll) > 1e-6 {
		t.Fatalf("front motors stronger: roll %.4f pitch %.4f, want pitch < 0", roll, pitch)
	}
}

// Channels 2 and 3 spin clockwise, so their reaction torque is positive yaw
// (nose left, counter-clockwise seen from above).
func TestYawTorqueSign(t *testing.T) {
	q := airborne(10)
	h := q.HoverThrottle()
	u := [4]float64{h - 0.03, h - 0.03, h + 0.03, h + 0.03}
	for range 300 {
		q.Step(dt, u)
	}
	_, _, yaw := q.Euler()
	if yaw <= 0.001 || q.S.Omega[2] <= 0 {
		t.Fatalf("CW motors faster: yaw %.4f rate %.4f, want both > 0", yaw, q.S.Omega[2])
	}
	r, p, _ := q.Euler()
	if math.Abs(r) > 1e-6 || math.Abs(p) > 1e-6 {
		t.Fatalf("pure yaw command tilted the quad: roll %g pitch %g", r, p)
	}
}

func TestMotorLag(t *testing.T) {
	p := DefaultParams()
	q := New(p)
	// One time constant up reaches 1-1/e of the target.
	n := int(math.Round(p.TauUp / dt))
	for range n {
		q.Step(dt, all(1))
	}
	want := p.OmegaMax * (1 - math.Exp(-float64(n)*dt/p.TauUp))
	if got := q.S.Motor[0]; math.Abs(got-want)/want > 0.01 {
		t.Fatalf("after τ_up ω = %.1f, want %.1f", got, want)
	}
	// Down is slower than up.
	for range 500 {
		q.Step(dt, all(1))
	}
	top := q.S.Motor[0]
	n = int(math.Round(p.TauDown / dt))
	for range n {
		q.Step(dt, all(0))
	}
	want = top * math.Exp(-float64(n)*dt/p.TauDown)
	if got := q.S.Motor[0]; math.Abs(got-want)/want > 0.01 {
		t.Fatalf("after τ_down ω = %.1f, want %.1f", got, want)
	}
	// Commands outside [0,1] are clamped.
	q = New(p)
	for range 1000 {
		q.Step(dt, [4]float64{2, -1, math.NaN(), 1})
	}
	if q.S.Motor[0] > p.OmegaMax+1e-9 || q.S.Motor[1] != 0 || q.S.Motor[2] != 0 {
		t.Fatalf("clamping failed: %v", q.S.Motor)
	}
}

func TestGroundContact(t *testing.T) {
	q := New(DefaultParams())
	// Idle motors: stays on the ground, level, not sinking, accelerometer +g.
	for range 1000 {
		q.Step(dt, all(0.3))
	}
	if !q.S.OnGround || q.S.Pos[2] != 0 || q.S.Vel[2] != 0 {
		t.Fatalf("below hover thrust it left the ground: %+v", q.S)
	}
	if sf := q.SpecificForce(); math.Abs(sf[2]-q.P.Gravity) > 1e-9 || sf[0] != 0 || sf[1] != 0 {
		t.Fatalf("resting specific force %v, want (0,0,g)", sf)
	}
	// Full throttle: takes off.
	for range 500 {
		q.Step(dt, all(0.8))
	}
	if q.S.OnGround || q.S.Pos[2] <= 0.1 {
		t.Fatalf("at 80%% throttle still on the ground: z=%.3f", q.S.Pos[2])
	}
	// Cut motors: falls, lands, does not sink, records the impact speed.
	landed := false
	for range 5000 {
		q.Step(dt, all(0))
		if q.Landed {
			landed = true
		}
		if q.S.Pos[2] < 0 {
			t.Fatalf("sank to z=%g", q.S.Pos[2])
		}
	}
	if !landed || !q.S.OnGround || q.Impact < 1 {
		t.Fatalf("landed=%v onGround=%v impact=%.2f, want a landing faster than 1 m/s", landed, q.S.OnGround, q.Impact)
	}

	// Tilted touchdown rests level with yaw kept; friction stops sliding.
	q = airborne(0.05)
	q.S.Vel = [3]float64{3, 0, -0.5}
	q.S.Q = [4]float64{math.Cos(0.1), math.Sin(0.1), 0, 0} // 11.5° roll, yaw 0
	for range 2000 {
		q.Step(dt, all(0))
	}
	roll, pitch, _ := q.Euler()
	if !q.S.OnGround || roll != 0 || pitch != 0 {
		t.Fatalf("after touchdown roll %g pitch %g on ground %v, want level", roll, pitch, q.S.OnGround)
	}
	if q.S.Vel[0] != 0 || q.S.Vel[1] != 0 {
		t.Fatalf("still sliding at %v after 2 s", q.S.Vel)
	}
}

func TestGustsAreSeededAndDisturb(t *testing.T) {
	run := func(seed uint64) *Quad {
		q := airborne(10)
		q.EnableGusts(seed)
		u := all(q.HoverThrottle())
		for range 3000 {
			q.Step(dt, u)
		}
		return q
	}
	a, b, c := run(1), run(1), run(2)
	if a.S != b.S {
		t.Fatalf("same seed, different states")
	}
	if a.S == c.S {
		t.Fatalf("different seeds, same state")
	}
	if math.Hypot(a.S.Pos[0], a.S.Pos[1]) < 0.01 {
		t.Fatalf("gusts did not move the quad: %v", a.S.Pos)
	}
}

func TestStepAllocatesNothing(t *testing.T) {
	q := airborne(10)
	q.EnableGusts(7)
	u := all(q.HoverThrottle())
	if n := testing.AllocsPerRun(1000, func() { q.Step(dt, u) }); n != 0 {
		t.Fatalf("Step allocates %.1f times per call", n)
	}
}

func BenchmarkStep(b *testing.B) {
	q := airborne(10)
	q.EnableGusts(7)
	u := all(q.HoverThrottle())
	b.ReportAllocs()
	for b.Loop() {
		q.Step(dt, u)
	}
}
