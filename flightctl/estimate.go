package flightctl

import "math"

// estimate runs the attitude filter (Mahony, with gyro bias), the gyro
// calibration at rest, and the altitude filter (a 3-state Kalman filter over
// altitude, vertical speed and vertical accelerometer bias, predicted with
// the accelerometer every tick and corrected with each new barometer sample).
func estimate(st *State, p *Params, in *Inputs, dt float64, imuOK, baroOK bool, baroGap float64, out *Outputs) {
	e := &st.Est
	g := p.Gravity
	if imuOK {
		if st.Mode == ModeDisarmed {
			calibrate(st, p, in, dt, out)
		}
		var a, w [3]float64
		for i := range 3 {
			a[i] = in.Accel[i] - e.AccTrim[i]
			w[i] = in.Gyro[i] - e.GyroBias[i]
		}
		kp, ki := p.MahonyKp, p.MahonyKi
		if st.Mode == ModeDisarmed {
			// Still on the ground with the motors off: align fast. Once the
			// motors run, wind and ground contact push the accelerometer
			// around, so trust the (calibrated) gyro.
			kp, ki = p.MahonyKpGround, 0
		}
		if !e.Calibrated {
			ki = 0
		}
		mahony(e, a, w, kp, ki, p.AccGate, g, dt, p.Schema == SchemaV2)

		// Low-passed, bias-corrected rates for the rate loop.
		alpha := lowpassAlpha(p.GyroCutoffHz, dt)
		for i := range 3 {
			e.Rate[i] += alpha * (in.Gyro[i] - e.GyroBias[i] - e.Rate[i])
		}

		// Vertical acceleration in the world frame, gravity removed.
		sr, cr := math.Sincos(e.Roll)
		sp, cp := math.Sincos(e.Pitch)
		e.AccZ = -sp*a[0] + sr*cp*a[1] + cr*cp*a[2] - g
	} else {
		e.AccZ = 0 // predict on the model alone
	}

	// Altitude. While disarmed the filter is held at rest and the ground
	// reference is estimated from the barometer: a running mean (a 1-D
	// Kalman filter whose variance, in m², is kept in P[0] — at rest the
	// altitude's uncertainty is the reference's), forgetting with
	// BaroRefTau so that it follows the weather on a long wait. Every
	// barometric altitude in the air is relative to this reference, so its
	// error is an offset of the whole flight: an exponential filter seeded
	// with the first sample (as before) left up to 3 cm of it.
	if baroOK {
		if st.Mode == ModeDisarmed {
			r := p.AltBaroNoise * p.AltBaroNoise
			if e.BaroRef == 0 {
				e.BaroRef, e.P[0] = in.BaroPa, r
			} else {
				v := e.P[0]
				k := v / (v + r)
				if p.BaroRefTau > 0 {
					k = math.Max(k, 1-math.Exp(-baroGap/p.BaroRefTau))
				}
				e.BaroRef += k * (in.BaroPa - e.BaroRef)
				e.P[0] = (1 - k) * v
			}
		}
		if e.BaroRef == 0 {
			e.BaroRef = in.BaroPa
		}
		e.BaroAlt = altitudeFromPressure(in.BaroPa, e.BaroRef)
	}
	if st.Mode == ModeDisarmed {
		resetAltFilter(e, p)
		return
	}
	kfPredict(e, p, dt, imuOK)
	if baroOK {
		kfUpdate(e, e.BaroAlt, p.AltBaroNoise*p.AltBaroNoise)
	}
}

func altitudeFromPressure(pa, ref float64) float64 {
	if !(pa > 0) || !(ref > 0) {
		return 0
	}
	return 44330.77 * (1 - math.Pow(pa/ref, 0.190263))
}

// resetAltFilter holds the altitude filter at rest on the ground. P[0] is
// the ground reference's variance (see estimate); with no reference yet, it
// is large.
func resetAltFilter(e *EstState, p *Params) {
	e.Alt, e.VZ = 0, 0
	b := e.AccBias
	v := e.P[0]
	if e.BaroRef == 0 || !(v > 0) || v > 0.01 {
		v = 0.01
	}
	e.P = [9]float64{}
	e.P[0] = v
	e.P[4] = 0.01
	e.P[8] = 0.02 * 0.02
	e.AccBias = b
}

