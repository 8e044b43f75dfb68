package physics

import (
	"math"
	"math/rand/v2"
)

// Params describes the airframe. DefaultParams gives a ~1.5 kg 450-class
// quad after PX4's Iris; any zero field of a Params passed to New is NOT
// replaced, so start from DefaultParams and change what you need.
type Params struct {
	Mass          float64 // kg
	Ixx, Iyy, Izz float64 // principal moments of inertia, kg·m²
	Arm           float64 // distance from the centre to each motor, m (arms at 45°)
	KF            float64 // thrust per motor = KF·ω², N/(rad/s)²
	KM            float64 // reaction torque per motor = KM·ω², N·m/(rad/s)²
	OmegaMax      float64 // motor speed at full throttle (u = 1), rad/s
	TauUp         float64 // motor time constant while speeding up, s
	TauDown       float64 // motor time constant while slowing down, s
	DragLin       float64 // linear drag on airspeed, N/(m/s)
	DragAng       float64 // angular drag on body rates, N·m/(rad/s)

	Gravity        float64 // m/s²
	GroundFriction float64 // Coulomb friction coefficient against horizontal sliding on the ground

	// Gusts, used only once Quad.EnableGusts is called.
	GustStd       float64 // standard deviation of each gust velocity component, m/s
	GustTau       float64 // correlation time of the gust velocity (first-order Gauss-Markov), s
	GustTorqueStd float64 // standard deviation of each gust torque component, N·m
}

// DefaultParams returns the Iris-like airframe: hover at about 55 % throttle.
func DefaultParams() Params {
	const kF = 5.84e-6 // Iris motorConstant
	return Params{
		Mass: 1.5,
		Ixx:  0.029, Iyy: 0.029, Izz: 0.055,
		Arm:            0.25,
		KF:             kF,
		KM:             0.06 * kF, // Iris momentConstant 0.06 m
		OmegaMax:       1450,      // hover ω ≈ 794 rad/s → u ≈ 0.547
		TauUp:          0.0125,
		TauDown:        0.025,
		DragLin:        0.30,
		DragAng:        0.004,
		Gravity:        9.80665,
		GroundFriction: 0.6,
		GustStd:        1.5,
		GustTau:        1.0,
		GustTorqueStd:  0.004,
	}
}

// State is the instantaneous state of the quad.
type State struct {
	Pos, Vel [3]float64 // world ENU, m and m/s; Pos[2] is altitude above ground
	Q        [4]float64 // attitude, body→world unit quaternion (w, x, y, z)
	Omega    [3]float64 // body rates, rad/s (FLU)
	Motor    [4]float64 // motor speeds, rad/s, indexed by PCA9685 channel
	OnGround bool
}

// Quad is the simulated airframe. It is not safe for concurrent use.
type Quad struct {
	P    Params
	S    State
	Wind [3]float64 // mean wind, world m/s

	// Gust is the current gust velocity (world, m/s) and GustTorque the
	// current gust torque (body, N·m); both stay zero unless gusts are enabled.
	Gust       [3]float64
	GustTorque [3]float64

	// Impact is the downward speed (m/s, ≥ 0) at the most recent touchdown;
	// Landed is true only for the Step in which the quad touched down.
	Impact float64
	Landed bool

	acc   [3]float64 // world acceleration over the last step, contact forces included
	gusts bool
	rng   *rand.Rand
}

// New returns a quad resting level on the ground at the origin, motors stopped.
func New(p Params) *Quad {
	q := &Quad{P: p}
	q.S.Q = [4]float64{1, 0, 0, 0}
	q.S.OnGround = true
	return q
}

