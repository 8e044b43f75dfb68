package scripttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/inflight-ota/inflight/agent"
)

// fakes are the commands install-pi.sh and pi-setup.sh run, acting locally:
// ssh runs the remote command here, scp copies here, and the system
// commands only log. apt-get install docker.io "installs" a fake dockerd.
var fakes = map[string]string{
	"ssh": `echo "ssh $*" >>"$FAKE_LOG"
while [ $# -gt 0 ]; do case "$1" in -o|-p|-i|-F|-l|-J) shift 2 ;; -*) shift ;; *) break ;; esac; done
shift # the host
exec bash -c "$*"`,
	"scp": `echo "scp $*" >>"$FAKE_LOG"
args=()
while [ $# -gt 0 ]; do case "$1" in -o|-P|-i|-F|-J) shift 2 ;; -*) shift ;; *) args+=("$1"); shift ;; esac; done
dest=${args[-1]}; unset 'args[-1]'
cp -r "${args[@]}" "${dest#*:}"`,
	"sudo":             `echo "sudo $*" >>"$FAKE_LOG"; exec "$@"`,
	"systemctl":        `echo "systemctl $*" >>"$FAKE_LOG"`,
	"modprobe":         `echo "modprobe $*" >>"$FAKE_LOG"`,
	"udevadm":          `echo "udevadm $*" >>"$FAKE_LOG"`,
	"systemd-tmpfiles": `echo "systemd-tmpfiles $*" >>"$FAKE_LOG"`,
	"uname":            `echo armv7l`,
	"dpkg":             `echo armhf`,
	"hostname":         `echo drone7`,
	"apt-get": `echo "apt-get $*" >>"$FAKE_LOG"
if [ "$1" = install ]; then printf '#!/bin/sh\n' >"$(dirname "$0")/dockerd"; chmod +x "$(dirname "$0")/dockerd"; fi`,
	"docker": `case "$1 $2" in
"image inspect") [ -e "$FAKE_STATE/loaded" ] ;;
"load -i") echo "docker $*" >>"$FAKE_LOG"; touch "$FAKE_STATE/loaded" ;;
*) true ;;
esac`,
}

type pi struct {
	root, log, state string
	env              []string
}

func newPi(t *testing.T) *pi {
	t.Helper()
	dir := t.TempDir()
	p := &pi{root: filepath.Join(dir, "root"), log: filepath.Join(dir, "log"), state: filepath.Join(dir, "state")}
	bin := filepath.Join(dir, "bin")
	for name, body := range fakes {
		writeFile(t, filepath.Join(bin, name), "#!/bin/bash\n"+body+"\n", 0o755)
	}
	os.MkdirAll(p.state, 0o755)
	// A Raspberry Pi OS root as far as the scripts look at it.
	writeFile(t, filepath.Join(p.root, "etc/group"), "root:x:0:\ni2c:x:994:\nnogroup:x:65534:\n", 0o644)
	writeFile(t, filepath.Join(p.root, "boot/firmware/config.txt"), "dtparam=audio=on\n#dtparam=i2c_arm=on\n", 0o755)
	// No /usr/sbin on PATH: the machine's own dockerd must not be seen.
	p.env = []string{"PATH=" + bin + ":/usr/bin:/bin", "FAKE_LOG=" + p.log, "FAKE_STATE=" + p.state}
	return p
}

func (p *pi) takeLog(t *testing.T) string {
	t.Helper()
	b, _ := os.ReadFile(p.log)
	os.Remove(p.log)
	return string(b)
}

func (p *pi) install(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runCmd(t, p.env, filepath.Join(repo(t), "scripts/install-pi.sh"), append([]string{"pi@drone7.local", "--root", p.root}, args...)...)
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
	}
}