func kfPredict(e *EstState, p *Params, dt float64, imuOK bool) {
	a := e.AccZ - e.AccBias
	e.Alt += e.VZ*dt + 0.5*a*dt*dt
	e.VZ += a * dt
	// F = [[1, dt, -dt²/2], [0, 1, -dt], [0, 0, 1]]; P = F P Fᵀ + Q.
	h := 0.5 * dt * dt
	P := &e.P
	var fp [9]float64
	for j := range 3 {
		fp[0*3+j] = P[0*3+j] + dt*P[1*3+j] - h*P[2*3+j]
		fp[1*3+j] = P[1*3+j] - dt*P[2*3+j]
		fp[2*3+j] = P[2*3+j]
	}
	for i := range 3 {
		P[i*3+0] = fp[i*3+0] + dt*fp[i*3+1] - h*fp[i*3+2]
		P[i*3+1] = fp[i*3+1] - dt*fp[i*3+2]
		P[i*3+2] = fp[i*3+2]
	}
	q := p.AltAccNoise * p.AltAccNoise
	if !imuOK {
		// Predicting without an accelerometer: let the barometer lead.
		q = p.BlindAccNoise * p.BlindAccNoise
	}
	P[0] += q * h * h
	P[1] += q * h * dt
	P[3] += q * h * dt
	P[4] += q * dt * dt
	P[8] += p.AltBiasWalk * p.AltBiasWalk * dt
}

func kfUpdate(e *EstState, z, r float64) {
	P := &e.P
	s := P[0] + r
	if !(s > 0) {
		return
	}
	k0, k1, k2 := P[0]/s, P[3]/s, P[6]/s
	y := z - e.Alt
	e.Alt += k0 * y
	e.VZ += k1 * y
	e.AccBias += k2 * y
	// P = (I - K H) P with H = [1 0 0].
	r0 := [3]float64{P[0], P[1], P[2]}
	for j := range 3 {
		P[0*3+j] -= k0 * r0[j]
		P[1*3+j] -= k1 * r0[j]
		P[2*3+j] -= k2 * r0[j]
	}
}

// calibrate measures the gyro bias (and the level trim) over windows in which
// the drone stays still.
func calibrate(st *State, p *Params, in *Inputs, dt float64, out *Outputs) {
	e := &st.Est
	an := norm3(in.Accel)
	if math.Abs(an-p.Gravity) > p.GyroCalAccTol {
		resetCal(e)
		return
	}
	for i := range 3 {
		e.CalGyroSum[i] += in.Gyro[i]
		e.CalGyroSq[i] += in.Gyro[i] * in.Gyro[i]
		e.CalAccSum[i] += in.Accel[i]
	}
	e.CalN++
	e.CalTime += dt
	if e.CalTime < p.GyroCalTime || e.CalN < 10 {
		return
	}
	n := float64(e.CalN)
	var mean, acc [3]float64
	ok := true
	for i := range 3 {
		mean[i] = e.CalGyroSum[i] / n
		acc[i] = e.CalAccSum[i] / n
		v := e.CalGyroSq[i]/n - mean[i]*mean[i]
		if v > p.GyroCalMaxStd*p.GyroCalMaxStd {
			ok = false
		}
	}
	resetCal(e)
	if !ok {
		return
	}
	e.GyroBias = mean
	// The accelerometer's magnitude at rest is g: what is left is the
	// vertical bias, which the altitude filter would otherwise have to learn
	// in the air.
	e.AccTrim[2] = norm3(acc) - p.Gravity
	if p.LevelTrim {
		tilt := math.Atan2(math.Hypot(acc[0], acc[1]), acc[2])
		if tilt < p.ArmMaxTilt {
			e.AccTrim[0], e.AccTrim[1] = acc[0], acc[1]
			// Start the alignment from the trimmed accelerometer.
			e.Roll, e.Pitch = 0, 0
			e.Q = [4]float64{} // schema 2: re-derived from the Euler angles
		}
	}
	if !e.Calibrated {
		e.Calibrated = true
		out.Events |= EvCalibrated
	}
}

func resetCal(e *EstState) {
	e.CalTime, e.CalN = 0, 0
	e.CalGyroSum, e.CalGyroSq, e.CalAccSum = [3]float64{}, [3]float64{}, [3]float64{}
}

