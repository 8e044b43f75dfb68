package runtime

import (
	"errors"
	"testing"
)

func TestAccepts(t *testing.T) {
	p := func(s string) Platform {
		x, err := ParsePlatform(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, c := range []struct {
		host, img string
		ok        bool
	}{
		{"linux/amd64", "linux/amd64", true},
		{"linux/amd64", "linux/arm64", false},
		{"linux/arm64", "linux/arm64/v8", true},
		{"linux/arm64/v8", "linux/arm64", true},
		{"linux/arm64", "linux/arm/v7", false}, // a 64-bit agent runs 64-bit images only
		{"linux/arm/v7", "linux/arm/v7", true},
		{"linux/arm/v7", "linux/arm/v6", true},  // Raspberry Pi OS 32-bit userland is v6
		{"linux/arm/v6", "linux/arm/v7", false}, // a Pi Zero cannot run v7
		{"linux/arm/v7", "linux/arm", false},    // unknown variant: refused
		{"linux/arm/v6", "linux/arm64", false},
		{"windows/amd64", "linux/amd64", false},
	} {
		if got := p(c.host).Accepts(p(c.img)); got != c.ok {
			t.Errorf("%s accepts %s = %v, want %v", c.host, c.img, got, c.ok)
		}
	}
}

func TestArmVariant(t *testing.T) {
	for _, c := range []struct{ machine, goarm, want string }{
		{"armv6l", "7", "v6"}, {"armv7l", "6", "v7"}, {"aarch64", "", "v7"}, {"", "7", "v7"}, {"", "", "v6"}, {"", "6,hardfloat", "v6"},
	} {
		if got := armVariant(c.machine, c.goarm); got != c.want {
			t.Errorf("armVariant(%q, %q) = %s, want %s", c.machine, c.goarm, got, c.want)
		}
	}
}

func TestCheckImage(t *testing.T) {
	host := Platform{OS: "linux", Arch: "arm", Variant: "v7"}
	good := ImageInfo{ID: "sha256:abc", OS: "linux", Arch: "arm", Variant: "v7", Labels: map[string]string{
		LabelVersion: "2.0.0", LabelHandoffProtocol: "1,2", LabelStateSchema: "3",
	}}
	if err := CheckImage(good, host, 2); err != nil {
		t.Fatal(err)
	}
	if err := CheckImage(good, host, 1); err != nil {
		t.Fatal(err)
	}
	with := func(f func(*ImageInfo)) ImageInfo {
		i := good
		i.Labels = map[string]string{}
		for k, v := range good.Labels {
			i.Labels[k] = v
		}
		f(&i)
		return i
	}
	if err := CheckImage(good, Platform{OS: "linux", Arch: "arm", Variant: "v6"}, 1); !errors.Is(err, ErrWrongPlatform) {
		t.Errorf("arm/v7 image on an arm/v6 host: %v", err)
	}
	for name, c := range map[string]struct {
		img   ImageInfo
		proto int
		want  error
	}{
		"arm64 image":      {with(func(i *ImageInfo) { i.Arch, i.Variant = "arm64", "" }), 1, ErrWrongPlatform},
		"protocol 3":       {good, 3, ErrIncompatible},
		"no protocol":      {with(func(i *ImageInfo) { delete(i.Labels, LabelHandoffProtocol) }), 1, ErrIncompatible},
		"bad protocol":     {with(func(i *ImageInfo) { i.Labels[LabelHandoffProtocol] = "v1" }), 1, ErrIncompatible},
		"no version":       {with(func(i *ImageInfo) { delete(i.Labels, LabelVersion) }), 1, ErrIncompatible},
		"cold, no proto":   {with(func(i *ImageInfo) { delete(i.Labels, LabelHandoffProtocol) }), 0, nil},
		"amd64 on the Pi":  {with(func(i *ImageInfo) { i.Arch, i.Variant = "amd64", "" }), 0, ErrWrongPlatform},
		"variantless arm":  {with(func(i *ImageInfo) { i.Variant = "" }), 1, ErrWrongPlatform},
		"protocol list ok": {with(func(i *ImageInfo) { i.Labels[LabelHandoffProtocol] = " 2 , 4" }), 4, nil},
	} {
		err := CheckImage(c.img, host, c.proto)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Spec{Name: "ctl-v2", Image: "sha256:x", Role: RoleStandby, RunDir: "/run/inflight", Devices: []string{"/dev/i2c-1"}}
	s := ok
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.MemoryBytes != DefaultMemoryBytes || s.PidsLimit != DefaultPidsLimit {
		t.Errorf("defaults not filled: %+v", s)
	}
	for name, f := range map[string]func(*Spec){
		"no name":        func(s *Spec) { s.Name = "" },
		"slash in name":  func(s *Spec) { s.Name = "a/b" },
		"no role":        func(s *Spec) { s.Role = "" },
		"relative dir":   func(s *Spec) { s.RunDir = "run" },
		"docker socket":  func(s *Spec) { s.RunDir = "/var/run/docker.sock" },
		"device outside": func(s *Spec) { s.Devices = []string{"/etc/shadow:/dev/x"} },
		"mqtt password":  func(s *Spec) { s.Env = []string{"MQTT_PASSWORD=x"} },
		"docker host":    func(s *Spec) { s.Env = []string{"DOCKER_HOST=unix:///x"} },
		"bad env":        func(s *Spec) { s.Env = []string{"NOEQUALS"} },
		"reserved label": func(s *Spec) { s.Labels = map[string]string{LabelRole: "active"} },
		"tiny memory":    func(s *Spec) { s.MemoryBytes = 1 << 20 },
	} {
		s := ok
		f(&s)
		if err := s.Validate(); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
