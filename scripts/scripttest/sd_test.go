package scripttest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/inflight-ota/inflight/agent"
	"github.com/inflight-ota/inflight/internal/testsvc"
)

// Partition layout of the test card, in 512-byte sectors, like Raspberry Pi
// OS's: a FAT32 boot partition, then the ext4 root.
const (
	bootStart, bootSize = 8192, 131072  // 64 MiB
	rootStart, rootSize = 139264, 98304 // 48 MiB
	cardSectors         = rootStart + rootSize
)

// needLoop skips unless this machine can run prepare-sd.sh: root, loop
// devices, ext4 in the kernel, and the tools.
func needLoop(t *testing.T) {
	t.Helper()
	need(t, "sfdisk", "mkfs.vfat", "mkfs.ext4", "debugfs", "mcopy", "mtype", "losetup", "mount")
	if os.Geteuid() != 0 {
		testsvc.Unavailable(t, "prepare-sd.sh needs root (losetup, mount)")
	}
	if out, err := exec.Command("losetup", "--find").CombinedOutput(); err != nil {
		testsvc.Unavailable(t, "no free loop device (%s)", strings.TrimSpace(string(out)))
	}
	if b, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(b), "ext4") {
		testsvc.Unavailable(t, "this kernel cannot mount ext4")
	}
}

// card builds a Raspberry Pi OS-like disk image without loop devices:
// sfdisk, then mkfs.vfat and mkfs.ext4 -d at the partitions' offsets.
func card(t *testing.T, rootfs map[string]string, configTxt string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "raspios.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(cardSectors * 512)
	f.Close()
	layout := fmt.Sprintf("label: dos\nstart=%d,size=%d,type=c\nstart=%d,size=%d,type=83\n", bootStart, bootSize, rootStart, rootSize)
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader(layout)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	mustRun(t, nil, "mkfs.vfat", "-F", "32", "-n", "bootfs", "--offset", strconv.Itoa(bootStart), img, strconv.Itoa(bootSize/2))
	cfg := filepath.Join(dir, "config.txt")
	writeFile(t, cfg, configTxt, 0o644)
	mustRun(t, []string{"MTOOLS_SKIP_CHECK=1"}, "mcopy", "-i", fmt.Sprintf("%s@@%d", img, bootStart*512), cfg, "::/config.txt")
	tree := filepath.Join(dir, "rootfs")
	for p, content := range rootfs {
		writeFile(t, filepath.Join(tree, p), content, 0o644)
	}
	mustRun(t, nil, "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", fmt.Sprintf("offset=%d", rootStart*512), "-d", tree, img, fmt.Sprintf("%dk", rootSize/2))
	return img
}

// arm64ELF is enough of an ELF header for prepare-sd.sh to read the class
// (64-bit) and the machine (183, AArch64).
const arm64ELF = "\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"

func rootSpec(img string) string { return fmt.Sprintf("%s?offset=%d", img, rootStart*512) }

// debugfs runs one read-only debugfs request on the card's root file system.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, rootSpec(img)).Output()
	if err != nil {
		t.Fatalf("debugfs %q: %v", req, err)
	}
	return string(out)
}

var modeRe = regexp.MustCompile(`Mode:\s+(\d+)`)

// stat returns the permission bits, the owner and whether the path is a
// symlink (and its target), read with debugfs.
func stat(t *testing.T, img, path string) (perm string, uid string, link string) {
	t.Helper()
	out := debugfs(t, img, "stat "+path)
	m := modeRe.FindStringSubmatch(out)
	if m == nil {
		t.Errorf("%s not on the card:\n%s", path, out)
		return "", "", ""
	}
	if u := regexp.MustCompile(`User:\s+(\d+)`).FindStringSubmatch(out); u != nil {
		uid = u[1]
	}
	if strings.Contains(out, "Type: symlink") {
		if l := regexp.MustCompile(`Fast link dest: "([^"]*)"`).FindStringSubmatch(out); l != nil {
			link = l[1]
		}
	}
	return m[1], uid, link
}