// EnableGusts turns on the wind-gust model with a seeded generator, so a run
// is reproducible.
func (q *Quad) EnableGusts(seed uint64) {
	q.gusts = true
	q.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// motor positions in body FLU, unit arm at 45°, by channel, and yaw sign
// (reaction torque on the body) by channel.
var (
	motorX   = [4]float64{+1, -1, +1, -1}
	motorY   = [4]float64{-1, +1, +1, -1}
	motorYaw = [4]float64{-1, -1, +1, +1}
)

// Thrusts returns each motor's thrust in N, by channel.
func (q *Quad) Thrusts() (t [4]float64) {
	for i, w := range q.S.Motor {
		t[i] = q.P.KF * w * w
	}
	return t
}

// Step advances the model by dt seconds with ESC commands u (each clamped to
// [0, 1]) by PCA9685 channel. It allocates nothing.
func (q *Quad) Step(dt float64, u [4]float64) {
	if dt <= 0 {
		return
	}
	p := &q.P
	s := &q.S

	// Motors: first-order lag towards u·ω_max, exact for a constant target.
	var thrust, tx, ty, tz float64
	a := p.Arm * math.Sqrt2 / 2
	for i := range 4 {
		c := u[i]
		if !(c > 0) { // also catches NaN
			c = 0
		} else if c > 1 {
			c = 1
		}
		target := c * p.OmegaMax
		tau := p.TauUp
		if target < s.Motor[i] {
			tau = p.TauDown
		}
		if tau > 0 {
			s.Motor[i] += (target - s.Motor[i]) * (1 - math.Exp(-dt/tau))
		} else {
			s.Motor[i] = target
		}
		w2 := s.Motor[i] * s.Motor[i]
		f := p.KF * w2
		thrust += f
		tx += motorY[i] * a * f  // τ = r × (0,0,f): τx = y·f
		ty += -motorX[i] * a * f // τy = −x·f
		tz += motorYaw[i] * p.KM * w2
	}

	// Gusts: first-order Gauss-Markov velocity and white-ish torque, filtered.
	if q.gusts {
		alpha := 1.0
		if p.GustTau > 0 {
			alpha = math.Exp(-dt / p.GustTau)
		}
		k := math.Sqrt(1 - alpha*alpha)
		for i := range 3 {
			q.Gust[i] = alpha*q.Gust[i] + k*p.GustStd*q.rng.NormFloat64()
			q.GustTorque[i] = alpha*q.GustTorque[i] + k*p.GustTorqueStd*q.rng.NormFloat64()
		}
	}

	// Rotational dynamics (body frame): I ω̇ = τ − ω × Iω.
	w := s.Omega
	ix, iy, iz := p.Ixx, p.Iyy, p.Izz
	tx += q.GustTorque[0] - p.DragAng*w[0] - (w[1]*iz*w[2] - w[2]*iy*w[1])
	ty += q.GustTorque[1] - p.DragAng*w[1] - (w[2]*ix*w[0] - w[0]*iz*w[2])
	tz += q.GustTorque[2] - p.DragAng*w[2] - (w[0]*iy*w[1] - w[1]*ix*w[0])

	// Translational dynamics (world frame).
	bz := q.bodyZ()
	var f [3]float64
	for i := range 3 {
		air := s.Vel[i] - q.Wind[i] - q.Gust[i]
		f[i] = thrust*bz[i] - p.DragLin*air
	}
	f[2] -= p.Mass * p.Gravity

	vOld := s.Vel
	if s.OnGround && f[2] <= 0 {
		// Resting on the ground: the normal force cancels the vertical
		// force, the quad stays level (yaw kept), friction stops sliding.
		s.Pos[2] = 0
		s.Vel[2] = 0
		s.Omega = [3]float64{}
		q.level()
		fr := p.GroundFriction * (-f[2]) / p.Mass * dt
		for i := range 2 {
			s.Vel[i] += f[i] / p.Mass * dt
		}
		h := math.Hypot(s.Vel[0], s.Vel[1])
		if h <= fr {
			s.Vel[0], s.Vel[1] = 0, 0
		} else {
			s.Vel[0] -= s.Vel[0] / h * fr
			s.Vel[1] -= s.Vel[1] / h * fr
		}
		s.Pos[0] += s.Vel[0] * dt
		s.Pos[1] += s.Vel[1] * dt
		q.Landed = false
	} else {
		s.OnGround = false
		q.Landed = false
		// Semi-implicit Euler: velocity first, then position.
		for i := range 3 {
			s.Vel[i] += f[i] / p.Mass * dt
			s.Pos[i] += s.Vel[i] * dt
		}
		s.Omega[0] += tx / ix * dt
		s.Omega[1] += ty / iy * dt
		s.Omega[2] += tz / iz * dt
		q.integrateAttitude(dt)
		if s.Pos[2] <= 0 {
			q.Impact = -s.Vel[2]
			if q.Impact < 0 {
				q.Impact = 0
			}
			q.Landed = true
			s.OnGround = true
			s.Pos[2] = 0
			s.Vel[2] = 0
			s.Omega = [3]float64{}
			q.level()
		}
	}
	for i := range 3 {
		q.acc[i] = (s.Vel[i] - vOld[i]) / dt
	}
}

// integrateAttitude rotates Q by the body rates over dt (exact for constant ω).
func (q *Quad) integrateAttitude(dt float64) {
	s := &q.S
	wx, wy, wz := s.Omega[0], s.Omega[1], s.Omega[2]
	n := math.Sqrt(wx*wx + wy*wy + wz*wz)
	if n*dt < 1e-12 {
		return
	}
	h := n * dt / 2
	sn := math.Sin(h) / n
	d := [4]float64{math.Cos(h), wx * sn, wy * sn, wz * sn}
	a := s.Q
	r := [4]float64{
		a[0]*d[0] - a[1]*d[1] - a[2]*d[2] - a[3]*d[3],
		a[0]*d[1] + a[1]*d[0] + a[2]*d[3] - a[3]*d[2],
		a[0]*d[2] - a[1]*d[3] + a[2]*d[0] + a[3]*d[1],
		a[0]*d[3] + a[1]*d[2] - a[2]*d[1] + a[3]*d[0],
	}
	m := math.Sqrt(r[0]*r[0] + r[1]*r[1] + r[2]*r[2] + r[3]*r[3])
	for i := range r {
		r[i] /= m
	}
	s.Q = r
}

// level keeps only the yaw of the attitude.
func (q *Quad) level() {
	_, _, yaw := q.Euler()
	q.S.Q = [4]float64{math.Cos(yaw / 2), 0, 0, math.Sin(yaw / 2)}
}

// bodyZ is the body z axis expressed in the world frame.
func (q *Quad) bodyZ() [3]float64 {
	w, x, y, z := q.S.Q[0], q.S.Q[1], q.S.Q[2], q.S.Q[3]
	return [3]float64{
		2 * (x*z + w*y),
		2 * (y*z - w*x),
		1 - 2*(x*x+y*y),
	}
}

// SpecificForce is what an ideal accelerometer fixed to the body reads, in
// the body frame, m/s²: the acceleration over the last step minus gravity.
// Resting level it is (0, 0, +g).
func (q *Quad) SpecificForce() [3]float64 {
	v := [3]float64{q.acc[0], q.acc[1], q.acc[2] + q.P.Gravity}
	return q.ToBody(v)
}

// ToBody rotates a world vector into the body frame.
func (q *Quad) ToBody(v [3]float64) [3]float64 {
	w, x, y, z := q.S.Q[0], q.S.Q[1], q.S.Q[2], q.S.Q[3]
	// R^T v, with R the body→world rotation matrix.
	r00, r01, r02 := 1-2*(y*y+z*z), 2*(x*y-w*z), 2*(x*z+w*y)
	r10, r11, r12 := 2*(x*y+w*z), 1-2*(x*x+z*z), 2*(y*z-w*x)
	r20, r21, r22 := 2*(x*z-w*y), 2*(y*z+w*x), 1-2*(x*x+y*y)
	return [3]float64{
		r00*v[0] + r10*v[1] + r20*v[2],
		r01*v[0] + r11*v[1] + r21*v[2],
		r02*v[0] + r12*v[1] + r22*v[2],
	}
}

// Euler returns the ZYX Euler angles of the attitude, radians.
func (q *Quad) Euler() (roll, pitch, yaw float64) {
	w, x, y, z := q.S.Q[0], q.S.Q[1], q.S.Q[2], q.S.Q[3]
	roll = math.Atan2(2*(w*x+y*z), 1-2*(x*x+y*y))
	sp := 2 * (w*y - z*x)
	if sp > 1 {
		sp = 1
	} else if sp < -1 {
		sp = -1
	}
	pitch = math.Asin(sp)
	yaw = math.Atan2(2*(w*z+x*y), 1-2*(y*y+z*z))
	return roll, pitch, yaw
}

// Tilt is the angle between the body z axis and the world vertical, radians.
func (q *Quad) Tilt() float64 {
	c := q.bodyZ()[2]
	if c > 1 {
		c = 1
	} else if c < -1 {
		c = -1
	}
	return math.Acos(c)
}

// HoverThrottle is the ESC command, equal on all four motors, whose thrust
// balances the weight.
func (q *Quad) HoverThrottle() float64 {
	return math.Sqrt(q.P.Mass*q.P.Gravity/(4*q.P.KF)) / q.P.OmegaMax
}
