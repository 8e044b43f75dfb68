package flightctl

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// MaxMissionSteps bounds a mission (it lives in State, which has a fixed size).
const MaxMissionSteps = 16

// StepKind is a mission step kind. Values are part of the state encoding.
type StepKind uint8

// Mission step kinds.
const (
	StepNone    StepKind = iota
	StepTakeoff          // arm (waiting for the arming checks) and climb to Arg metres
	StepHover            // hold altitude for Arg seconds
	StepLand             // land and disarm
	numStepKinds
)

var stepNames = [numStepKinds]string{"", "takeoff", "hover", "land"}

func (k StepKind) String() string {
	if k < numStepKinds {
		return stepNames[k]
	}
	return "invalid"
}

// MissionStep is one step of a mission.
type MissionStep struct {
	Kind StepKind
	Arg  float64 // takeoff: altitude, m; hover: duration, s
}

// Mission is a fixed-size list of steps.
type Mission struct {
	N     uint8
	Steps [MaxMissionSteps]MissionStep
}

// ErrMission is wrapped by every mission parse error.
var ErrMission = errors.New("flightctl: bad mission")

// ParseMission parses a mission such as "takeoff:2m,hover:30s,land".
// Steps are separated by commas, semicolons or newlines; '#' starts a
// comment. takeoff takes an altitude ("2m" or "2"), hover a duration ("30s",
// "1m30s" or "30"), land nothing.
func ParseMission(spec string) (Mission, error) {
	var m Mission
	lines := strings.FieldsFunc(stripComments(spec), func(r rune) bool { return r == ',' || r == ';' || r == '\n' })
	for _, raw := range lines {
		s := strings.TrimSpace(raw)
		if s == "" {
			continue
		}
		if int(m.N) == MaxMissionSteps {
			return Mission{}, fmt.Errorf("%w: more than %d steps", ErrMission, MaxMissionSteps)
		}
		name, arg, hasArg := strings.Cut(s, ":")
		name = strings.ToLower(strings.TrimSpace(name))
		arg = strings.TrimSpace(arg)
		var st MissionStep
		switch name {
		case "takeoff":
			st.Kind = StepTakeoff
			if !hasArg {
				return Mission{}, fmt.Errorf("%w: %q: takeoff needs an altitude, e.g. takeoff:2m", ErrMission, s)
			}
			v, err := strconv.ParseFloat(strings.TrimSuffix(arg, "m"), 64)
			if err != nil || !(v >= 0.3 && v <= 100) {
				return Mission{}, fmt.Errorf("%w: %q: altitude must be 0.3..100 m", ErrMission, s)
			}
			st.Arg = v
		case "hover":
			st.Kind = StepHover
			if !hasArg {
				return Mission{}, fmt.Errorf("%w: %q: hover needs a duration, e.g. hover:30s", ErrMission, s)
			}
			v, err := strconv.ParseFloat(arg, 64)
			if err != nil {
				d, derr := time.ParseDuration(arg)
				if derr != nil {
					return Mission{}, fmt.Errorf("%w: %q: bad duration", ErrMission, s)
				}
				v = d.Seconds()
			}
			if !(v >= 0 && v <= 3600) {
				return Mission{}, fmt.Errorf("%w: %q: duration must be 0..3600 s", ErrMission, s)
			}
			st.Arg = v
		case "land":
			st.Kind = StepLand
			if hasArg {
				return Mission{}, fmt.Errorf("%w: %q: land takes no argument", ErrMission, s)
			}
		default:
			return Mission{}, fmt.Errorf("%w: %q: unknown step (takeoff, hover, land)", ErrMission, s)
		}
		m.Steps[m.N] = st
		m.N++
	}
	if m.N == 0 {
		return Mission{}, fmt.Errorf("%w: no steps", ErrMission)
	}
	return m, nil
}

// LoadMission reads a mission from a flag value: a spec, or "@file" (or a
// path to an existing file) holding one.
func LoadMission(v string) (Mission, error) {
	path := ""
	if p, ok := strings.CutPrefix(v, "@"); ok {
		path = p
	} else if !strings.ContainsAny(v, ":,") {
		if _, err := os.Stat(v); err == nil {
			path = v
		}
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Mission{}, fmt.Errorf("flightctl: mission file: %w", err)
		}
		v = string(b)
	}
	return ParseMission(v)
}

func stripComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i] + "\n"
		}
		b.WriteString(line)
	}
	return b.String()
}

// String formats the mission as ParseMission reads it.
func (m *Mission) String() string {
	var b strings.Builder
	for i := range int(min(m.N, MaxMissionSteps)) {
		if i > 0 {
			b.WriteByte(',')
		}
		st := m.Steps[i]
		switch st.Kind {
		case StepTakeoff:
			fmt.Fprintf(&b, "takeoff:%gm", st.Arg)
		case StepHover:
			fmt.Fprintf(&b, "hover:%gs", st.Arg)
		default:
			b.WriteString(st.Kind.String())
		}
	}
	return b.String()
}

func (m *Mission) valid() bool {
	if m.N > MaxMissionSteps {
		return false
	}
	for i := range MaxMissionSteps {
		st := m.Steps[i]
		if st.Kind >= numStepKinds || math.IsNaN(st.Arg) || math.IsInf(st.Arg, 0) {
			return false
		}
	}
	return true
}
