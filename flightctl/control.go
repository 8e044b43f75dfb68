package flightctl

import "math"

// Mixer sign tables by PCA9685 channel (docs/conventions.md): channel 0 front
// right CCW, 1 rear left CCW, 2 front left CW, 3 rear right CW. A positive
// roll command raises the left motors (τx = y·f), a positive pitch command
// the rear ones (τy = −x·f), a positive yaw command the clockwise ones (their
// reaction torque on the body is positive).
var (
	mixRoll  = [4]float64{-1, +1, +1, -1}
	mixPitch = [4]float64{-1, +1, -1, +1}
	mixYaw   = [4]float64{-1, -1, +1, +1}
)

// Saturation bits (CtlState.SatHi/SatLo).
const (
	satRoll uint8 = 1 << iota
	satPitch
	satYaw
	satThrust
)

// Mix turns a collective command and roll, pitch and yaw commands (ESC units)
// into four ESC commands in [lo, hi]. Attitude has priority: roll and pitch
// are scaled down only if their spread alone exceeds the range, yaw is
// limited to what is left, and the collective is shifted to fit. It returns
// which axes were limited upwards and downwards.
func Mix(coll, roll, pitch, yaw, lo, hi float64) (u [4]float64, satHi, satLo uint8) {
	avail := hi - lo
	var rp [4]float64
	rpMin, rpMax := math.Inf(1), math.Inf(-1)
	for i := range 4 {
		rp[i] = roll*mixRoll[i] + pitch*mixPitch[i]
		rpMin = math.Min(rpMin, rp[i])
		rpMax = math.Max(rpMax, rp[i])
	}
	if spread := rpMax - rpMin; spread > avail && spread > 0 {
		k := avail / spread
		for i := range rp {
			rp[i] *= k
		}
		rpMin *= k
		rpMax *= k
		satHi, satLo = satFlags(satHi, satLo, satRoll, roll)
		satHi, satLo = satFlags(satHi, satLo, satPitch, pitch)
	}
	ylim := math.Max(0, (avail-(rpMax-rpMin))/2)
	if yaw > ylim {
		yaw = ylim
		satHi |= satYaw
	} else if yaw < -ylim {
		yaw = -ylim
		satLo |= satYaw
	}
	dMin, dMax := math.Inf(1), math.Inf(-1)
	var d [4]float64
	for i := range 4 {
		d[i] = rp[i] + yaw*mixYaw[i]
		dMin = math.Min(dMin, d[i])
		dMax = math.Max(dMax, d[i])
	}
	if c := hi - dMax; coll > c {
		coll = c
		satHi |= satThrust
	}
	if c := lo - dMin; coll < c {
		coll = c
		satLo |= satThrust
	}
	for i := range 4 {
		u[i] = clamp(coll+d[i], lo, hi)
	}
	return u, satHi, satLo
}

func satFlags(hiBits, loBits, bit uint8, cmd float64) (uint8, uint8) {
	if cmd > 0 {
		hiBits |= bit
	} else if cmd < 0 {
		loBits |= bit
	}
	return hiBits, loBits
}

// PIDStep runs one PID step: proportional on the error, derivative on the
// measurement (low-passed), integral with anti-windup: it does not integrate
// when frozen or when the output was saturated last tick in the direction the
// error pushes, and it is clamped to ±ILimit. ff is added to the output,
// which is clamped to ±OutLimit (when set).
func PIDStep(s *PIDState, g *PIDGains, sp, meas, ff, dt float64, freeze, satHi, satLo bool) float64 {
	e := sp - meas
	d := 0.0
	if dt > 0 {
		d = -(meas - s.PrevMeas) / dt
	}
	s.PrevMeas = meas
	s.D += lowpassAlpha(g.DCutoffHz, dt) * (d - s.D)
	if !freeze && !(satHi && e > 0) && !(satLo && e < 0) {
		s.I += g.Ki * e * dt
	}
	s.I = clamp(s.I, -g.ILimit, g.ILimit)
	out := g.Kp*e + s.I + g.Kd*s.D + ff
	if g.OutLimit > 0 {
		out = clamp(out, -g.OutLimit, g.OutLimit)
	}
	return out
}

// resetPID starts a loop afresh at measurement meas.
func resetPID(s *PIDState, meas float64) { *s = PIDState{PrevMeas: meas} }

func clamp(v, lo, hi float64) float64 {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	if v != v { // NaN
		return lo
	}
	return v
}

func wrapPi(a float64) float64 {
	if a > math.Pi || a < -math.Pi {
		a = math.Remainder(a, 2*math.Pi)
	}
	return a
}

