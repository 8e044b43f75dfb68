package testsvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// A dockerd started here is shared by every test binary on the machine:
// each one that uses it holds a shared flock on lockPath for its lifetime;
// starting and stopping take it exclusively. The starter records the daemon
// in markerPath; whoever ends last (Main) and finds the marker stops it. So a
// daemon is stopped only if testsvc started it, and never under another
// test binary still using it.
var (
	lockPath   = filepath.Join(os.TempDir(), "inflight-testsvc-dockerd.lock")
	markerPath = filepath.Join(os.TempDir(), "inflight-testsvc-dockerd.json")
)

// Seams for the tests of this package.
var (
	pingDocker  = func(ctx context.Context) error { return dockerInfo(ctx) }
	startDaemon = startDockerd
	daemonStart = 60 * time.Second
	lookPath    = exec.LookPath
)

type marker struct {
	Pid int    `json:"pid"`
	Log string `json:"log"`
}

var docker struct {
	once sync.Once
	err  error
	lock *os.File // holds the shared lock while this binary uses the daemon
	note string
}

// Docker returns a client of a Docker Engine that answers, connected with
// client.FromEnv and API version negotiation. When none answers on the
// default socket, we are root and dockerd is installed, it starts one in the
// background (logging to a temp file) and waits up to 60 s for it; Main stops
// it at the end of the test binary. Otherwise the test is skipped (or fails,
// see Unavailable).
func Docker(t testing.TB) *client.Client {
	t.Helper()
	docker.once.Do(func() { docker.err = ensureDocker() })
	if docker.err != nil {
		Unavailable(t, "no Docker Engine: %v", docker.err)
		return nil
	}
	if docker.note != "" {
		t.Log(docker.note)
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		Unavailable(t, "Docker client: %v", err)
		return nil
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func dockerInfo(ctx context.Context) error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.Info(ctx)
	return err
}

func ping(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return pingDocker(ctx)
}

func ensureDocker() error {
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	if err := flock(f, syscall.LOCK_SH); err != nil {
		f.Close()
		return err
	}
	perr := ping(5 * time.Second)
	if perr == nil {
		docker.lock = f
		return nil
	}
	if h := os.Getenv("DOCKER_HOST"); h != "" && h != "unix:///var/run/docker.sock" {
		f.Close()
		return fmt.Errorf("DOCKER_HOST=%s does not answer: %v", h, perr)
	}
	if os.Geteuid() != 0 {
		f.Close()
		return fmt.Errorf("none answers (%v) and not root to start dockerd", perr)
	}
	dockerd, err := lookPath("dockerd")
	if err != nil {
		f.Close()
		return fmt.Errorf("none answers and dockerd is not installed (apt-get install -y docker.io)")
	}
	if err := flock(f, syscall.LOCK_EX); err != nil { // drops the shared lock first
		f.Close()
		return err
	}
	if ping(5*time.Second) != nil { // nobody started one meanwhile
		m, err := startDaemon(dockerd)
		if err != nil {
			f.Close()
			return err
		}
		docker.note = fmt.Sprintf("testsvc: started dockerd pid %d, log %s", m.Pid, m.Log)
	}
	if err := flock(f, syscall.LOCK_SH); err != nil {
		f.Close()
		return err
	}
	docker.lock = f
	return nil
}

// flock takes a lock, polling for at most two minutes.
func flock(f *os.File, how int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startDockerd(bin string) (marker, error) {
	logf, err := os.CreateTemp("", "inflight-dockerd-*.log")
	if err != nil {
		return marker{}, err
	}
	defer logf.Close()
	cmd := exec.Command(bin)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this binary if Main is not used
	if err := cmd.Start(); err != nil {
		return marker{}, fmt.Errorf("start dockerd: %w", err)
	}
	m := marker{Pid: cmd.Process.Pid, Log: logf.Name()}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b, _ := json.Marshal(m)
	if err := os.WriteFile(markerPath, b, 0o644); err != nil {
		cmd.Process.Kill()
		return marker{}, err
	}
	deadline := time.Now().Add(daemonStart)
	for {
		if ping(2*time.Second) == nil {
			return m, nil
		}
		select {
		case err := <-exited:
			os.Remove(markerPath)
			out, _ := os.ReadFile(m.Log)
			return marker{}, fmt.Errorf("dockerd exited (%v): %s", err, lastLine(out))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stopPid(m.Pid)
			os.Remove(markerPath)
			return marker{}, fmt.Errorf("dockerd did not answer within %v, see %s", daemonStart, m.Log)
		}
	}
}

// stopDocker releases this binary's use of the daemon and, if it is the last
// user of a daemon testsvc started, stops it.
func stopDocker() error {
	f := docker.lock
	if f == nil {
		return nil
	}
	docker.lock = nil
	defer f.Close()
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return nil // another test binary still uses it
	}
	b, err := os.ReadFile(markerPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil // not ours
	} else if err != nil {
		return fmt.Errorf("testsvc: %w", err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil || m.Pid <= 0 {
		os.Remove(markerPath)
		return fmt.Errorf("testsvc: bad marker %s: %q", markerPath, b)
	}
	if isDockerd(m.Pid) {
		stopPid(m.Pid)
	}
	return os.Remove(markerPath)
}

var isDockerd = func(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.TrimSpace(string(comm)) == "dockerd"
}

// stopPid sends SIGTERM and, after 20 s, SIGKILL.
var stopPid = func(pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 200; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
}
