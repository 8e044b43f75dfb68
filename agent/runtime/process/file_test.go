package process_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/process"
	"github.com/inflight-ota/inflight/agent/runtime/runtimetest"
)

// TestPullFile imports a plain executable with a sidecar, pinned by its
// content digest, and runs it.
func TestPullFile(t *testing.T) {
	ctx := context.Background()
	r, err := process.New(process.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	bin := runtimetest.BuildCtlProg(t, t.TempDir())
	sc := process.Sidecar{Labels: map[string]string{runtime.LabelVersion: "3.1.0", runtime.LabelHandoffProtocol: "1"}, Cmd: []string{"-name", "side", "-sleep", "0", "-exit", "4"}}
	b, _ := json.Marshal(sc)
	if err := os.WriteFile(bin+".json", b, 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := r.Pull(ctx, "file://"+bin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version() != "3.1.0" || info.Platform() != (runtime.Platform{OS: "linux", Arch: runtime.HostPlatform().Arch}) || info.Digest != info.ID {
		t.Fatalf("info %+v", info)
	}
	if err := runtime.CheckImage(info, runtime.HostPlatform(), 1); err != nil {
		t.Fatal(err)
	}
	again, err := r.Pull(ctx, bin+"@"+info.ID, nil)
	if err != nil || again.ID != info.ID {
		t.Fatalf("pinned pull: %v, %v", again.ID, err)
	}
	_, err = r.Pull(ctx, bin+"@sha256:"+strings.Repeat("0", 64), nil)
	if !errors.Is(err, runtime.ErrIncompatible) {
		t.Fatalf("pull with the wrong pin: %v", err)
	}
	if got, err := r.Inspect(ctx, "file://"+bin); err != nil || got.ID != info.ID {
		t.Fatalf("Inspect(file://) = %v, %v", got.ID, err)
	}
	c, err := r.Start(ctx, runtime.Spec{Name: "side", Image: info.ID, Role: runtime.RoleCold, RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if code, err := r.Wait(ctx, c.ID); err != nil || code != 4 {
		t.Fatalf("Wait = %d, %v; want 4 from the sidecar's default args", code, err)
	}
}

// TestShimKilled: when the shim dies with the controller, the exit code is
// unknown and Wait says so instead of guessing.
func TestShimKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	r, err := process.New(process.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	bin := runtimetest.BuildCtlProg(t, t.TempDir())
	info, err := r.Pull(ctx, bin, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Start(ctx, runtime.Spec{Name: "orphan", Image: info.ID, Role: runtime.RoleStandby, RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		ShimPid int `json:"shim_pid"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "controllers", c.ID, "state.json"))
	if err != nil || json.Unmarshal(b, &st) != nil || st.ShimPid == 0 {
		t.Fatalf("state: %s %v", b, err)
	}
	p, _ := os.FindProcess(st.ShimPid)
	p.Kill()
	if err := r.Kill(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(ctx, c.ID); !errors.Is(err, runtime.ErrExitCodeUnknown) {
		t.Fatalf("Wait = %v, want ErrExitCodeUnknown", err)
	}
	if err := r.Remove(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
}
