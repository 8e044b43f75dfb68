package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/inflight-ota/inflight/ground"
	"github.com/inflight-ota/inflight/ground/keys"
	"github.com/inflight-ota/inflight/internal/testsvc"
	"github.com/inflight-ota/inflight/mqttapi"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := Run(ctx, args, &out, &errb)
	t.Logf("groundctl %s → %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

// startCLIBroker runs "groundctl broker --listen 127.0.0.1:0" and returns
// its URL.
func startCLIBroker(t *testing.T) string {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() { done <- Run(ctx, []string{"broker", "--listen", "127.0.0.1:0"}, pw, io.Discard); pw.Close() }()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("broker command: %v", err)
	}
	go io.Copy(io.Discard, pr)
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("broker exited %d", code)
		}
	})
	u := regexp.MustCompile(`tcp://127\.0\.0\.1:\d+`).FindString(line)
	if u == "" {
		t.Fatalf("no URL in %q", line)
	}
	return u
}

func testImage(t *testing.T, version string) v1.Image {
	t.Helper()
	img, err := random.Image(2048, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cfg := cf.Config
	cfg.Labels = map[string]string{ground.LabelVersion: version, ground.LabelHandoffProtocol: "1", ground.LabelStateSchema: "2"}
	img, err = mutate.Config(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ = img.ConfigFile()
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func pushToRegistry(t *testing.T, reg, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(reg + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref.String()
}

// TestGroundctl drives every command against the embedded broker (started
// by the broker command itself) and a real mosquitto, with a fake drone.
func TestGroundctl(t *testing.T) {
	for _, b := range []string{"embedded", "mosquitto"} {
		t.Run(b, func(t *testing.T) {
			var url string
			if b == "embedded" {
				url = startCLIBroker(t)
			} else {
				url = "tcp://" + testsvc.Mosquitto(t)
			}
			testCommands(t, url)
		})
	}
}

func testCommands(t *testing.T, url string) {
	dir := t.TempDir()
	bk := []string{"--broker", url}
	with := func(args ...string) []string { return append(args, bk...) }

	// keygen
	if code, out, _ := run(t, "keygen", "--out", dir, "--name", "ground"); code != 0 || !strings.Contains(out, "ground.pub") {
		t.Fatalf("keygen: %d %s", code, out)
	}
	if code, _, _ := run(t, "keygen", "--out", dir, "--name", "ground"); code != ExitFailure {
		t.Errorf("keygen over an existing key: exit %d, want 1", code)
	}
	key := filepath.Join(dir, "ground.key")
	pub, err := keys.LoadPublicKey(filepath.Join(dir, "ground.pub"))
	if err != nil {
		t.Fatal(err)
	}
	fd := startFakeDrone(t, url, "drone-1", []string{"bench"}, mqttapi.NewKeyring(pub))

	// status
	code, out, _ := run(t, with("status")...)
	if code != 0 || !regexp.MustCompile(`drone-1\s+yes\s+1\.0\.0\s+111111111111\s+idle`).MatchString(out) {
		t.Fatalf("status: %d\n%s", code, out)
	}

	// push from a registry, watch to the commit
	reg := testsvc.Registry(t)
	img := testImage(t, "2.0.0")
	ref := pushToRegistry(t, reg, "inflight/flightctl:2.0.0", img)
	dg, _ := img.Digest()
	code, out, _ = run(t, with("push", "--drone", "drone-1", "--image", ref, "--key", key, "--probation", "2s", "--watch")...)
	if code != 0 || !strings.Contains(out, "COMMITTED") || !strings.Contains(out, "control gap 2.50 ms") || !strings.Contains(out, "@"+dg.String()) {
		t.Fatalf("push --watch: %d\n%s", code, out)
	}
	// watch again afterwards: the retained result answers at once.
	code, out, _ = run(t, with("watch", "drone-1", "--timeout", "5s")...)
	if code != 0 || !strings.Contains(out, "COMMITTED") {
		t.Fatalf("watch after the end: %d\n%s", code, out)
	}
	code, out, _ = run(t, with("status", "--json")...)
	var rows []ground.DroneStatus
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil || len(rows) != 1 || rows[0].Version != "2.0.0" || rows[0].LastResult != "committed" || !rows[0].Online {
		t.Fatalf("status --json: %d %v\n%s", code, err, out)
	}

	// a failing update: push, then watch with --json; exit 3
	fd.mu.Lock()
	fd.failNext = "envelope"
	fd.mu.Unlock()
	img3 := testImage(t, "3.0.0")
	ref3 := pushToRegistry(t, reg, "inflight/flightctl:3.0.0", img3)
	if code, _, _ := run(t, with("push", "--drone", "drone-1", "--image", ref3, "--key", key)...); code != 0 {
		t.Fatalf("push: %d", code)
	}
	code, out, _ = run(t, with("watch", "drone-1", "--json", "--timeout", "20s")...)
	if code != ExitUpdate {
		t.Fatalf("watch of a rolled-back update: exit %d, want %d", code, ExitUpdate)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last struct {
		Outcome ground.Outcome `json:"outcome"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Outcome.Result != mqttapi.ResultRolledBack {
		t.Fatalf("last JSON line %q: %v", lines[len(lines)-1], err)
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not a JSON line: %q", l)
		}
	}

	// rollback (to 1.0.0) and cancel, waiting for the outcome
	code, out, _ = run(t, with("rollback", "drone-1", "--reason", "test", "--wait", "--key", key)...)
	if code != 0 || !strings.Contains(out, "ROLLED_BACK") {
		t.Fatalf("rollback --wait: %d\n%s", code, out)
	}
	code, out, _ = run(t, with("cancel", "drone-1", "--wait", "--key", key)...)
	if code != 0 || !strings.Contains(out, "ABORTED") {
		t.Fatalf("cancel --wait: %d\n%s", code, out)
	}
	code, out, _ = run(t, with("status")...)
	if code != 0 || !regexp.MustCompile(`drone-1\s+yes\s+1\.0\.0`).MatchString(out) {
		t.Fatalf("status after rollback: %d\n%s", code, out)
	}

	// registry-less: the image over MQTT from a docker-archive tarball
	img4 := testImage(t, "4.0.0")
	tarPath := filepath.Join(dir, "v4.tar")
	tag, _ := name.NewTag("inflight/flightctl:4.0.0")
	if err := tarball.WriteToFile(tarPath, tag, img4); err != nil {
		t.Fatal(err)
	}
	id4, _ := img4.ConfigName()
	code, out, _ = run(t, with("push", "--drone", "drone-1", "--via", "mqtt", "--image-file", tarPath, "--chunk-size", "1024", "--key", key, "--watch")...)
	if code != 0 || !strings.Contains(out, "COMMITTED") || !strings.Contains(out, "inflight/flightctl@"+id4.String()) || !strings.Contains(out, "MB/s") {
		t.Fatalf("push --via mqtt: %d\n%s", code, out)
	}

	// a fleet push reaches the drone through the fleet topic
	img5 := testImage(t, "5.0.0")
	ref5 := pushToRegistry(t, reg, "inflight/flightctl:5.0.0", img5)
	if code, _, _ := run(t, with("push", "--fleet", "bench", "--image", ref5, "--key", key, "--json")...); code != 0 {
		t.Fatalf("fleet push: %d", code)
	}
	code, out, _ = run(t, with("watch", "drone-1", "--timeout", "20s")...)
	if code != 0 || !strings.Contains(out, "5.0.0") {
		// watch may have started after the end; status tells.
		t.Logf("watch after a fleet push: %d", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, out, _ = run(t, with("status")...)
		if regexp.MustCompile(`drone-1\s+yes\s+5\.0\.0`).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet update never committed:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// a key the drone does not trust: rejected, exit 3 with the reason
	if code, _, _ := run(t, "keygen", "--out", dir, "--name", "rogue"); code != 0 {
		t.Fatal("keygen rogue")
	}
	code, out, _ = run(t, with("push", "--drone", "drone-1", "--image", ref, "--key", filepath.Join(dir, "rogue.key"), "--watch", "--timeout", "20s")...)
	if code != ExitUpdate || !strings.Contains(out, "unknown_key") {
		t.Fatalf("push with an untrusted key: %d\n%s", code, out)
	}

	// usage errors
	for _, args := range [][]string{{"push", "--image", ref}, {"watch"}, {"nosuch"}, {"push", "--drone", "d/1", "--image", "x"}, {"rollback"}} {
		if code, _, _ := run(t, args...); code != ExitUsage {
			t.Errorf("groundctl %v: exit %d, want 2", args, code)
		}
	}
	if code, out, _ := run(t, "watch", "--help"); code != 0 || !strings.Contains(out, "Usage: groundctl watch") {
		t.Errorf("watch --help: %d %q", code, out)
	}
	// an unreachable broker is a failure, not a hang
	if code, _, _ := run(t, "status", "--broker", "tcp://127.0.0.1:1", "--connect-timeout", "1s"); code != ExitFailure {
		t.Errorf("unreachable broker: exit %d", code)
	}
}
