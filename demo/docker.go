package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// Seams for tests.
var (
	lookPath = exec.LookPath
	geteuid  = os.Geteuid
)

// dockerPing asks the Docker Engine of the environment (DOCKER_HOST or the
// default socket) for its info.
func dockerPing(ctx context.Context, timeout time.Duration) error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = cli.Info(ctx)
	return err
}

// dockerd is a Docker daemon the demo started, to be stopped at the end.
type dockerd struct {
	pid int
	log string
}

// ensureDocker returns nil when a Docker Engine answers. When none does and
// we are root on a Debian/Ubuntu machine, it installs docker.io (if dockerd
// is missing) and starts dockerd in the background, returning it so that the
// demo can stop it at the end. out receives what apt-get says.
func ensureDocker(ctx context.Context, out io.Writer, note func(string, ...any)) (*dockerd, error) {
	perr := dockerPing(ctx, 3*time.Second)
	if perr == nil {
		return nil, nil
	}
	if h := os.Getenv("DOCKER_HOST"); h != "" && h != "unix:///var/run/docker.sock" {
		return nil, fmt.Errorf("DOCKER_HOST=%s does not answer: %v", h, perr)
	}
	if geteuid() != 0 {
		return nil, fmt.Errorf("no Docker Engine answers and we are not root to start one")
	}
	bin, err := lookPath("dockerd")
	if err != nil {
		apt, aerr := lookPath("apt-get")
		if aerr != nil {
			return nil, fmt.Errorf("dockerd is not installed and there is no apt-get to install docker.io")
		}
		note("installing Docker: apt-get install -y docker.io")
		install := func() error {
			cmd := exec.CommandContext(ctx, apt, "install", "-y", "-q", "docker.io")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			cmd.Stdout, cmd.Stderr = out, out
			return cmd.Run()
		}
		if err := install(); err != nil {
			note("apt-get install failed (%v); apt-get update, then again", err)
			upd := exec.CommandContext(ctx, apt, "update", "-q")
			upd.Stdout, upd.Stderr = out, out
			if err := upd.Run(); err != nil {
				return nil, fmt.Errorf("apt-get update: %w", err)
			}
			if err := install(); err != nil {
				return nil, fmt.Errorf("apt-get install -y docker.io: %w", err)
			}
		}
		if bin, err = lookPath("dockerd"); err != nil {
			return nil, fmt.Errorf("docker.io installed but no dockerd on the PATH")
		}
	}
	logf, err := os.CreateTemp("", "inflight-demo-dockerd-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	note("starting dockerd in the background (log %s)", logf.Name())
	cmd := exec.Command(bin)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dockerd: %w", err)
	}
	d := &dockerd{pid: cmd.Process.Pid, log: logf.Name()}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if dockerPing(ctx, 2*time.Second) == nil {
			return d, nil
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("dockerd exited (%v); see %s", err, d.log)
		case <-ctx.Done():
			d.stop(nil)
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop(nil)
			return nil, fmt.Errorf("dockerd did not answer within 60 s; see %s", d.log)
		}
	}
}

// othersUse reports whether containers the demo did not start run on the
// engine: then a dockerd the demo started stays up for them.
func othersUse(ctx context.Context, runLabel string) bool {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return false
	}
	defer cli.Close()
	cs, err := cli.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("status", "running"))})
	if err != nil {
		return true
	}
	for _, c := range cs {
		if c.Labels[LabelRun] != runLabel {
			return true
		}
	}
	return false
}

// stop ends the daemon (SIGTERM, then SIGKILL after 15 s) and removes its
// log.
func (d *dockerd) stop(note func(string, ...any)) {
	p, err := os.FindProcess(d.pid)
	if err != nil {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if err := p.Signal(syscall.Signal(0)); errors.Is(err, os.ErrProcessDone) || errors.Is(err, syscall.ESRCH) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.Signal(syscall.Signal(0)) == nil {
		_ = p.Kill()
	}
	if note != nil {
		note("stopped the dockerd it started (pid %d)", d.pid)
	}
	os.Remove(d.log)
}

// removeContainers force-removes the containers carrying label=value (what
// the agent left, should its runtime have missed any).
func removeContainers(ctx context.Context, label, value string) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return
	}
	defer cli.Close()
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label+"="+value))})
	if err != nil {
		return
	}
	for _, c := range cs {
		_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	}
}