// mahony updates the Euler attitude with the corrected body rates w and the
// accelerometer a (Mahony's explicit complementary filter). The attitude is
// kept as Euler angles (schema 1) and worked on as a quaternion.
//
// With quat (schema 2) the filter integrates the quaternion e.Q kept in the
// state, and the Euler angles are derived from it; a zero e.Q is taken from
// the Euler angles first.
func mahony(e *EstState, a, w [3]float64, kp, ki, gate, g, dt float64, quat bool) {
	var q0, q1, q2, q3 float64
	if quat && e.Q != ([4]float64{}) {
		q0, q1, q2, q3 = e.Q[0], e.Q[1], e.Q[2], e.Q[3]
	} else {
		q0, q1, q2, q3 = eulerToQuat(e.Roll, e.Pitch, e.Yaw)
	}
	an := norm3(a)
	if an > 0 && math.Abs(an-g) < gate {
		ax, ay, az := a[0]/an, a[1]/an, a[2]/an
		// Estimated direction of gravity ("up") in the body frame.
		vx := 2 * (q1*q3 - q0*q2)
		vy := 2 * (q0*q1 + q2*q3)
		vz := q0*q0 - q1*q1 - q2*q2 + q3*q3
		ex := ay*vz - az*vy
		ey := az*vx - ax*vz
		ez := ax*vy - ay*vx
		if ki > 0 {
			e.GyroBias[0] -= ki * ex * dt
			e.GyroBias[1] -= ki * ey * dt
			e.GyroBias[2] -= ki * ez * dt
			w[0] += ki * ex * dt
			w[1] += ki * ey * dt
			w[2] += ki * ez * dt
		}
		w[0] += kp * ex
		w[1] += kp * ey
		w[2] += kp * ez
		e.Aligned = e.Aligned || math.Abs(ex)+math.Abs(ey) < 0.01
	}
	// q̇ = ½ q ⊗ (0, w)
	hx, hy, hz := 0.5*w[0]*dt, 0.5*w[1]*dt, 0.5*w[2]*dt
	n0 := q0 - q1*hx - q2*hy - q3*hz
	n1 := q1 + q0*hx + q2*hz - q3*hy
	n2 := q2 + q0*hy - q1*hz + q3*hx
	n3 := q3 + q0*hz + q1*hy - q2*hx
	m := math.Sqrt(n0*n0 + n1*n1 + n2*n2 + n3*n3)
	if !(m > 0) || math.IsInf(m, 0) {
		return
	}
	n0, n1, n2, n3 = n0/m, n1/m, n2/m, n3/m
	if quat {
		e.Q = [4]float64{n0, n1, n2, n3}
	}
	e.Roll, e.Pitch, e.Yaw = quatToEuler(n0, n1, n2, n3)
}

func eulerToQuat(roll, pitch, yaw float64) (w, x, y, z float64) {
	sr, cr := math.Sincos(roll / 2)
	sp, cp := math.Sincos(pitch / 2)
	sy, cy := math.Sincos(yaw / 2)
	w = cr*cp*cy + sr*sp*sy
	x = sr*cp*cy - cr*sp*sy
	y = cr*sp*cy + sr*cp*sy
	z = cr*cp*sy - sr*sp*cy
	return
}

func quatToEuler(w, x, y, z float64) (roll, pitch, yaw float64) {
	roll = math.Atan2(2*(w*x+y*z), 1-2*(x*x+y*y))
	s := 2 * (w*y - z*x)
	if s > 1 {
		s = 1
	} else if s < -1 {
		s = -1
	}
	pitch = math.Asin(s)
	yaw = math.Atan2(2*(w*z+x*y), 1-2*(y*y+z*z))
	return
}

func norm3(v [3]float64) float64 { return math.Sqrt(v[0]*v[0] + v[1]*v[1] + v[2]*v[2]) }

func lowpassAlpha(fc, dt float64) float64 {
	if fc <= 0 {
		return 1
	}
	rc := 1 / (2 * math.Pi * fc)
	return dt / (dt + rc)
}

// tilt is the angle between the body z axis and the vertical.
func tilt(roll, pitch float64) float64 {
	c := math.Cos(roll) * math.Cos(pitch)
	if c > 1 {
		c = 1
	} else if c < -1 {
		c = -1
	}
	return math.Acos(c)
}
