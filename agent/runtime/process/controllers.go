package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	rt "github.com/inflight-ota/inflight/agent/runtime"
)

// shim runs the controller as its child, records the child's pid in $1/pid
// and, once the child has ended, its exit status (128+signal when killed) in
// $1/exit. It lives in its own session, so it outlives the agent.
const shim = `d=$1; shift
"$@" </dev/null &
p=$!
echo $p >"$d/pid"
wait $p
echo $? >"$d/exit"
`

// state is Dir/controllers/<id>/state.json.
type state struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Image     string            `json:"image"`
	Labels    map[string]string `json:"labels"`
	Args      []string          `json:"args"`
	RunDir    string            `json:"run_dir"`
	CreatedAt time.Time         `json:"created_at"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	Pid       int               `json:"pid,omitempty"`
	PidStart  uint64            `json:"pid_start,omitempty"` // /proc/<pid>/stat starttime, in clock ticks since boot
	ShimPid   int               `json:"shim_pid,omitempty"`
	ShimStart uint64            `json:"shim_start,omitempty"`
}

func (r *Runtime) stateDir(id string) string { return filepath.Join(r.ctlDir(), id) }

func (r *Runtime) states() ([]state, error) {
	ents, err := os.ReadDir(r.ctlDir())
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	var out []state
	for _, e := range ents {
		var s state
		if err := readJSON(filepath.Join(r.ctlDir(), e.Name(), "state.json"), &s); err == nil {
			out = append(out, s)
		}
	}
	return out, nil
}

// resolve finds a controller by ID, name or unique ID prefix.
func (r *Runtime) resolve(id string) (state, error) {
	var s state
	if id != "" && !strings.ContainsAny(id, "/.") {
		if err := readJSON(filepath.Join(r.stateDir(id), "state.json"), &s); err == nil {
			return s, nil
		}
	}
	all, err := r.states()
	if err != nil {
		return s, err
	}
	var match []state
	for _, c := range all {
		if c.Name == id {
			return c, nil
		}
		if len(id) >= 4 && strings.HasPrefix(c.ID, id) {
			match = append(match, c)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	return s, fmt.Errorf("process: controller %s: %w", id, rt.ErrNotFound)
}

// Start starts a controller process through the shim.
func (r *Runtime) Start(ctx context.Context, spec rt.Spec) (rt.Controller, error) {
	if err := spec.Validate(); err != nil {
		return rt.Controller{}, err
	}
	img, err := r.find(spec.Image)
	if err != nil {
		return rt.Controller{}, err
	}
	if st, err := os.Stat(spec.RunDir); err != nil || !st.IsDir() {
		return rt.Controller{}, fmt.Errorf("process: run dir %s: %w", spec.RunDir, rt.ErrInvalidSpec)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.resolve(spec.Name); err == nil {
		return rt.Controller{}, fmt.Errorf("process: controller %s: %w", spec.Name, rt.ErrExists)
	}
	labels := maps.Clone(img.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, spec.ControllerLabels())
	if spec.RealTime {
		labels[rt.LabelRealTime] = string(rt.RealTimeHost)
	}
	args := spec.Args
	if len(args) == 0 {
		args = img.Cmd
	}
	s := state{
		ID: randomID(), Name: spec.Name, Image: img.ID, Labels: labels, Args: args,
		RunDir: spec.RunDir, CreatedAt: time.Now().UTC(),
	}
	dir := r.stateDir(s.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return rt.Controller{}, fmt.Errorf("process: %w", err)
	}
	if err := writeJSON(filepath.Join(dir, "state.json"), s); err != nil {
		return rt.Controller{}, fmt.Errorf("process: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return rt.Controller{}, fmt.Errorf("process: %w", err)
	}
	defer logf.Close()
	start := time.Now()
	cmd := exec.Command(r.shell, append([]string{"-c", shim, "inflight-shim", dir, r.exePath(img.ID)}, args...)...)
	cmd.Env = append(append([]string{}, img.Env...), spec.ControllerEnv(spec.RunDir)...)
	cmd.Dir = spec.RunDir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return rt.Controller{}, fmt.Errorf("process: start %s: %w", spec.Name, err)
	}
	go cmd.Wait() // reap the shim if it ends while we live
	s.ShimPid = cmd.Process.Pid
	s.ShimStart, _ = procStart(s.ShimPid)
	s.StartedAt = time.Now().UTC()
	// The shim writes the controller's pid at once.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if pid, ok := readInt(filepath.Join(dir, "pid")); ok {
			s.Pid = pid
			s.PidStart, _ = procStart(pid)
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return rt.Controller{}, fmt.Errorf("process: start %s: the shim wrote no pid within 5s", spec.Name)
		}
		time.Sleep(time.Millisecond)
	}
	if err := writeJSON(filepath.Join(dir, "state.json"), s); err != nil {
		syscall.Kill(s.Pid, syscall.SIGKILL)
		return rt.Controller{}, fmt.Errorf("process: %w", err)
	}
	r.log.Info("controller started", "name", spec.Name, "id", s.ID[:12], "pid", s.Pid, "image", img.ID, "role", spec.Role, "duration", time.Since(start))
	return r.controller(s), nil
}

// readInt reads a file holding a decimal integer and a newline.
func readInt(p string) (int, bool) {
	b, err := os.ReadFile(p)
	if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
		return 0, false
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	return n, err == nil
}

// procStart returns the start time of pid (field 22 of /proc/pid/stat) and
// whether it is a zombie.
func procStart(pid int) (start uint64, err error) {
	start, zombie, err := procStat(pid)
	if err == nil && zombie {
		err = errors.New("zombie")
	}
	return start, err
}

func procStat(pid int) (start uint64, zombie bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("bad stat %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, false, fmt.Errorf("bad stat %q", b)
	}
	start, err = strconv.ParseUint(f[19], 10, 64) // field 22 overall; f[0] is field 3
	return start, f[0] == "Z", err
}

// alive reports whether pid still is the process that was started at start.
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, err := procStart(pid)
	return err == nil && (start == 0 || got == start)
}

// controller derives the live view of s.
func (r *Runtime) controller(s state) rt.Controller {
	c := rt.Controller{ID: s.ID, Name: s.Name, Image: s.Image, Labels: s.Labels, StartedAt: s.StartedAt}
	c.FillFromLabels()
	dir := r.stateDir(s.ID)
	if code, ok := readInt(filepath.Join(dir, "exit")); ok {
		c.State, c.ExitCode = rt.StateExited, code
		if st, err := os.Stat(filepath.Join(dir, "exit")); err == nil {
			c.FinishedAt = st.ModTime()
		}
		return c
	}
	switch {
	case s.Pid == 0 && alive(s.ShimPid, s.ShimStart):
		c.State = rt.StateCreated
	case alive(s.Pid, s.PidStart):
		c.State, c.Pid = rt.StateRunning, s.Pid
	case alive(s.ShimPid, s.ShimStart):
		c.State = rt.StateRunning // ended a moment ago; the shim is writing its status
	default:
		c.State, c.ExitCode = rt.StateExited, -1 // ended without a status (the shim was killed)
	}
	return c
}

// Get returns one controller.
func (r *Runtime) Get(ctx context.Context, id string) (rt.Controller, error) {
	s, err := r.resolve(id)
	if err != nil {
		return rt.Controller{}, err
	}
	return r.controller(s), nil
}

// List returns the controllers carrying labels.
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]rt.Controller, error) {
	all, err := r.states()
	if err != nil {
		return nil, err
	}
	var out []rt.Controller
	for _, s := range all {
		if s.Labels[rt.LabelController] == "true" && rt.HasLabels(s.Labels, labels) {
			out = append(out, r.controller(s))
		}
	}
	return out, nil
}

// signal sends sig to the controller if it still is the process started,
// through a pidfd so a reused pid is never hit.
func signal(s state, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(s.Pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		if !alive(s.Pid, s.PidStart) {
			return nil
		}
		return syscall.Kill(s.Pid, sig) // kernel without pidfd
	}
	defer unix.Close(fd)
	if !alive(s.Pid, s.PidStart) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILL.
func (r *Runtime) Stop(ctx context.Context, id string, timeout time.Duration) error {
	s, err := r.resolve(id)
	if err != nil {
		return err
	}
	if r.controller(s).State == rt.StateExited {
		return nil
	}
	if err := signal(s, syscall.SIGTERM); err != nil {
		return fmt.Errorf("process: stop %s: %w", s.Name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	_, werr := r.wait(wctx, s)
	cancel()
	if werr == nil || errors.Is(werr, rt.ErrExitCodeUnknown) {
		r.log.Info("controller stopped", "name", s.Name)
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("process: stop %s: %w", s.Name, ctx.Err())
	}
	r.log.Warn("controller ignored SIGTERM, killing", "name", s.Name, "timeout", timeout)
	if err := signal(s, syscall.SIGKILL); err != nil {
		return fmt.Errorf("process: kill %s: %w", s.Name, err)
	}
	_, err = r.wait(ctx, s)
	if errors.Is(err, rt.ErrExitCodeUnknown) {
		err = nil
	}
	return err
}

// Kill sends SIGKILL.
func (r *Runtime) Kill(ctx context.Context, id string) error {
	s, err := r.resolve(id)
	if err != nil {
		return err
	}
	if err := signal(s, syscall.SIGKILL); err != nil {
		return fmt.Errorf("process: kill %s: %w", s.Name, err)
	}
	return nil
}

// Wait polls until the controller has ended.
func (r *Runtime) Wait(ctx context.Context, id string) (int, error) {
	s, err := r.resolve(id)
	if err != nil {
		return -1, err
	}
	return r.wait(ctx, s)
}

func (r *Runtime) wait(ctx context.Context, s state) (int, error) {
	t := time.NewTicker(r.poll)
	defer t.Stop()
	for {
		if _, err := os.Stat(filepath.Join(r.stateDir(s.ID), "state.json")); err != nil {
			return -1, fmt.Errorf("process: controller %s: %w", s.Name, rt.ErrNotFound)
		}
		if c := r.controller(s); c.State == rt.StateExited {
			if c.ExitCode < 0 {
				return -1, fmt.Errorf("process: controller %s: %w", s.Name, rt.ErrExitCodeUnknown)
			}
			return c.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("process: wait %s: %w", s.Name, ctx.Err())
		case <-t.C:
		}
	}
}

// Remove kills the controller if it runs and deletes its state and log.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	s, err := r.resolve(id)
	if err != nil {
		return err
	}
	if r.controller(s).State != rt.StateExited {
		if err := signal(s, syscall.SIGKILL); err != nil {
			return fmt.Errorf("process: remove %s: %w", s.Name, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := r.wait(wctx, s)
		cancel()
		if err != nil && !errors.Is(err, rt.ErrExitCodeUnknown) {
			return fmt.Errorf("process: remove %s: %w", s.Name, err)
		}
	}
	if err := os.RemoveAll(r.stateDir(s.ID)); err != nil {
		return fmt.Errorf("process: remove %s: %w", s.Name, err)
	}
	r.log.Info("controller removed", "name", s.Name)
	return nil
}

// Logs returns the controller's log file (stdout and stderr as written).
func (r *Runtime) Logs(ctx context.Context, id string, opts rt.LogOptions) (io.ReadCloser, error) {
	s, err := r.resolve(id)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(r.stateDir(s.ID), "log"))
	if err != nil {
		return nil, fmt.Errorf("process: logs %s: %w", s.Name, err)
	}
	if opts.Tail > 0 {
		if err := seekTail(f, opts.Tail); err != nil {
			f.Close()
			return nil, fmt.Errorf("process: logs %s: %w", s.Name, err)
		}
	}
	if !opts.Follow {
		return f, nil
	}
	return &follower{f: f, ctx: ctx, r: r, s: s}, nil
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	buf := make([]byte, 64<<10)
	lines := 0
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		chunk := buf[:end-start]
		if _, err := f.ReadAt(chunk, start); err != nil {
			return err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] == '\n' && start+int64(i) != size-1 {
				lines++
				if lines == n {
					_, err := f.Seek(start+int64(i)+1, io.SeekStart)
					return err
				}
			}
		}
		end = start
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// follower reads a log file and, at its end, waits for more until the
// controller has ended or ctx is done.
type follower struct {
	f   *os.File
	ctx context.Context
	r   *Runtime
	s   state
}

func (l *follower) Read(p []byte) (int, error) {
	for {
		n, err := l.f.Read(p)
		if n > 0 || err != io.EOF {
			return n, err
		}
		if l.r.controller(l.s).State == rt.StateExited {
			if n, err = l.f.Read(p); n > 0 {
				return n, nil
			}
			return 0, io.EOF
		}
		select {
		case <-l.ctx.Done():
			return 0, io.EOF
		case <-time.After(l.r.poll):
		}
	}
}

func (l *follower) Close() error { return l.f.Close() }
