package flightctl

import "math"

// PIDGains are the gains and limits of one PID loop.
type PIDGains struct {
	Kp, Ki, Kd float64
	ILimit     float64 // |integrator| ≤ ILimit (output units)
	DCutoffHz  float64 // first-order low-pass on the derivative; 0 = none
	OutLimit   float64 // |output| ≤ OutLimit; 0 = none
}

// Params are the controller's gains, limits and thresholds. They are not part
// of State: a new controller version may bring its own. DefaultParams returns
// values tuned on the bench drone (a 1.5 kg Iris-like quad).
type Params struct {
	// Tick timing.
	NominalDt float64 // s; used when an input dt is missing or absurd
	MaxDt     float64 // s; a longer dt is clamped to it

	// Estimator.
	MahonyKp       float64 // accel correction gain in flight, rad/s per unit error
	MahonyKi       float64 // gyro bias integral gain in flight
	MahonyKpGround float64 // correction gain while disarmed (fast alignment)
	AccGate        float64 // accel used for attitude only while | |a| - g | < AccGate, m/s²
	AltAccNoise    float64 // vertical accel noise for the altitude filter, m/s²
	AltBiasWalk    float64 // accel bias random walk, m/s² per √s
	AltBaroNoise   float64 // barometric altitude noise, m
	BlindAccNoise  float64 // vertical accel uncertainty assumed while the IMU is lost, m/s²
	BaroRefTau     float64 // the ground pressure reference while disarmed: a running mean forgetting with this time constant, s
	BaroRefStd     float64 // arming waits until the ground reference is this good (its standard deviation), m
	GyroCalTime    float64 // length of a still window that calibrates the gyro, s
	GyroCalMaxStd  float64 // max gyro std in that window, rad/s
	GyroCalAccTol  float64 // max | |a| - g | in that window, m/s²
	LevelTrim      bool    // take the residual accel x/y at rest as trim (the pad is level, as PX4's level calibration)
	GyroCutoffHz   float64 // first-order low-pass on the gyro for the rate loop; 0 = none
	Gravity        float64 // m/s²

	// Attitude control.
	AngleKp    float64 // roll/pitch angle → rate, 1/s
	YawAngleKp float64 // heading → yaw rate, 1/s
	MaxRate    float64 // roll/pitch rate setpoint limit, rad/s
	MaxYawRate float64 // rad/s
	RateRP     PIDGains
	RateYaw    PIDGains
	MaxTiltCmd float64 // limit on roll/pitch setpoints, rad
	TiltCut    float64 // cut the motors beyond this tilt, rad
	ArmMaxTilt float64 // refuse to arm beyond this tilt, rad

	// Altitude control.
	AltKp       float64 // altitude error → climb rate, 1/s
	MaxClimb    float64 // m/s
	MaxDescent  float64 // m/s (positive)
	VZ          PIDGains
	MaxAccUp    float64 // vertical acceleration demand limits, m/s²
	MaxAccDown  float64 // (positive)
	MaxTiltComp float64 // tilt compensation is applied up to this tilt, rad

	// Outputs.
	HoverThrottle float64 // ESC command that holds a hover (feed-forward), 0..1
	IdleThrottle  float64 // ESC command of an armed motor at rest, 0..1
	MaxThrottle   float64 // 0..1
	MinPulseUS    float64 // disarmed pulse, µs (1000)
	MaxPulseUS    float64 // full throttle pulse, µs (2000)

	// Modes.
	TakeoffAlt     float64 // default takeoff altitude, m
	TakeoffRate    float64 // altitude setpoint ramp during takeoff, m/s
	AltReachedTol  float64 // takeoff is done within this of the target, m
	LandSpeed      float64 // descent rate while landing, m/s
	LandSlowAlt    float64 // below this estimated altitude descend at LandSpeedSlow, m
	LandSpeedSlow  float64 // m/s
	TouchdownTime  float64 // touchdown is declared after this long on the ground, s
	TouchdownThr   float64 // ... with the collective command below this fraction of HoverThrottle
	AirborneAlt    float64 // above this estimated altitude the quad is airborne, m
	BlindLandSpeed float64 // descent rate while landing without IMU, m/s
	BlindVZKp      float64 // climb-rate gain while landing without IMU, 1/s

	// Failsafes.
	IMUFailTicks  uint32  // consecutive failed IMU ticks → land (or disarm on the ground)
	StuckTicks    uint32  // bit-identical IMU samples in a row that count as a failed read
	BaroFailTicks uint32  // consecutive failed baro reads → land
	BaroTimeout   float64 // no new baro sample for this long → land, s

	// Version differences (a new controller may bring its own).
	// Schema is the state schema the controller runs natively: 1 keeps the
	// attitude as Euler angles, 2 integrates a quaternion (EstState.Q) and
	// keeps the camera state. 0 means 1.
	Schema int
	// CameraFPS, when positive, runs the simulated camera stream at that rate
	// (schema 2 only; the frame count is part of the state).
	CameraFPS float64
}

