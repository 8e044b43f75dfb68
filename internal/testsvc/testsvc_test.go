package testsvc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

func TestDocker(t *testing.T) {
	cli := Docker(t)
	v, err := cli.ServerVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("engine %s, API %s (client negotiated %s)", v.Version, v.APIVersion, cli.ClientVersion())
}

func TestMosquitto(t *testing.T) {
	addr := Mosquitto(t)
	if err := mqttPing(addr); err != nil {
		t.Fatalf("second CONNECT to %s: %v", addr, err)
	}
	if addr[:10] != "127.0.0.1:" {
		t.Fatalf("addr %s not on loopback", addr)
	}
}

func TestRegistry(t *testing.T) {
	host := Registry(t)
	resp, err := http.Get("http://" + host + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: %s", resp.Status)
	}
}

// TestDaemonLifecycle checks the start/stop protocol with a fake daemon:
// started when none answers, stopped by the last user only, and only when
// testsvc started it.
func TestDaemonLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("testsvc: the start path needs root; skipping")
	}
	dir := t.TempDir()
	saved := []any{lockPath, markerPath, pingDocker, startDaemon, stopPid, isDockerd, lookPath}
	savedLock, savedNote := docker.lock, docker.note
	t.Cleanup(func() {
		lockPath, markerPath = saved[0].(string), saved[1].(string)
		pingDocker = saved[2].(func(context.Context) error)
		startDaemon = saved[3].(func(string) (marker, error))
		stopPid, isDockerd = saved[4].(func(int)), saved[5].(func(int) bool)
		lookPath = saved[6].(func(string) (string, error))
		docker.lock, docker.note = savedLock, savedNote
	})
	lockPath, markerPath = filepath.Join(dir, "lock"), filepath.Join(dir, "marker")
	lookPath = func(string) (string, error) { return "/usr/sbin/dockerd", nil }
	t.Setenv("DOCKER_HOST", "")
	up, started, stopped := false, 0, 0
	pingDocker = func(context.Context) error {
		if up {
			return nil
		}
		return errors.New("down")
	}
	startDaemon = func(string) (marker, error) {
		started++
		up = true
		m := marker{Pid: 4242, Log: "x"}
		b, _ := json.Marshal(m)
		return m, os.WriteFile(markerPath, b, 0o644)
	}
	isDockerd = func(int) bool { return true }
	stopPid = func(pid int) { stopped++; up = false }

	if err := ensureDocker(); err != nil {
		t.Fatal(err)
	}
	if started != 1 {
		t.Fatalf("started %d daemons, want 1", started)
	}
	// Another test binary uses it too: it holds the shared lock.
	other, err := os.OpenFile(lockPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := flock(other, 1 /* LOCK_SH */); err != nil {
		t.Fatal(err)
	}
	if err := stopDocker(); err != nil {
		t.Fatal(err)
	}
	if stopped != 0 {
		t.Fatal("stopped the daemon while another binary used it")
	}
	other.Close()
	// This binary uses it again and is now the last user.
	if err := ensureDocker(); err != nil {
		t.Fatal(err)
	}
	if started != 1 {
		t.Fatal("started a second daemon although one answered")
	}
	if err := stopDocker(); err != nil {
		t.Fatal(err)
	}
	if stopped != 1 {
		t.Fatalf("stopped %d times, want 1", stopped)
	}
	if _, err := os.Stat(markerPath); !os.IsNotExist(err) {
		t.Fatal("marker left behind")
	}
	// A daemon testsvc did not start is never stopped.
	up = true
	if err := ensureDocker(); err != nil {
		t.Fatal(err)
	}
	if err := stopDocker(); err != nil {
		t.Fatal(err)
	}
	if stopped != 1 {
		t.Fatal("stopped a daemon testsvc did not start")
	}
}
