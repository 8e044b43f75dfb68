package agent

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The example file documents every key: it must parse, with the values it
// shows.
func TestExampleConfigParses(t *testing.T) {
	c, err := LoadConfig("agent.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Drone != "drone-7" || len(c.Fleets) != 2 || c.MQTT.CertFile == "" || c.Controller.MemoryMB != 64 || c.Policy.BatteryFloorPct != 40 ||
		c.Timeouts.Fetch != 10*time.Minute || c.Telemetry.RateHz != 4 || c.Controller.Args[1] != "{role}" {
		t.Errorf("example parsed as %+v", c)
	}
}

func TestConfigErrorsAreClear(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	if _, err := LoadConfig(write("drone = \"d\"\n[mqtt]\nbrokr = \"x\"\n")); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "mqtt.brokr") {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := LoadConfig(write("drone = \n")); !errors.Is(err, ErrConfig) {
		t.Errorf("bad TOML: %v", err)
	}
	c, err := LoadConfig(write(`drone = "bad/id"
[runtime]
kind = "podman"
[policy]
battery_floor_pct = 120
[paths]
run_dir = "relative"
`))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	for _, want := range []string{"drone \"bad/id\"", "mqtt.broker: required", "keys.trusted: required", "runtime.kind \"podman\"", "battery_floor_pct 120", "paths.run_dir \"relative\"", "controller.image: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v\nmissing %q", err, want)
		}
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "k.pem")
	os.WriteFile(keys, []byte("x"), 0o600)
	cfgFile := filepath.Join(dir, "c.toml")
	os.WriteFile(cfgFile, []byte(`drone = "d1"
[mqtt]
broker = "tcp://127.0.0.1:1883"
[keys]
trusted = "`+keys+`"
[controller]
image = "img:1"
`), 0o600)
	c, err := ConfigFromArgs([]string{"--config", cfgFile, "--drone", "d2", "--fleets", "a, b", "--probation", "3s", "--runtime", "process", "--state-dir", dir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Drone != "d2" || len(c.Fleets) != 2 || c.Fleets[1] != "b" || c.Policy.Probation != 3*time.Second || c.Runtime.Kind != "process" ||
		c.Runtime.ProcessDir != filepath.Join(dir, "process") || c.MQTT.ClientID != "inflight-agent-d2" || c.Controller.Image != "img:1" {
		t.Errorf("config %+v", c)
	}
	var out strings.Builder
	if _, err := ConfigFromArgs([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "--config") && !strings.Contains(out.String(), "-config") {
		t.Errorf("help: %v\n%s", err, out.String())
	}
	if _, err := ConfigFromArgs([]string{"--drone", "d1"}, io.Discard); !errors.Is(err, ErrConfig) {
		t.Errorf("missing settings: %v", err)
	}
}
