package flightctl

import "math"

// Step advances the controller by one tick: it checks the sensors, updates
// the estimate, applies the tick's command, runs the mission and the mode
// machine, and computes the motor outputs. It is a deterministic function of
// (*st, *p, *in): it reads no clock, draws no random number, keeps nothing
// outside st, allocates nothing and never panics.
func Step(st *State, p *Params, in *Inputs, out *Outputs) {
	*out = Outputs{}
	dt := in.Dt
	if !(dt > 0) || dt > 1 { // also NaN
		dt = p.NominalDt
	}
	dt = math.Min(dt, p.MaxDt)
	st.Tick++
	st.Time += dt
	mode0 := st.Mode

	imuOK, baroOK, baroGap := health(st, p, in, dt)
	estimate(st, p, in, dt, imuOK, baroOK, baroGap, out)
	failsafes(st, p, imuOK, out)
	if in.Cmd.Kind != CmdNone {
		command(st, p, &in.Cmd, out)
	}
	runMission(st, p, dt, out)
	modeLogic(st, p, dt, out)

	var u [4]float64
	switch st.Mode {
	case ModeDisarmed:
		resetControl(st, p)
	case ModeArmed:
		resetControl(st, p)
		u = [4]float64{p.IdleThrottle, p.IdleThrottle, p.IdleThrottle, p.IdleThrottle}
	default:
		u = fly(st, p, dt, imuOK)
	}
	armed := st.Mode != ModeDisarmed
	for i := range 4 {
		if !armed {
			u[i] = 0
			out.PulseUS[i] = p.MinPulseUS
			continue
		}
		u[i] = clamp(u[i], 0, 1)
		out.PulseUS[i] = p.MinPulseUS + u[i]*(p.MaxPulseUS-p.MinPulseUS)
	}
	out.Motor = u
	out.Mode = st.Mode
	if armed {
		out.Flags |= FlagArmed
	}
	if st.Airborne {
		out.Flags |= FlagAirborne
	}
	if st.Ctl.SatHi|st.Ctl.SatLo != 0 && armed {
		out.Flags |= FlagSaturated
	}
	if st.Failsafe != ReasonNone {
		out.Flags |= FlagFailsafe
	}
	if !imuOK {
		out.Flags |= FlagIMUBad
	}
	if baroFailing(st, p) {
		out.Flags |= FlagBaroBad
	}
	if st.Mode != mode0 {
		out.Events |= EvMode
	}
	st.Last = LastOut{Motor: u, Flags: out.Flags}
	if p.CameraFPS > 0 && p.Schema == SchemaV2 {
		camera(&st.Cam, 1/p.CameraFPS, dt)
	}
}

// camera advances the simulated camera stream by dt: a frame every period.
func camera(c *CamState, period, dt float64) {
	c.Acc += dt
	for c.Acc >= period {
		c.Acc -= period
		c.Frames++
	}
}

