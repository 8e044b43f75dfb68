package runtime

import (
	"fmt"
	goruntime "runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Platform is an OS/architecture/variant triple in OCI spelling
// (linux, arm, v7).
type Platform struct {
	OS      string
	Arch    string
	Variant string
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Arch
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform parses "linux/arm/v7", "arm64" or "linux/amd64".
func ParsePlatform(s string) (Platform, error) {
	f := strings.Split(s, "/")
	switch len(f) {
	case 1:
		return Platform{OS: "linux", Arch: f[0]}, nil
	case 2:
		return Platform{OS: f[0], Arch: f[1]}, nil
	case 3:
		return Platform{OS: f[0], Arch: f[1], Variant: f[2]}, nil
	}
	return Platform{}, fmt.Errorf("runtime: platform %q: want os/arch[/variant]", s)
}

// HostPlatform is the platform of this host as far as this program can run
// images: GOOS/GOARCH, and on 32-bit ARM the variant from the kernel's machine
// name (armv6l → v6; armv7l, armv8l or aarch64 → v7), else from the GOARM the
// program was built with, else v6 (the safe guess). The agent's configuration
// may override it.
func HostPlatform() Platform {
	p := Platform{OS: goruntime.GOOS, Arch: goruntime.GOARCH}
	if p.Arch == "arm" {
		p.Variant = armVariant(machine(), buildSetting("GOARM"))
	}
	return p
}

func armVariant(machine, goarm string) string {
	switch {
	case strings.HasPrefix(machine, "armv6"):
		return "v6"
	case strings.HasPrefix(machine, "armv7"), strings.HasPrefix(machine, "armv8"), machine == "aarch64":
		return "v7"
	}
	if n, err := armLevel(strings.SplitN(goarm, ",", 2)[0]); err == nil {
		return "v" + strconv.Itoa(n)
	}
	return "v6"
}

func machine() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Machine[:])
}

// Accepts reports whether a host of platform p runs an image of platform img:
// same OS and architecture; on arm the image's variant must not be newer than
// the host's (an arm/v6 image runs on a v7 host, an arm/v7 image does not run
// on a v6 host such as a Pi Zero, and an arm image without a variant is
// refused); on arm64 "" and "v8" are the same; elsewhere the variants must
// match when both are given.
func (p Platform) Accepts(img Platform) bool {
	if img.OS != p.OS || img.Arch != p.Arch {
		return false
	}
	switch p.Arch {
	case "arm":
		hv, err1 := armLevel(p.Variant)
		iv, err2 := armLevel(img.Variant)
		return err1 == nil && err2 == nil && iv <= hv
	case "arm64":
		norm := func(v string) string {
			if v == "v8" {
				return ""
			}
			return v
		}
		return norm(img.Variant) == "" || norm(img.Variant) == norm(p.Variant)
	}
	return img.Variant == "" || p.Variant == "" || img.Variant == p.Variant
}

func armLevel(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
	if err != nil || n < 5 || n > 8 {
		return 0, fmt.Errorf("arm variant %q", v)
	}
	return n, nil
}

// CheckImage refuses an image the host cannot run or the running controller
// cannot hand over to: the wrong OS/architecture/variant (ErrWrongPlatform),
// no version label, or a handoff-protocol label that does not list
// handoffProto (ErrIncompatible). The label holds the protocol versions the
// image speaks, comma-separated ("1" or "1,2"). handoffProto <= 0 skips the
// protocol check (a cold start has no peer).
func CheckImage(info ImageInfo, host Platform, handoffProto int) error {
	if !host.Accepts(info.Platform()) {
		return fmt.Errorf("runtime: image %s is for %s, this host is %s: %w", short(info.ID), info.Platform(), host, ErrWrongPlatform)
	}
	if info.Labels[LabelVersion] == "" {
		return fmt.Errorf("runtime: image %s has no %s label: %w", short(info.ID), LabelVersion, ErrIncompatible)
	}
	if handoffProto <= 0 {
		return nil
	}
	v, ok := info.Labels[LabelHandoffProtocol]
	if !ok {
		return fmt.Errorf("runtime: image %s has no %s label: %w", short(info.ID), LabelHandoffProtocol, ErrIncompatible)
	}
	protos, err := ParseProtocols(v)
	if err != nil {
		return fmt.Errorf("runtime: image %s: %w: %w", short(info.ID), err, ErrIncompatible)
	}
	for _, p := range protos {
		if p == handoffProto {
			return nil
		}
	}
	return fmt.Errorf("runtime: image %s speaks handoff protocol %s, need %d: %w", short(info.ID), v, handoffProto, ErrIncompatible)
}

// ParseProtocols parses a LabelHandoffProtocol value, "1" or "1,2".
func ParseProtocols(v string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s %q: want positive integers separated by commas", LabelHandoffProtocol, v)
		}
		out = append(out, n)
	}
	return out, nil
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