func TestInstallPi(t *testing.T) {
	p := newPi(t)
	pub, _ := groundKeys(t)
	agentBin := fakeAgent(t)
	imgTar := filepath.Join(t.TempDir(), "flightctl-1.0.0-armv6.tar")
	writeFile(t, imgTar, "not really a tarball", 0o644)
	args := []string{"--broker", "tcp://ground.local:1883", "--keys", pub, "--agent-bin", agentBin,
		"--image", "inflight/flightctl:1.0.0", "--image-tar", imgTar, "--ssh-opts", "-p 2222 -o StrictHostKeyChecking=no"}

	// First run: probes the Pi (armhf on armv7l: armv7; host name drone7),
	// installs everything, Docker included, and starts the agent.
	out := mustRun(t, p.env, filepath.Join(repo(t), "scripts/install-pi.sh"), append([]string{"pi@drone7.local", "--root", p.root}, args...)...)
	log := p.takeLog(t)
	t.Logf("first run:\n%s\ncommands:\n%s", out, log)
	for _, want := range []string{
		"ssh -p 2222 -o StrictHostKeyChecking=no pi@drone7.local uname -m",
		"scp -P 2222 -o StrictHostKeyChecking=no -q -r", // -p became -P for scp
		"sudo bash /tmp/inflight-install.",
		"apt-get install -y docker.io",
		"systemctl enable --now docker.service",
		"docker load -i " + p.root + "/var/lib/inflight/images/flightctl-1.0.0-armv6.tar",
		"systemctl daemon-reload",
		"systemctl enable inflight-agent.service",
		"systemctl restart inflight-agent.service",
		"systemd-tmpfiles --create /etc/tmpfiles.d/inflight.conf",
		"modprobe i2c-dev",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q in the commands run", want)
		}
	}
	if !strings.Contains(out, "--arch armv7") {
		t.Errorf("architecture not probed:\n%s", out)
	}
	for path, mode := range map[string]os.FileMode{
		"usr/local/bin/inflight-agent":                      0o755,
		"etc/inflight/agent.toml":                           0o640,
		"etc/inflight/keys/ground.pub":                      0o644,
		"etc/systemd/system/inflight-agent.service":         0o644,
		"etc/tmpfiles.d/inflight.conf":                      0o644,
		"etc/modules-load.d/inflight-i2c.conf":              0o644,
		"etc/udev/rules.d/60-inflight-i2c.rules":            0o644,
		"var/lib/inflight/images/flightctl-1.0.0-armv6.tar": 0o644,
	} {
		checkMode(t, filepath.Join(p.root, path), mode)
	}
	if _, err := os.Stat(filepath.Join(p.root, "etc/systemd/system/inflight-firstboot.service")); err == nil {
		t.Error("the first-boot unit is for offline cards only")
	}
	cfgTxt, _ := os.ReadFile(filepath.Join(p.root, "boot/firmware/config.txt"))
	if !strings.Contains(string(cfgTxt), "\ndtparam=i2c_arm=on\n") {
		t.Errorf("config.txt:\n%s", cfgTxt)
	}
	// The config is one the agent accepts, for this drone and the Pi's i2c group.
	cfg, err := agent.LoadConfig(filepath.Join(p.root, "etc/inflight/agent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Keys.Trusted != "/etc/inflight/keys" {
		t.Errorf("keys.trusted %q", cfg.Keys.Trusted)
	}
	cfg.Keys.Trusted = filepath.Join(p.root, "etc/inflight/keys")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Drone != "drone7" || cfg.Arch != "linux/arm/v7" || cfg.MQTT.Broker != "tcp://ground.local:1883" ||
		cfg.Controller.Image != "inflight/flightctl:1.0.0" || strings.Join(cfg.Controller.GroupAdd, ",") != "994" ||
		strings.Join(cfg.Controller.Devices, ",") != "/dev/i2c-1" || cfg.Runtime.Kind != "docker" {
		t.Errorf("config %+v", cfg)
	}
	// The remote temporary directory is gone.
	if m, _ := filepath.Glob("/tmp/inflight-install.*"); len(m) > 0 {
		for _, d := range m {
			if _, err := os.Stat(filepath.Join(d, "stage/etc/inflight/keys/ground.pub")); err == nil {
				if b, _ := os.ReadFile(filepath.Join(d, "stage/etc/inflight/keys/ground.pub")); string(b) == readFile(t, pub) {
					t.Errorf("remote temporary directory %s left behind", d)
				}
			}
		}
	}

	// Second run, nothing new: no apt-get, no docker load, no restart.
	out = mustRun(t, p.env, filepath.Join(repo(t), "scripts/install-pi.sh"), append([]string{"pi@drone7.local", "--root", p.root, "--arch", "armv7", "--drone-id", "drone7"}, args...)...)
	log = p.takeLog(t)
	if strings.Contains(log, "apt-get") || strings.Contains(log, "docker load") || strings.Contains(log, "restart") ||
		!strings.Contains(log, "systemctl start inflight-agent.service") || !strings.Contains(out, "nothing changed") {
		t.Errorf("second run was not a no-op:\n%s\ncommands:\n%s", out, log)
	}

	// Third run with another broker: the config changes, the old one is
	// kept, the agent restarts.
	args[1] = "tcp://ground2.local:1883"
	mustRun(t, p.env, filepath.Join(repo(t), "scripts/install-pi.sh"), append([]string{"pi@drone7.local", "--root", p.root, "--arch", "armv7", "--drone-id", "drone7"}, args...)...)
	log = p.takeLog(t)
	if !strings.Contains(log, "systemctl restart inflight-agent.service") {
		t.Errorf("no restart after a config change:\n%s", log)
	}
	if !strings.Contains(readFile(t, filepath.Join(p.root, "etc/inflight/agent.toml.bak")), "tcp://ground.local:1883") ||
		!strings.Contains(readFile(t, filepath.Join(p.root, "etc/inflight/agent.toml")), "tcp://ground2.local:1883") {
		t.Error("config not replaced with a backup")
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

func TestInstallPiDryRun(t *testing.T) {
	p := newPi(t)
	pub, _ := groundKeys(t)
	out := mustRun(t, p.env, filepath.Join(repo(t), "scripts/install-pi.sh"), "pi@drone7.local", "--dry-run",
		"--broker", "tcp://ground.local:1883", "--keys", pub, "--agent-bin", fakeAgent(t), "--arch", "arm64", "--drone-id", "d1")
	for _, want := range []string{
		"/usr/local/bin/inflight-agent", "/etc/inflight/agent.toml", "/etc/inflight/keys/ground.pub",
		"/etc/systemd/system/inflight-agent.service", "linux/arm64", "would run:", "ssh pi@drone7.local mktemp",
		"sudo bash @TMP@/pi-setup.sh",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run does not say %q:\n%s", want, out)
		}
	}
	if log := p.takeLog(t); log != "" {
		t.Errorf("dry run ran commands:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(p.root, "etc/inflight")); err == nil {
		t.Error("dry run wrote files")
	}
}

func TestInstallPiRefusesAPrivateKey(t *testing.T) {
	p := newPi(t)
	_, priv := groundKeys(t)
	out, err := p.install(t, "--broker", "tcp://g:1883", "--keys", priv, "--agent-bin", fakeAgent(t), "--arch", "arm64", "--drone-id", "d1")
	if err == nil || !strings.Contains(out, "PRIVATE key") {
		t.Fatalf("a private key was accepted: %v\n%s", err, out)
	}
	if log := p.takeLog(t); strings.Contains(log, "scp") {
		t.Errorf("copied before refusing:\n%s", log)
	}
}