// health classifies this tick's samples. An IMU sample is unusable if the
// read failed, any value is NaN or infinite, or it is bit-identical to the
// previous one for StuckTicks ticks in a row.
func health(st *State, p *Params, in *Inputs, dt float64) (imuOK, baroOK bool, baroGap float64) {
	h := &st.Health
	imuOK = !in.IMUErr
	if imuOK {
		for i := range 3 {
			if !finite(in.Accel[i]) || !finite(in.Gyro[i]) || math.Abs(in.Accel[i]) > 1000 || math.Abs(in.Gyro[i]) > 100 {
				imuOK = false
			}
		}
	}
	if imuOK {
		if in.Accel == h.LastAccel && in.Gyro == h.LastGyro {
			h.Stuck++
		} else {
			h.Stuck = 0
		}
		h.LastAccel, h.LastGyro = in.Accel, in.Gyro
		if h.Stuck >= p.StuckTicks {
			imuOK = false
		}
	}
	if imuOK {
		h.IMUFails = 0
		h.IMUSeen = true
	} else if h.IMUFails < math.MaxUint32 {
		h.IMUFails++
	}

	h.BaroAge += dt
	switch {
	case in.BaroErr:
		if h.BaroFails < math.MaxUint32 {
			h.BaroFails++
		}
	case in.BaroNew:
		if finite(in.BaroPa) && in.BaroPa > 30000 && in.BaroPa < 120000 {
			baroOK = true
			baroGap = h.BaroAge
			h.BaroAge = 0
			h.BaroFails = 0
			h.BaroSeen = true
		} else if h.BaroFails < math.MaxUint32 {
			h.BaroFails++
		}
	}
	return imuOK, baroOK, baroGap
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func baroFailing(st *State, p *Params) bool {
	h := &st.Health
	return !h.BaroSeen || h.BaroFails >= p.BaroFailTicks || h.BaroAge > p.BaroTimeout
}

func flying(m Mode) bool { return m == ModeTakeoff || m == ModeHover || m == ModeLand }

func setMode(st *State, m Mode, r Reason, out *Outputs) {
	if st.Mode == m {
		return
	}
	st.Mode = m
	if r != ReasonNone {
		st.Reason = r
	}
	out.Reason = r
	out.Events |= EvMode
	if m == ModeDisarmed {
		st.Airborne = false
		st.Failsafe = ReasonNone
	}
}

// failsafes: a tilt beyond the limit cuts the motors; failing sensors make a
// flying quad land (and an armed one on the ground disarm).
func failsafes(st *State, p *Params, imuOK bool, out *Outputs) {
	if st.Mode == ModeDisarmed {
		return
	}
	if imuOK && tilt(st.Est.Roll, st.Est.Pitch) > p.TiltCut {
		setMode(st, ModeDisarmed, ReasonTilt, out)
		st.Mission.Active = false
		out.Events |= EvFailsafe
		out.Reason = ReasonTilt
		return
	}
	var r Reason
	switch {
	case st.Health.IMUFails >= p.IMUFailTicks:
		r = ReasonIMUFail
	case baroFailing(st, p):
		r = ReasonBaroFail
	default:
		return
	}
	if !st.Airborne {
		setMode(st, ModeDisarmed, r, out)
		st.Mission.Active = false
		out.Events |= EvFailsafe
		out.Reason = r
		return
	}
	if st.Failsafe == ReasonNone {
		st.Failsafe = r
		st.Reason = r
		st.Mission.Active = false
		startLand(st, r, out)
		out.Events |= EvFailsafe
		out.Reason = r
	}
}

// armCheck says why the controller may not arm now, or ReasonNone.
func armCheck(st *State, p *Params) Reason {
	h, e := &st.Health, &st.Est
	switch {
	case st.Failsafe != ReasonNone:
		return st.Failsafe
	case !h.IMUSeen:
		return ReasonNoIMU
	case h.IMUFails > 0:
		return ReasonIMUFail
	case !h.BaroSeen:
		return ReasonNoBaro
	case baroFailing(st, p):
		return ReasonBaroFail
	case !e.Calibrated:
		return ReasonNotCalibrated
	case p.BaroRefStd > 0 && e.P[0] > p.BaroRefStd*p.BaroRefStd:
		// Too few barometer samples yet for the ground reference (about
		// 1 s at 25 Hz with the defaults, as long as the gyro's calibration).
		return ReasonNoBaro
	case tilt(e.Roll, e.Pitch) > p.ArmMaxTilt:
		return ReasonNotLevel
	}
	return ReasonNone
}

func arm(st *State, p *Params, r Reason, out *Outputs) Reason {
	if st.Mode != ModeDisarmed {
		return ReasonNone
	}
	if why := armCheck(st, p); why != ReasonNone {
		return why
	}
	resetControl(st, p)
	st.Airborne = false
	// The altitude filter starts from the settled ground reference (P[0]
	// held its variance while disarmed) with a loose initial covariance.
	st.Est.P[0] = 0.01
	setMode(st, ModeArmed, r, out)
	return ReasonNone
}

func startTakeoff(st *State, p *Params, alt float64, r Reason, out *Outputs) Reason {
	if alt <= 0 {
		alt = p.TakeoffAlt
	}
	if st.Failsafe != ReasonNone {
		return st.Failsafe
	}
	switch st.Mode {
	case ModeDisarmed:
		if why := arm(st, p, r, out); why != ReasonNone {
			return why
		}
		fallthrough
	case ModeArmed:
		resetControl(st, p)
		st.Ctl.SpAlt = st.Est.Alt
	case ModeLand:
		st.Ctl.SpAlt = st.Est.Alt
	}
	st.Ctl.TargetAlt = alt
	setMode(st, ModeTakeoff, r, out)
	return ReasonNone
}

func startHover(st *State, r Reason, out *Outputs) Reason {
	if !flying(st.Mode) {
		return ReasonBadMode
	}
	if st.Failsafe != ReasonNone {
		return st.Failsafe
	}
	if st.Mode != ModeHover {
		st.Ctl.TargetAlt = st.Est.Alt
		st.Ctl.SpAlt = st.Est.Alt
	}
	setMode(st, ModeHover, r, out)
	return ReasonNone
}

func startLand(st *State, r Reason, out *Outputs) Reason {
	switch st.Mode {
	case ModeDisarmed:
		return ReasonBadMode
	case ModeArmed:
		setMode(st, ModeDisarmed, r, out)
		return ReasonNone
	}
	st.Ctl.TouchTime, st.Ctl.BlindTime, st.Ctl.BlindAlt = 0, 0, 0
	setMode(st, ModeLand, r, out)
	return ReasonNone
}

// command applies an operator command. Any accepted command other than
// CmdMission stops a running mission.
func command(st *State, p *Params, c *Command, out *Outputs) {
	var why Reason
	switch c.Kind {
	case CmdArm:
		if st.Mode != ModeDisarmed {
			why = ReasonBadMode
		} else {
			why = arm(st, p, ReasonOperator, out)
		}
	case CmdDisarm:
		if st.Airborne && !c.Force {
			why = ReasonAirborne
		} else {
			setMode(st, ModeDisarmed, ReasonOperator, out)
		}
	case CmdTakeoff:
		if !(c.Alt >= 0 && c.Alt <= 100) {
			why = ReasonBadArg
		} else {
			why = startTakeoff(st, p, c.Alt, ReasonOperator, out)
		}
	case CmdHover:
		why = startHover(st, ReasonOperator, out)
	case CmdLand:
		why = startLand(st, ReasonOperator, out)
	case CmdMission:
		m := &c.Mission
		if m.N == 0 || !m.valid() {
			why = ReasonBadArg
		} else if st.Failsafe != ReasonNone {
			why = st.Failsafe
		} else {
			st.Mission = MissionState{Plan: *m, Active: true}
			out.Events |= EvMissionStep
		}
	default:
		why = ReasonBadArg
	}
	if why != ReasonNone {
		out.Events |= EvCmdRefused
		out.Reason = why
		return
	}
	out.CmdOK = true
	if c.Kind != CmdMission {
		st.Mission.Active = false
	}
}

// runMission executes the current mission step and moves to the next one
// when it is done.
func runMission(st *State, p *Params, dt float64, out *Outputs) {
	m := &st.Mission
	if !m.Active {
		return
	}
	if m.Index >= m.Plan.N {
		m.Active, m.Done = false, true
		return
	}
	step := m.Plan.Steps[m.Index]
	done := false
	switch step.Kind {
	case StepTakeoff:
		if !m.Started {
			if why := startTakeoff(st, p, step.Arg, ReasonMission, out); why != ReasonNone {
				if why != m.ArmRefused {
					m.ArmRefused = why
					out.Events |= EvArmRefused
					out.Reason = why
				}
				return
			}
			m.ArmRefused = ReasonNone
			m.Started = true
		}
		done = st.Mode == ModeHover
	case StepHover:
		if !m.Started {
			if flying(st.Mode) && st.Mode != ModeHover {
				startHover(st, ReasonMission, out)
			}
			m.Started = true
			m.StepTime = 0
		}
		m.StepTime += dt
		done = m.StepTime >= step.Arg
	case StepLand:
		if !m.Started {
			startLand(st, ReasonMission, out)
			m.Started = true
		}
		done = st.Mode == ModeDisarmed
	default:
		done = true
	}
	if !m.Started {
		return
	}
	if st.Mode == ModeDisarmed && step.Kind != StepLand {
		// Cut or disarmed underneath the mission: abandon it.
		m.Active = false
		return
	}
	if done {
		m.Index++
		m.StepTime = 0
		m.Started = false
		out.Events |= EvMissionStep
		if m.Index >= m.Plan.N {
			m.Active, m.Done = false, true
		}
	}
}

// modeLogic: takeoff completes at the target altitude; landing ends with a
// detected touchdown.
func modeLogic(st *State, p *Params, dt float64, out *Outputs) {
	e, k := &st.Est, &st.Ctl
	if flying(st.Mode) && !st.Airborne && e.Alt > p.AirborneAlt {
		st.Airborne = true
	}
	switch st.Mode {
	case ModeTakeoff:
		if k.SpAlt == k.TargetAlt && math.Abs(e.Alt-k.TargetAlt) < p.AltReachedTol+0.05 && math.Abs(e.VZ) < 0.3 {
			setMode(st, ModeHover, ReasonNone, out)
		}
	case ModeLand:
		if !st.Airborne {
			setMode(st, ModeDisarmed, ReasonTouchdown, out)
			return
		}
		if st.Health.IMUFails >= p.IMUFailTicks {
			// Without the IMU, also stop after the time a descent from
			// here should take at most.
			if k.BlindTime == 0 {
				k.BlindAlt = math.Max(0, e.Alt)
			}
			k.BlindTime += dt
			if k.BlindTime > 2*k.BlindAlt/p.BlindLandSpeed+5 {
				setMode(st, ModeDisarmed, ReasonTouchdown, out)
				return
			}
		}
		if e.Alt < p.LandSlowAlt+0.5 && k.Collective < p.TouchdownThr*p.HoverThrottle && math.Abs(e.VZ) < 0.25 {
			k.TouchTime += dt
		} else {
			k.TouchTime = 0
		}
		if k.TouchTime >= p.TouchdownTime {
			setMode(st, ModeDisarmed, ReasonTouchdown, out)
		}
	}
}
