// Package runtimetest is the conformance suite every runtime.Runtime passes
// (the Docker one and the process one): image import and inspection, the
// platform and handoff-label checks, pull by digest from an in-process
// registry, two controllers side by side sharing a run directory (a
// SOCK_SEQPACKET socket between them, flock exclusion on pwm.lock), adoption
// by label from a fresh runtime instance, graceful stop, kill, exit codes,
// logs, isolation where the runtime claims it, removal, pruning and cleanup.
// It also holds the benchmarks that give the runtime's figures.
//
// Everything it creates carries LabelTestRun with a value unique to the run,
// and it removes exactly those controllers and images — never others.
package runtimetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/imagebuild"
)

// LabelTestRun marks images and controllers a test run created.
const LabelTestRun = "org.inflight.test.run"

// CtlProgPackage is the import path of the stand-in controller.
const CtlProgPackage = "github.com/inflight-ota/inflight/agent/runtime/runtimetest/ctlprog"

// Harness describes the runtime under test.
type Harness struct {
	// New returns a runtime instance. Each call must give a fresh
	// instance over the same backing store (engine, state directory), as
	// after an agent restart.
	New func(t testing.TB) runtime.Runtime
	// Isolated says the runtime isolates controllers (no network,
	// read-only root, non-root user, no capabilities, only mapped
	// devices); the isolation checks run only then.
	Isolated bool
	// Run is the value of LabelTestRun on everything the suite creates;
	// NewRunID() when empty.
	Run string
}

// NewRunID returns a unique ID for the labels and names of one run.
func NewRunID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// BuildCtlProg builds the stand-in controller, static, for this machine,
// into dir and returns its path.
func BuildCtlProg(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "ctlprog")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, CtlProgPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("runtimetest: building %s: %v\n%s", CtlProgPackage, err, b)
	}
	return out
}

// Labels returns the image labels of a test controller image.
func Labels(run, version string) map[string]string {
	return map[string]string{
		runtime.LabelVersion:         version,
		runtime.LabelHandoffProtocol: "1",
		runtime.LabelStateSchema:     "1",
		LabelTestRun:                 run,
	}
}

// Tarball builds an image around bin and returns it as a docker-archive.
func Tarball(t testing.TB, c imagebuild.Config, tag string) (v1.Image, []byte) {
	t.Helper()
	img, err := imagebuild.Build(c)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := imagebuild.WriteTarball(&buf, img, tag); err != nil {
		t.Fatal(err)
	}
	return img, buf.Bytes()
}

// WaitLog waits until the controller's log contains want and returns the log.
func WaitLog(t testing.TB, rt runtime.Runtime, id, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		s, err := ReadLog(rt, id, 0)
		if err == nil && strings.Contains(s, want) {
			return s
		}
		if err != nil {
			last = err.Error()
		} else {
			last = s
		}
		if time.Now().After(deadline) {
			t.Fatalf("runtimetest: %q not in the log of %s within %v; log:\n%s", want, id, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ReadLog returns the (last tail lines of the) log of a controller.
func ReadLog(rt runtime.Runtime, id string, tail int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := rt.Logs(ctx, id, runtime.LogOptions{Tail: tail})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// Cleanup removes the controllers and images carrying LabelTestRun=run.
func Cleanup(t testing.TB, rt runtime.Runtime, run string) {
	RemoveControllers(t, rt, run)
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := rt.Prune(c, runtime.PruneOptions{Labels: map[string]string{LabelTestRun: run}}); err != nil {
		t.Errorf("runtimetest: cleanup prune: %v", err)
	}
}

// RemoveControllers removes the controllers carrying LabelTestRun=run.
func RemoveControllers(t testing.TB, rt runtime.Runtime, run string) {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sel := map[string]string{LabelTestRun: run}
	cs, err := rt.List(c, sel)
	if err != nil {
		t.Errorf("runtimetest: cleanup list: %v", err)
	}
	for _, ctl := range cs {
		if err := rt.Remove(c, ctl.ID); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			t.Errorf("runtimetest: cleanup remove %s: %v", ctl.Name, err)
		}
	}
}

func mustErr(t testing.TB, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func withLabels(base map[string]string, extra ...string) map[string]string {
	m := maps.Clone(base)
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

// wrongPlatform is a platform this host does not run.
func wrongPlatform() runtime.Platform {
	if runtime.HostPlatform().Arch == "arm" {
		return runtime.Platform{OS: "linux", Arch: "amd64"}
	}
	return runtime.Platform{OS: "linux", Arch: "arm", Variant: "v7"}
}

func fmtImg(i runtime.ImageInfo) string {
	return fmt.Sprintf("%s %s labels=%v", i.ID, i.Platform(), i.Labels)
}