// StateSchema is the state schema p runs natively (1 or 2).
func (p *Params) StateSchema() int {
	if p.Schema == SchemaV2 {
		return SchemaV2
	}
	return SchemaVersion
}

// ScaleGains multiplies every control gain (attitude, rate, altitude and
// climb-rate loops) by k: a debug aid that makes a controller diverge from
// a correct one in the handoff's shadow phase.
func (p *Params) ScaleGains(k float64) {
	p.AngleKp *= k
	p.YawAngleKp *= k
	p.AltKp *= k
	for _, g := range []*PIDGains{&p.RateRP, &p.RateYaw, &p.VZ} {
		g.Kp *= k
		g.Ki *= k
		g.Kd *= k
	}
}

func deg(d float64) float64 { return d * math.Pi / 180 }

// DefaultParams returns the bench-tuned defaults.
func DefaultParams() Params {
	return Params{
		NominalDt: 1.0 / 400,
		MaxDt:     0.02,

		MahonyKp:       0.02,
		MahonyKi:       0.0,
		MahonyKpGround: 5,
		AccGate:        2.0,
		AltAccNoise:    0.03,
		AltBiasWalk:    0.002,
		AltBaroNoise:   0.06,
		BlindAccNoise:  1,
		BaroRefTau:     10,
		BaroRefStd:     0.0125,
		GyroCalTime:    1.0,
		GyroCalMaxStd:  deg(0.5),
		GyroCalAccTol:  0.5,
		LevelTrim:      true,
		GyroCutoffHz:   90,
		Gravity:        9.80665,

		AngleKp:    7,
		YawAngleKp: 3,
		MaxRate:    deg(220),
		MaxYawRate: deg(90),
		RateRP:     PIDGains{Kp: 0.07, Ki: 0.20, Kd: 0.0018, ILimit: 0.05, DCutoffHz: 40, OutLimit: 0.3},
		RateYaw:    PIDGains{Kp: 0.25, Ki: 0.15, Kd: 0, ILimit: 0.08, OutLimit: 0.15},
		MaxTiltCmd: deg(30),
		TiltCut:    deg(60),
		ArmMaxTilt: deg(10),

		AltKp:       2.5,
		MaxClimb:    1.0,
		MaxDescent:  0.8,
		VZ:          PIDGains{Kp: 6.0, Ki: 3.0, Kd: 0, ILimit: 3.0},
		MaxAccUp:    4.0,
		MaxAccDown:  5.0,
		MaxTiltComp: deg(45),

		HoverThrottle: 0.55,
		IdleThrottle:  0.08,
		MaxThrottle:   1.0,
		MinPulseUS:    1000,
		MaxPulseUS:    2000,

		TakeoffAlt:     2.0,
		TakeoffRate:    0.8,
		AltReachedTol:  0.05,
		LandSpeed:      0.6,
		LandSlowAlt:    0.6,
		LandSpeedSlow:  0.3,
		TouchdownTime:  0.5,
		TouchdownThr:   0.85,
		AirborneAlt:    0.15,
		BlindLandSpeed: 0.4,
		BlindVZKp:      1.0,

		IMUFailTicks:  20,
		StuckTicks:    50,
		BaroFailTicks: 25,
		BaroTimeout:   0.5,
	}
}
