package scripttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var shellScripts = []string{
	"scripts/install-pi.sh", "scripts/prepare-sd.sh", "scripts/lib/common.sh",
	"deploy/pi-setup.sh", "deploy/firstboot.sh",
}

func TestShellcheck(t *testing.T) {
	need(t, "shellcheck")
	args := append([]string{"-x"}, shellScripts...)
	cmd := exec.Command("shellcheck", args...)
	cmd.Dir = repo(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("shellcheck: %v\n%s", err, out)
	}
}

func TestScriptsParseAndAreExecutable(t *testing.T) {
	for _, s := range shellScripts {
		p := filepath.Join(repo(t), s)
		mustRun(t, nil, "bash", "-n", p)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(s, "common.sh") && st.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, s := range []string{"scripts/install-pi.sh", "scripts/prepare-sd.sh", "deploy/pi-setup.sh"} {
		out := mustRun(t, nil, filepath.Join(repo(t), s), "--help")
		if !strings.Contains(out, "usage:") || !strings.Contains(out, "--dry-run") {
			t.Errorf("%s --help:\n%s", s, out)
		}
	}
	// Bad command lines exit 2 and say why.
	for _, args := range [][]string{
		{"scripts/install-pi.sh"},
		{"scripts/install-pi.sh", "pi@x", "--arch", "mips", "--drone-id", "d", "--broker", "tcp://h:1", "--keys", "/dev/null", "--dry-run"},
		{"scripts/install-pi.sh", "pi@x", "--bogus"},
		{"scripts/prepare-sd.sh"},
		{"scripts/prepare-sd.sh", "/dev/null", "--fat", "ntfs"},
	} {
		out, err := runCmd(t, nil, filepath.Join(repo(t), args[0]), args[1:]...)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(out, "try:") {
			t.Errorf("%q: %v\n%s", args, err, out)
		}
	}
}

// TestUnitsVerify runs systemd-analyze verify on the units inside a
// temporary root holding the programs they start and systemd's own units.
func TestUnitsVerify(t *testing.T) {
	need(t, "systemd-analyze")
	root := t.TempDir()
	for _, u := range []string{"inflight-agent.service", "inflight-firstboot.service"} {
		b, err := os.ReadFile(filepath.Join(repo(t), "deploy", u))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, "etc/systemd/system", u), string(b), 0o644)
	}
	writeFile(t, filepath.Join(root, "usr/local/bin/inflight-agent"), "#!/bin/sh\n", 0o755)
	writeFile(t, filepath.Join(root, "usr/local/lib/inflight/firstboot.sh"), "#!/bin/sh\n", 0o755)
	// systemd's units (sysinit.target, multi-user.target …) from this machine.
	sys := "/usr/lib/systemd/system"
	if _, err := os.Stat(sys); err != nil {
		sys = "/lib/systemd/system"
	}
	mustRun(t, nil, "mkdir", "-p", filepath.Join(root, "usr/lib/systemd"))
	mustRun(t, nil, "cp", "-r", sys, filepath.Join(root, "usr/lib/systemd/system"))
	out, err := runCmd(t, nil, "systemd-analyze", "verify", "--root="+root, "inflight-agent.service", "inflight-firstboot.service")
	if err != nil || strings.TrimSpace(out) != "" {
		// Warnings (an unknown key, a bad value) count as failures too.
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The hardening, as systemd scores it (0 best, 10 worst).
	out, err = runCmd(t, nil, "systemd-analyze", "security", "--offline=yes", "--root="+root, "inflight-agent.service")
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for inflight-agent.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	level, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security: exposure %.1f", level)
	if level > 5.0 {
		t.Errorf("exposure %.1f: the unit lost its hardening", level)
	}
}

// TestUnitKeepsTheFlightAlive pins the unit settings the safety case needs.
func TestUnitKeepsTheFlightAlive(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repo(t), "deploy/inflight-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string // the settings, without the comments
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	unit := strings.Join(lines, "\n")
	for _, want := range []string{
		"KillMode=process", // stopping the agent never kills a controller
		"Restart=always",   // the agent comes back and reconciles its journal
		"ReadWritePaths=/run/inflight",
		"After=network-online.target docker.service",
		"ExecStart=/usr/local/bin/inflight-agent --config /etc/inflight/agent.toml",
		"WantedBy=multi-user.target",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	for _, bad := range []string{"RuntimeDirectory=", "Requires=docker.service", "PrivateNetwork=yes"} {
		if strings.Contains(unit, bad) {
			t.Errorf("unit has %q", bad)
		}
	}
}

// TestConfigTxt checks how pi-setup.sh turns I2C on in config.txt variants.
func TestConfigTxt(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"commented (Raspberry Pi OS default)": {
			"dtparam=audio=on\n#dtparam=i2c_arm=on\n#dtparam=spi=on\n[pi4]\narm_boost=1\n",
			"dtparam=audio=on\ndtparam=i2c_arm=on\n#dtparam=spi=on\n[pi4]\narm_boost=1\n\n[all]\ndtparam=i2c_arm_baudrate=400000\n",
		},
		"off": {
			"dtparam=i2c_arm=off\ndtparam=i2c_arm_baudrate=100000\n",
			"dtparam=i2c_arm=on\ndtparam=i2c_arm_baudrate=100000\n",
		},
		"already on": {
			"dtparam=i2c_arm=on\ndtparam=i2c_arm_baudrate=400000\n",
			"dtparam=i2c_arm=on\ndtparam=i2c_arm_baudrate=400000\n",
		},
		"absent, no final newline": {
			"arm_64bit=1",
			"arm_64bit=1\n\n[all]\ndtparam=i2c_arm=on\n\n[all]\ndtparam=i2c_arm_baudrate=400000\n",
		},
		"empty": {
			"",
			"\n[all]\ndtparam=i2c_arm=on\n\n[all]\ndtparam=i2c_arm_baudrate=400000\n",
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			stage := filepath.Join(dir, "stage")
			writeFile(t, filepath.Join(stage, "etc/modules-load.d/inflight-i2c.conf"), "i2c-dev\n", 0o644)
			root := filepath.Join(dir, "root")
			writeFile(t, filepath.Join(root, "etc/group"), "root:x:0:\ni2c:x:998:\n", 0o644)
			cfg := filepath.Join(dir, "config.txt")
			writeFile(t, cfg, tc.in, 0o755)
			for i := 0; i < 2; i++ { // the second run changes nothing
				mustRun(t, nil, filepath.Join(repo(t), "deploy/pi-setup.sh"), "--offline", "--stage", stage, "--root", root, "--config-txt", cfg)
				got, _ := os.ReadFile(cfg)
				if string(got) != tc.want {
					t.Fatalf("run %d: config.txt\n%q\nwant\n%q", i+1, got, tc.want)
				}
			}
			if st, _ := os.Stat(cfg); st.Mode().Perm() != 0o755 {
				t.Errorf("config.txt mode %v changed", st.Mode())
			}
		})
	}
}