// fly computes the motor commands in the flying modes.
func fly(st *State, p *Params, dt float64, imuOK bool) [4]float64 {
	e, k := &st.Est, &st.Ctl
	g := p.Gravity
	blind := st.Health.IMUFails >= p.IMUFailTicks

	// Altitude → climb rate → vertical acceleration → collective.
	switch st.Mode {
	case ModeTakeoff, ModeHover:
		ramp := p.TakeoffRate * dt
		ffv := 0.0
		switch d := k.TargetAlt - k.SpAlt; {
		case d > ramp:
			k.SpAlt += ramp
			ffv = p.TakeoffRate
		case d < -ramp:
			k.SpAlt -= ramp
			ffv = -p.TakeoffRate
		default:
			k.SpAlt = k.TargetAlt
		}
		k.SpVZ = clamp(ffv+p.AltKp*(k.SpAlt-e.Alt), -p.MaxDescent, p.MaxClimb)
	case ModeLand:
		k.SpAlt = e.Alt
		k.SpVZ = -p.LandSpeed
		if e.Alt < p.LandSlowAlt {
			k.SpVZ = -p.LandSpeedSlow
		}
		if blind {
			k.SpVZ = -p.BlindLandSpeed
		}
	}
	if !st.Airborne && st.Mode == ModeTakeoff {
		// Still on the ground: keep the setpoint just ahead of the quad and
		// the integrator empty, or it lifts off with a wound-up climb.
		k.SpAlt = math.Min(k.SpAlt, e.Alt+0.2)
	}
	var acc float64
	if blind {
		// The climb-rate estimate now rests on the barometer alone: keep
		// the integrator's learned trim and close the loop softly.
		acc = k.VZ.I + p.BlindVZKp*(k.SpVZ-e.VZ)
	} else {
		acc = PIDStep(&k.VZ, &p.VZ, k.SpVZ, e.VZ, 0, dt, !st.Airborne, k.SatHi&satThrust != 0, k.SatLo&satThrust != 0)
	}
	acc = clamp(acc, -p.MaxAccDown, p.MaxAccUp)
	c := math.Cos(math.Min(tilt(e.Roll, e.Pitch), p.MaxTiltComp))
	coll := p.HoverThrottle * math.Sqrt(math.Max(0, (g+acc)/(g*c)))

	// Attitude: angle → rate → torque.
	k.SpRate[0] = clamp(p.AngleKp*(k.SpRoll-e.Roll), -p.MaxRate, p.MaxRate)
	k.SpRate[1] = clamp(p.AngleKp*(k.SpPitch-e.Pitch), -p.MaxRate, p.MaxRate)
	k.SpRate[2] = clamp(p.YawAngleKp*wrapPi(k.SpYaw-e.Yaw), -p.MaxYawRate, p.MaxYawRate)
	freeze := !st.Airborne || !imuOK
	bits := [3]uint8{satRoll, satPitch, satYaw}
	switch {
	case blind:
		// No IMU for a while: no attitude feedback, so no torques; the
		// altitude loop goes on with the barometer alone.
		k.Torque = [3]float64{}
	case !imuOK:
		// A short gap: hold the last torques.
	default:
		for i := range 3 {
			gains := &p.RateRP
			if i == 2 {
				gains = &p.RateYaw
			}
			k.Torque[i] = PIDStep(&k.Rate[i], gains, k.SpRate[i], e.Rate[i], 0, dt, freeze,
				k.SatHi&bits[i] != 0, k.SatLo&bits[i] != 0)
		}
	}
	if !st.Airborne {
		// On the ground the attitude cannot follow: no yaw fight, no windup.
		k.Torque[2] = 0
	}
	k.Collective = coll
	u, hi, lo := Mix(coll, k.Torque[0], k.Torque[1], k.Torque[2], p.IdleThrottle, p.MaxThrottle)
	k.SatHi, k.SatLo = hi, lo
	return u
}

// resetControl puts the controllers at rest on the ground.
func resetControl(st *State, p *Params) {
	k, e := &st.Ctl, &st.Est
	for i := range k.Rate {
		resetPID(&k.Rate[i], e.Rate[i])
	}
	resetPID(&k.VZ, e.VZ)
	k.SpRoll, k.SpPitch, k.SpYaw = 0, 0, e.Yaw
	k.SpRate = [3]float64{}
	k.SpAlt, k.SpVZ = e.Alt, 0
	k.Torque = [3]float64{}
	k.Collective = 0
	k.SatHi, k.SatLo = 0, 0
	k.TouchTime, k.BlindTime, k.BlindAlt = 0, 0, 0
}