func losetupEntries(t *testing.T, img string) string {
	out, _ := exec.Command("losetup", "-j", img).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func TestPrepareSD(t *testing.T) {
	needLoop(t)
	img := card(t, map[string]string{
		"etc/group":         "root:x:0:\ni2c:x:998:\nnogroup:x:65534:\n",
		"etc/hostname":      "raspberrypi\n",
		"usr/bin/dpkg":      arm64ELF,
		"etc/systemd/.keep": "",
	}, "# For more options see config.txt(5)\ndtparam=audio=on\n#dtparam=i2c_arm=on\n[pi4]\narm_boost=1\n")
	pub, _ := groundKeys(t)
	imgTar := filepath.Join(t.TempDir(), "flightctl-1.0.0-arm64.tar")
	writeFile(t, imgTar, "docker archive stand-in", 0o644)
	args := []string{filepath.Join(repo(t), "scripts/prepare-sd.sh"), img, "--drone-id", "drone1",
		"--broker", "ssl://ground.example:8883", "--keys", pub, "--agent-bin", fakeAgent(t), "--image-tar", imgTar, "--image", "inflight/flightctl:1.0.0"}

	out := mustRun(t, nil, args[0], args[1:]...)
	t.Logf("prepare-sd.sh:\n%s", out)
	if e := losetupEntries(t, img); e != "" {
		t.Fatalf("loop devices left attached: %s", e)
	}
	if !strings.Contains(out, "the image is linux/arm64") {
		t.Errorf("architecture not read from the image")
	}

	for path, want := range map[string]string{
		"/usr/local/bin/inflight-agent":                      "0755",
		"/etc/inflight/agent.toml":                           "0640",
		"/etc/inflight/keys/ground.pub":                      "0644",
		"/etc/systemd/system/inflight-agent.service":         "0644",
		"/etc/systemd/system/inflight-firstboot.service":     "0644",
		"/usr/local/lib/inflight/firstboot.sh":               "0755",
		"/etc/tmpfiles.d/inflight.conf":                      "0644",
		"/etc/modules-load.d/inflight-i2c.conf":              "0644",
		"/etc/udev/rules.d/60-inflight-i2c.rules":            "0644",
		"/var/lib/inflight/images/flightctl-1.0.0-arm64.tar": "0644",
	} {
		perm, uid, _ := stat(t, img, path)
		if perm != want || uid != "0" {
			t.Errorf("%s: mode %s uid %s, want %s root", path, perm, uid, want)
		}
	}
	for _, u := range []string{"inflight-agent.service", "inflight-firstboot.service"} {
		_, _, link := stat(t, img, "/etc/systemd/system/multi-user.target.wants/"+u)
		if link != "/etc/systemd/system/"+u {
			t.Errorf("%s: enablement symlink points to %q", u, link)
		}
	}
	for file, src := range map[string]string{
		"/etc/systemd/system/inflight-agent.service": "deploy/inflight-agent.service",
		"/usr/local/lib/inflight/firstboot.sh":       "deploy/firstboot.sh",
		"/etc/modules-load.d/inflight-i2c.conf":      "deploy/modules-load.d/inflight-i2c.conf",
	} {
		if got := debugfs(t, img, "cat "+file); got != readFile(t, filepath.Join(repo(t), src)) {
			t.Errorf("%s differs from %s", file, src)
		}
	}
	if got := debugfs(t, img, "cat /etc/inflight/keys/ground.pub"); got != readFile(t, pub) {
		t.Error("the key on the card is not the one given")
	}

	// The agent accepts the config.
	cfgPath := filepath.Join(t.TempDir(), "agent.toml")
	writeFile(t, cfgPath, debugfs(t, img, "cat /etc/inflight/agent.toml"), 0o600)
	cfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Keys.Trusted = pub
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Drone != "drone1" || cfg.Arch != "linux/arm64" || cfg.MQTT.Broker != "ssl://ground.example:8883" ||
		strings.Join(cfg.Controller.GroupAdd, ",") != "998" || cfg.Controller.Image != "inflight/flightctl:1.0.0" {
		t.Errorf("config %+v", cfg)
	}

	// config.txt on the FAT partition, read without mounting.
	cfgTxt := mustRun(t, []string{"MTOOLS_SKIP_CHECK=1"}, "mtype", "-i", fmt.Sprintf("%s@@%d", img, bootStart*512), "::/config.txt")
	cfgTxt = strings.ReplaceAll(cfgTxt, "\r", "")
	if !regexp.MustCompile(`(?m)^dtparam=i2c_arm=on$`).MatchString(cfgTxt) || !strings.Contains(cfgTxt, "[all]\ndtparam=i2c_arm_baudrate=400000") ||
		strings.Contains(cfgTxt, "#dtparam=i2c_arm=on") || !strings.Contains(cfgTxt, "[pi4]\narm_boost=1") {
		t.Errorf("config.txt:\n%s", cfgTxt)
	}

	// Again: nothing changes.
	out = mustRun(t, nil, args[0], args[1:]...)
	if strings.Contains(out, "installed") || strings.Contains(out, "set dtparam") || strings.Contains(out, "enabled") {
		t.Errorf("second run changed things:\n%s", out)
	}
	if e := losetupEntries(t, img); e != "" {
		t.Fatalf("loop devices left attached: %s", e)
	}
	// The file system is clean after the unmount.
	if out, err := exec.Command("e2fsck", "-fn", rootSpec(img)).CombinedOutput(); err != nil {
		t.Errorf("e2fsck: %v\n%s", err, out)
	}
}

// TestPrepareSDCleansUpOnError fails halfway (a file where a directory must
// go) and checks that the card is unmounted and detached.
func TestPrepareSDCleansUpOnError(t *testing.T) {
	needLoop(t)
	img := card(t, map[string]string{
		"etc/group":    "root:x:0:\n",
		"etc/inflight": "a file where the config directory must go",
	}, "")
	pub, _ := groundKeys(t)
	out, err := runCmd(t, nil, filepath.Join(repo(t), "scripts/prepare-sd.sh"), img, "--drone-id", "drone1", "--arch", "armv6",
		"--broker", "tcp://g:1883", "--keys", pub, "--agent-bin", fakeAgent(t))
	if err == nil {
		t.Fatalf("prepare-sd.sh succeeded:\n%s", out)
	}
	if !strings.Contains(out, "unmounted and detached") {
		t.Errorf("no word of the cleanup:\n%s", out)
	}
	if e := losetupEntries(t, img); e != "" {
		t.Errorf("loop devices left attached: %s", e)
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	if strings.Contains(string(mounts), "/root ext4") && strings.Contains(string(mounts), os.TempDir()+"/tmp.") {
		t.Errorf("a mount is left:\n%s", mounts)
	}
}

func TestPrepareSDDryRun(t *testing.T) {
	need(t, "sfdisk", "mkfs.vfat", "mkfs.ext4", "mcopy")
	img := card(t, map[string]string{"etc/group": "root:x:0:\n"}, "")
	pub, _ := groundKeys(t)
	out := mustRun(t, nil, filepath.Join(repo(t), "scripts/prepare-sd.sh"), img, "--dry-run", "--drone-id", "drone1",
		"--broker", "tcp://g:1883", "--keys", pub, "--agent-bin", fakeAgent(t))
	for _, want := range []string{"would attach", "would install", "/etc/inflight/agent.toml", "linux/arm/v6", "multi-user.target.wants", fmt.Sprintf("--offset %d", rootStart*512)} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run does not say %q:\n%s", want, out)
		}
	}
}
