package flightctl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inflight-ota/inflight/internal/buildinfo"
)

// ControlVersion is the version of the control socket protocol ("v" in every
// request and response).
const ControlVersion = 1

// ControlSocketName is the control socket's name in the run directory.
const ControlSocketName = "control.sock"

// Request is one control request: a JSON object on one line. Fields other
// than v and cmd belong to the command and stay in Raw.
type Request struct {
	V   int             `json:"v"`
	Cmd string          `json:"cmd"`
	Raw json.RawMessage `json:"-"`
}

// Response is one control response line.
type Response struct {
	V      int    `json:"v"`
	Cmd    string `json:"cmd,omitempty"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Reason string `json:"reason,omitempty"`
	Result any    `json:"result,omitempty"`
}

// Handler serves one command. An error that wraps a *RefusedError reports its
// reason.
type Handler func(ctx context.Context, req *Request) (any, error)

// RefusedError is a command the controller refused for a Reason.
type RefusedError struct {
	Cmd    string
	Reason Reason
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("flightctl: %s refused: %s", e.Cmd, e.Reason)
}

// ErrUnknownCommand is returned for a command nobody handles.
var ErrUnknownCommand = errors.New("flightctl: unknown command")

// ControlServer serves the control socket. Commands can be added with Handle
// (the handoff adds its own).
type ControlServer struct {
	Log      *slog.Logger
	Timeout  time.Duration // per request; default 2 s
	mu       sync.Mutex
	handlers map[string]Handler
	frozen   atomic.Bool
}

// NewControlServer returns a server with no commands.
func NewControlServer(log *slog.Logger) *ControlServer {
	return &ControlServer{Log: log, Timeout: 2 * time.Second, handlers: map[string]Handler{}}
}

// Handle registers (or replaces) the handler of a command.
func (s *ControlServer) Handle(cmd string, h Handler) {
	s.mu.Lock()
	s.handlers[cmd] = h
	s.mu.Unlock()
}

// Commands lists the registered commands.
func (s *ControlServer) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := make([]string, 0, len(s.handlers))
	for k := range s.handlers {
		r = append(r, k)
	}
	return r
}

// Serve listens on path (removing a stale socket) until ctx is done, and
// waits for its connections to end.
func (s *ControlServer) Serve(ctx context.Context, path string) error {
	_ = os.Remove(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("flightctl: control socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("flightctl: control socket: %w", err)
	}
	var wg sync.WaitGroup
	var cmu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		ln.Close()
		cmu.Lock()
		for c := range conns {
			c.Close()
		}
		cmu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		cmu.Lock()
		conns[c] = struct{}{}
		cmu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
			cmu.Lock()
			delete(conns, c)
			cmu.Unlock()
			c.Close()
		}()
	}
	wg.Wait()
	_ = os.Remove(path)
	return nil
}

func (s *ControlServer) serveConn(ctx context.Context, c net.Conn) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 64<<10)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		resp := s.Do(ctx, line)
		if s.frozen.Load() {
			select {} // the stall fault: no answer, ever
		}
		if err := enc.Encode(resp); err != nil {
			return
		}
	}
}

// Freeze makes the server answer nothing more, from now on and for good:
// every request is read and left unanswered (the stall fault injection of a
// process that cannot SIGSTOP itself). Safe from any goroutine.
func (s *ControlServer) Freeze() { s.frozen.Store(true) }

// Do serves one request line and returns its response.
func (s *ControlServer) Do(ctx context.Context, line []byte) Response {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Response{V: ControlVersion, Error: "flightctl: bad request: " + err.Error()}
	}
	req.Raw = append(json.RawMessage(nil), line...)
	resp := Response{V: ControlVersion, Cmd: req.Cmd}
	if req.V != ControlVersion {
		resp.Error = fmt.Sprintf("flightctl: protocol version %d, this controller speaks %d", req.V, ControlVersion)
		return resp
	}
	s.mu.Lock()
	h := s.handlers[req.Cmd]
	s.mu.Unlock()
	if h == nil {
		resp.Error = fmt.Sprintf("%v: %q", ErrUnknownCommand, req.Cmd)
		return resp
	}
	cctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	res, err := h(cctx, &req)
	if err != nil {
		resp.Error = err.Error()
		var re *RefusedError
		if errors.As(err, &re) {
			resp.Reason = re.Reason.String()
		}
		if s.Log != nil {
			s.Log.Warn("control request failed", "cmd", req.Cmd, "err", err)
		}
		return resp
	}
	resp.OK = true
	resp.Result = res
	return resp
}

// Status is the "status" command's result.
type Status struct {
	Version        string     `json:"version"`
	Schema         int        `json:"schema"`
	Name           string     `json:"name,omitempty"`
	Role           string     `json:"role"`
	Mode           string     `json:"mode"`
	Armed          bool       `json:"armed"`
	Airborne       bool       `json:"airborne"`
	Failsafe       string     `json:"failsafe,omitempty"`
	Reason         string     `json:"reason,omitempty"`
	Tick           uint64     `json:"tick"`
	TimeS          float64    `json:"time_s"`
	RollDeg        float64    `json:"roll_deg"`
	PitchDeg       float64    `json:"pitch_deg"`
	YawDeg         float64    `json:"yaw_deg"`
	AltM           float64    `json:"alt_m"`
	VZMS           float64    `json:"vz_ms"`
	TargetAltM     float64    `json:"target_alt_m"`
	MotorsUS       [4]float64 `json:"motors_us"`
	GyroCalibrated bool       `json:"gyro_calibrated"`
	IMUOK          bool       `json:"imu_ok"`
	BaroOK         bool       `json:"baro_ok"`
	Mission        string     `json:"mission,omitempty"`
	MissionStep    int        `json:"mission_step"`
	MissionActive  bool       `json:"mission_active"`
	MissionDone    bool       `json:"mission_done"`
	BatteryV       *float64   `json:"battery_v"` // no sensor yet: always null
	Ticks          Summary    `json:"ticks"`

	// For the agent (docs/agent.md): holds the PWM authority now; the flight
	// phase its switch policy looks at (the mode); the battery charge
	// (no sensor yet: absent).
	Authority  *bool    `json:"authority,omitempty"`
	Phase      string   `json:"phase,omitempty"`
	BatteryPct *float64 `json:"battery_pct,omitempty"`
	// Camera is the simulated camera stream (schema 2 controllers).
	Camera *CameraStatus `json:"camera,omitempty"`
	// Handoff is the phase of the running or last handoff, if any.
	Handoff string `json:"handoff,omitempty"`
}

// CameraStatus is the camera stream in status.
type CameraStatus struct {
	FPS    float64 `json:"fps"`
	Frames uint64  `json:"frames"`
}

func r3(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return math.Round(v*1000) / 1000
}

func rad2deg(v float64) float64 { return r3(v * 180 / math.Pi) }

// StatusOf builds the status of a snapshot.
func StatusOf(s *Snapshot, p *Params, name string) Status {
	st := &s.State
	m := &st.Mission
	r := Status{
		Version: buildinfo.Version, Schema: SchemaVersion, Name: name, Role: s.Role.String(),
		Mode: st.Mode.String(), Armed: st.Mode != ModeDisarmed, Airborne: st.Airborne,
		Tick: st.Tick, TimeS: r3(st.Time),
		RollDeg: rad2deg(st.Est.Roll), PitchDeg: rad2deg(st.Est.Pitch), YawDeg: rad2deg(st.Est.Yaw),
		AltM: r3(st.Est.Alt), VZMS: r3(st.Est.VZ), TargetAltM: r3(st.Ctl.TargetAlt),
		MotorsUS: s.Outputs.PulseUS, GyroCalibrated: st.Est.Calibrated,
		IMUOK: st.Health.IMUSeen && st.Health.IMUFails == 0, BaroOK: !baroFailing(st, p),
		MissionStep: int(m.Index), MissionActive: m.Active, MissionDone: m.Done,
		Ticks: s.Ticks.Summary(),
	}
	if st.Failsafe != ReasonNone {
		r.Failsafe = st.Failsafe.String()
	}
	r.Reason = st.Reason.String()
	if m.Plan.N > 0 {
		r.Mission = m.Plan.String()
	}
	return r
}

// RegisterFlightCommands registers status, arm, disarm, takeoff, hover, land,
// mission and reset_stats on s for loop l.
func RegisterFlightCommands(s *ControlServer, l *Loop, name string) {
	s.Handle("status", func(ctx context.Context, req *Request) (any, error) {
		var snap Snapshot
		l.Snapshot(&snap)
		return StatusOf(&snap, &l.P, name), nil
	})
	s.Handle("reset_stats", func(ctx context.Context, req *Request) (any, error) {
		return nil, l.Exec(ctx, func(l *Loop) {
			l.snapMu.Lock()
			l.Stats.Reset()
			l.snapMu.Unlock()
		})
	})
	cmd := func(kind CmdKind, parse func(req *Request, c *Command) error) Handler {
		return func(ctx context.Context, req *Request) (any, error) {
			c := Command{Kind: kind}
			if parse != nil {
				if err := parse(req, &c); err != nil {
					return nil, err
				}
			}
			if l.CurrentRole() == RoleStandby {
				return nil, fmt.Errorf("flightctl: %s: this controller is a standby; command the active one", req.Cmd)
			}
			r, err := l.Command(ctx, c)
			if err != nil {
				return nil, fmt.Errorf("flightctl: %s: %w", req.Cmd, err)
			}
			if !r.OK {
				return nil, &RefusedError{Cmd: req.Cmd, Reason: r.Reason}
			}
			return map[string]any{"tick": r.Tick, "mode": r.Mode.String()}, nil
		}
	}
	s.Handle("arm", cmd(CmdArm, nil))
	s.Handle("disarm", cmd(CmdDisarm, func(req *Request, c *Command) error {
		var a struct {
			Force bool `json:"force"`
		}
		if err := json.Unmarshal(req.Raw, &a); err != nil {
			return fmt.Errorf("flightctl: disarm: %w", err)
		}
		c.Force = a.Force
		return nil
	}))
	s.Handle("takeoff", cmd(CmdTakeoff, func(req *Request, c *Command) error {
		var a struct {
			Alt float64 `json:"alt"`
		}
		if err := json.Unmarshal(req.Raw, &a); err != nil {
			return fmt.Errorf("flightctl: takeoff: %w", err)
		}
		c.Alt = a.Alt
		return nil
	}))
	s.Handle("hover", cmd(CmdHover, nil))
	s.Handle("land", cmd(CmdLand, nil))
	s.Handle("mission", cmd(CmdMission, func(req *Request, c *Command) error {
		var a struct {
			Spec string `json:"spec"`
		}
		if err := json.Unmarshal(req.Raw, &a); err != nil {
			return fmt.Errorf("flightctl: mission: %w", err)
		}
		m, err := ParseMission(a.Spec)
		if err != nil {
			return err
		}
		c.Mission = m
		return nil
	}))
}
