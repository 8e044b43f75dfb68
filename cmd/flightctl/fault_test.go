package main

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/handoff"
	"github.com/inflight-ota/inflight/hw/pwmlock"
	"github.com/inflight-ota/inflight/sim"
)

// buildFlightctl builds this command into a temporary directory.
func buildFlightctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flightctl")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type faultRun struct {
	cmd  *exec.Cmd
	dir  string
	done chan error
}

// startWithFault runs flightctl cold on a simulated drone with the fault
// flag, starts a handoff towards a standby socket that accepts and never
// answers (v1 stays in hello), and returns once handoff_start was answered.
// pid1 runs it in a new PID namespace, as a container's init.
func startWithFault(t *testing.T, bin, flag string, pid1, inProcessEnv bool) *faultRun {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	d := sim.New(&sim.Options{})
	bus := filepath.Join(dir, "bus.sock")
	ln, err := sim.Listen(bus)
	if err != nil {
		t.Fatal(err)
	}
	go d.Run(ctx)
	go sim.ServeListener(ctx, ln, d, nil)

	hl, err := handoff.Listen(filepath.Join(dir, "handoff.v2.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hl.Close() })
	go func() {
		c, err := hl.Accept()
		if err == nil {
			<-ctx.Done()
			c.Close()
		}
	}()

	cmd := exec.Command(bin, "--role", "cold", "--bus", "unix://"+bus, "--run-dir", dir, "--name", "v1", flag, "hello:3")
	cmd.Env = os.Environ()
	if inProcessEnv {
		cmd.Env = append(cmd.Env, "INFLIGHT_FAULT_IN_PROCESS=1")
	}
	if pid1 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	cmd.Stderr = testLogWriter{t}
	if err := cmd.Start(); err != nil {
		if pid1 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
			t.Skipf("no new PID namespace here: %v", err)
		}
		t.Fatal(err)
	}
	r := &faultRun{cmd: cmd, dir: dir, done: make(chan error, 1)}
	go func() { r.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-r.done
	})

	var resp string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err = r.request(`{"v":1,"cmd":"handoff_start","to":"handoff.v2.sock","peer":"v2"}`, 2*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handoff_start: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("handoff_start: %s", resp)
	return r
}

// request sends one control request and reads its answer within d.
func (r *faultRun) request(line string, d time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", filepath.Join(r.dir, "control.v1.sock"), d)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// lockFree reports whether the PWM lock can be taken (and gives it back).
func (r *faultRun) lockFree(t *testing.T) bool {
	l := pwmlock.New(r.dir)
	ok, err := l.TryAcquire()
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		l.Release()
	}
	return ok
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Logf("flightctl: %s", p)
	return len(p), nil
}

var faultModes = []struct {
	name          string
	pid1, inProcE bool
}{
	{"pid1", true, false},       // a container's init: the kernel would drop the self-signal
	{"in-process", false, true}, // the same emulation, forced
	{"signal", false, false},    // a normal process: the real signal
}

// --debug-die-in: the process ends abruptly in the phase (as PID 1: exit
// status 137 with no cleanup; otherwise SIGKILL), and the kernel frees the
// PWM lock.
func TestDebugDieIn(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs flightctl")
	}
	bin := buildFlightctl(t)
	for _, m := range faultModes {
		t.Run(m.name, func(t *testing.T) {
			r := startWithFault(t, bin, "--debug-die-in", m.pid1, m.inProcE)
			var err error
			select {
			case err = <-r.done:
				r.done <- err
			case <-time.After(5 * time.Second):
				t.Fatal("flightctl did not die in hello")
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("exit: %v", err)
			}
			ws := ee.Sys().(syscall.WaitStatus)
			if m.pid1 || m.inProcE {
				if ws.Signaled() || ws.ExitStatus() != 137 {
					t.Errorf("exit %v, want status 137", ws)
				}
			} else if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Errorf("exit %v, want killed by SIGKILL", ws)
			}
			if !r.lockFree(t) {
				t.Error("the PWM lock is still held after the process died")
			}
		})
	}
}

// --debug-stall-in: the process stays alive, holds the PWM lock, and
// answers nothing on its control socket.
func TestDebugStallIn(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs flightctl")
	}
	bin := buildFlightctl(t)
	for _, m := range faultModes {
		t.Run(m.name, func(t *testing.T) {
			r := startWithFault(t, bin, "--debug-stall-in", m.pid1, m.inProcE)
			time.Sleep(200 * time.Millisecond) // well past hello:3
			select {
			case err := <-r.done:
				t.Fatalf("flightctl exited: %v", err)
			default:
			}
			if resp, err := r.request(`{"v":1,"cmd":"status"}`, time.Second); err == nil {
				t.Errorf("a stalled flightctl answered: %s", resp)
			}
			if r.lockFree(t) {
				t.Error("a stalled flightctl let the PWM lock go")
			}
			select {
			case err := <-r.done:
				t.Fatalf("flightctl exited: %v", err)
			default:
			}
		})
	}
}
