package flightctl

// Mode is the flight mode.
type Mode uint8

// Modes. Their numeric values are part of the state encoding: append only.
const (
	ModeDisarmed Mode = iota // motors stopped (1000 µs)
	ModeArmed                // on the ground, motors at idle, waiting for a takeoff
	ModeTakeoff              // climbing to the target altitude
	ModeHover                // holding attitude and altitude
	ModeLand                 // descending until touchdown, then disarmed
	numModes
)

var modeNames = [numModes]string{"disarmed", "armed", "takeoff", "hover", "land"}

func (m Mode) String() string {
	if m < numModes {
		return modeNames[m]
	}
	return "invalid"
}

// Reason says why a command was refused, or why a failsafe acted. Values are
// part of the state encoding: append only.
type Reason uint8

// Reasons.
const (
	ReasonNone          Reason = iota
	ReasonIMUFail              // IMU reads failed (error, NaN/Inf, stuck) for too many ticks
	ReasonBaroFail             // barometer reads failed or went stale
	ReasonTilt                 // tilt beyond the cut limit: motors cut
	ReasonNotCalibrated        // gyro not yet calibrated (keep the drone still)
	ReasonNotLevel             // tilt beyond the arming limit
	ReasonNoIMU                // no good IMU sample yet
	ReasonNoBaro               // no good barometer sample yet
	ReasonBadMode              // the command does not apply in the current mode
	ReasonAirborne             // refused while airborne (e.g. disarm without force)
	ReasonBadArg               // the command's argument is out of range
	ReasonOperator             // an operator command did it
	ReasonMission              // the mission did it
	ReasonTouchdown            // touchdown detected
	numReasons
)

var reasonNames = [numReasons]string{"", "imu_fail", "baro_fail", "tilt_cut", "gyro_not_calibrated",
	"not_level", "no_imu", "no_baro", "bad_mode", "airborne", "bad_argument", "operator", "mission", "touchdown"}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "invalid"
}

// CmdKind is an operator command carried in Inputs. Values are part of the
// input encoding: append only.
type CmdKind uint8

// Commands.
const (
	CmdNone    CmdKind = iota
	CmdArm             // arm on the ground (idle spin), after the arming checks
	CmdDisarm          // stop the motors; refused while airborne unless Force
	CmdTakeoff         // arm if needed and climb to Alt (or the default)
	CmdHover           // hold the current altitude
	CmdLand            // land and disarm
	CmdMission         // replace the mission with Mission and start it
	numCmds
)

var cmdNames = [numCmds]string{"", "arm", "disarm", "takeoff", "hover", "land", "mission"}

func (c CmdKind) String() string {
	if c < numCmds {
		return cmdNames[c]
	}
	return "invalid"
}

// Command is an operator command for one tick. It is an input (not a side
// channel into the state) so that a shadow controller sees it too.
type Command struct {
	Kind    CmdKind
	Force   bool    // CmdDisarm: also in the air (a kill)
	Alt     float64 // CmdTakeoff: target altitude, m; 0 = default
	Mission Mission // CmdMission
}

// Inputs is everything one tick consumes from outside the controller.
type Inputs struct {
	Dt     float64 // s since the previous tick
	TimeNs int64   // monotonic timestamp of the IMU read, ns (records only; Step does not use it)

	Accel  [3]float64 // specific force, body FLU, m/s²
	Gyro   [3]float64 // body rates, rad/s
	IMUErr bool       // the IMU read failed (Accel and Gyro are meaningless)

	BaroPa  float64 // latest barometer pressure, Pa
	BaroC   float64 // latest barometer temperature, °C
	BaroNew bool    // BaroPa is a sample not seen in an earlier tick
	BaroErr bool    // the latest barometer read failed

	Cmd Command
}

// OutFlags describe a tick's outputs.
type OutFlags uint16

// Output flags.
const (
	FlagArmed     OutFlags = 1 << iota // motors live (at least idle)
	FlagAirborne                       // the controller believes it is flying
	FlagSaturated                      // the mixer had to limit a command
	FlagFailsafe                       // a failsafe landing is in progress
	FlagIMUBad                         // this tick's IMU sample was not used
	FlagBaroBad                        // the barometer is failing or stale
)

// Events say what changed in a tick (for logs; the loop logs them off the tick path).
type Events uint16

// Events.
const (
	EvMode        Events = 1 << iota // the mode changed (Outputs.Mode, Outputs.Reason)
	EvCmdRefused                     // the tick's command was refused (Outputs.Reason)
	EvFailsafe                       // a failsafe acted (Outputs.Reason)
	EvCalibrated                     // the gyro calibration completed
	EvMissionStep                    // the mission moved to another step (or finished)
	EvArmRefused                     // the mission could not arm yet (Outputs.Reason); once per reason
)

// Outputs is what one tick produces.
type Outputs struct {
	PulseUS [4]float64 // ESC pulse width by PCA9685 channel, µs
	Motor   [4]float64 // the same as ESC commands, 0..1
	Mode    Mode
	Flags   OutFlags
	Events  Events
	Reason  Reason // reason for EvCmdRefused, EvFailsafe, EvMode, EvArmRefused
	CmdOK   bool   // the tick's command (if any) was accepted
}
