package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/inflight-ota/inflight/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

func TestParsePlatform(t *testing.T) {
	for in, want := range map[string]string{
		"amd64": "linux/amd64", "linux/arm64": "linux/arm64", "arm/v7": "linux/arm/v7",
		"armv6": "linux/arm/v6", "linux/arm/v6": "linux/arm/v6", "arm": "linux/arm/v7",
	} {
		p, err := parsePlatform(in)
		if err != nil || p.String() != want {
			t.Errorf("parsePlatform(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"riscv64", "linux/arm/v5", ""} {
		if _, err := parsePlatform(in); !errors.Is(err, ErrUsage) {
			t.Errorf("parsePlatform(%q): %v, want ErrUsage", in, err)
		}
	}
	ps, err := parsePlatforms("all")
	if err != nil || len(ps) != 4 {
		t.Fatalf("all: %v %v", ps, err)
	}
	var dirs []string
	for _, p := range ps {
		dirs = append(dirs, p.Dir())
	}
	if got := strings.Join(dirs, " "); got != "amd64 arm64 armv7 armv6" {
		t.Errorf("dirs %q, want the names make cross uses", got)
	}
}

func TestSanitizeTag(t *testing.T) {
	for in, want := range map[string]string{
		"inflight/flightctl:1.0.0":             "inflight/flightctl:1.0.0",
		"inflight/flightctl:1.0.0+dirty":       "inflight/flightctl:1.0.0-dirty",
		"127.0.0.1:5000/flightctl":             "127.0.0.1:5000/flightctl",
		"127.0.0.1:5000/flightctl:v2":          "127.0.0.1:5000/flightctl:v2",
		"r/flightctl@sha256:0123":              "r/flightctl@sha256:0123",
		"inflight/flightctl:g1234-dirty~local": "inflight/flightctl:g1234-dirty-local",
	} {
		if got := sanitizeTag(in); got != want {
			t.Errorf("sanitizeTag(%q) = %q, want %q", in, got, want)
		}
	}
}

func fakeBinary(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "flightctl")
	if err := os.WriteFile(p, []byte("\x7fELF not really"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsageErrors(t *testing.T) {
	bin := fakeBinary(t)
	for _, args := range [][]string{
		{"--binary", bin},                       // nowhere to go
		{"--platform", "all", "--out", "x.tar"}, // one file for four images
		{"--platform", "amd64,arm64", "--load"}, // one tag for two images
		{"--platform", "all", "--binary", bin, "--out", "{arch}.tar"},
		{"--platform", "mips", "--out", "x.tar"},
		{"--out", "x.tar", "extra"},
	} {
		err := run(context.Background(), args, io.Discard, io.Discard)
		if !errors.Is(err, ErrUsage) {
			t.Errorf("%q: %v, want ErrUsage", args, err)
		}
	}
}

// imageConfig is what must agree between the builder and the Dockerfile.
type imageConfig struct {
	User, WorkingDir string
	Entrypoint, Cmd  []string
	Labels           map[string]string
	Arch, Variant    string
}

func configOf(t *testing.T, img v1.Image) imageConfig {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return imageConfig{cf.Config.User, cf.Config.WorkingDir, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Labels, cf.Architecture, cf.Variant}
}

func TestOutWritesEveryPlatform(t *testing.T) {
	dir := t.TempDir()
	bins := filepath.Join(dir, "bin")
	for _, d := range []string{"amd64", "arm64", "armv7", "armv6"} {
		if err := os.MkdirAll(filepath.Join(bins, "linux-"+d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bins, "linux-"+d, "flightctl"), []byte("bin for "+d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--version", "2.0.0", "--platform", "all", "--bin-dir", bins,
		"--label", "org.inflight.demo=camera", "--env", "INFLIGHT_STATE_SCHEMA=2", "--out", filepath.Join(dir, "img", "flightctl-{version}-{arch}.tar"), "--json"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&out)
	n := 0
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		n++
		p, _ := parsePlatform(r.Platform)
		if want := filepath.Join(dir, "img", "flightctl-2.0.0-"+p.Dir()+".tar"); r.File != want {
			t.Errorf("file %s, want %s", r.File, want)
		}
		tag, err := name.NewTag(r.Tag)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(r.File, &tag)
		if err != nil {
			t.Fatal(err)
		}
		c := configOf(t, img)
		if c.Arch != p.Arch || c.Variant != p.Variant || c.User != "65534:65534" || c.Entrypoint[0] != "/flightctl" ||
			c.Labels["org.inflight.version"] != "2.0.0" || c.Labels["org.inflight.demo"] != "camera" ||
			c.Labels["org.inflight.handoff.protocol"] == "" || c.Labels["org.inflight.state.schema"] == "" {
			t.Errorf("%s: config %+v", r.Platform, c)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if env := cf.Config.Env; len(env) != 1 || env[0] != "INFLIGHT_STATE_SCHEMA=2" {
			t.Errorf("%s: env %v, want [INFLIGHT_STATE_SCHEMA=2]", r.Platform, env)
		}
		if id, _ := img.ConfigName(); id.String() != r.ID {
			t.Errorf("%s: id %s, printed %s", r.Platform, id, r.ID)
		}
		files := layerFiles(t, img)
		if string(files["flightctl"]) != "bin for "+p.Dir() {
			t.Errorf("%s: /flightctl holds %q", r.Platform, files["flightctl"])
		}
	}
	if n != 4 {
		t.Fatalf("%d images printed, want 4:\n%s", n, out.String())
	}
}

func layerFiles(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			files[strings.TrimSuffix(h.Name, "/")] = b
		}
		rc.Close()
	}
	return files
}

// dockerfile is what TestDockerfileMatchesBuilder reads from the Dockerfile.
type dockerfile struct {
	args                map[string]string
	labels              map[string]string
	user, from, copySrc string
	entrypoint, cmd     []string
	workdirs            []string
}

var (
	argRe   = regexp.MustCompile(`^ARG\s+(\w+)(?:=(.*))?$`)
	labelRe = regexp.MustCompile(`([\w.]+)="([^"]*)"`)
)

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile("../flightctl/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d := dockerfile{args: map[string]string{}, labels: map[string]string{}}
	// Join continuation lines, drop comments.
	var lines []string
	cur := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		if s := strings.TrimSpace(cur + l); s != "" {
			lines = append(lines, s)
		}
		cur = ""
	}
	subst := func(s string) string {
		for k, v := range d.args {
			s = strings.ReplaceAll(s, "${"+k+"}", v)
		}
		return s
	}
	for _, l := range lines {
		kw, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch kw {
		case "FROM":
			d.from = rest
		case "ARG":
			m := argRe.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("ARG line %q", l)
			}
			d.args[m[1]] = m[2]
		case "LABEL":
			for _, m := range labelRe.FindAllStringSubmatch(rest, -1) {
				d.labels[m[1]] = subst(m[2])
			}
		case "COPY":
			f := strings.Fields(rest)
			d.copySrc = f[0]
			if f[len(f)-1] != entrypoint {
				t.Errorf("COPY to %s, want %s", f[len(f)-1], entrypoint)
			}
		case "WORKDIR":
			d.workdirs = append(d.workdirs, rest)
		case "USER":
			d.user = rest
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(rest), &v); err != nil {
				t.Fatalf("%s must be exec form: %v", kw, err)
			}
			if kw == "CMD" {
				d.cmd = v
			} else {
				d.entrypoint = v
			}
		default:
			t.Errorf("unexpected instruction %q: teach images/build and this test about it", kw)
		}
	}
	return d
}

// TestDockerfileMatchesBuilder keeps images/flightctl/Dockerfile and
// images/build in step: same base, binary path scheme, user, entrypoint,
// default arguments and labels.
func TestDockerfileMatchesBuilder(t *testing.T) {
	d := readDockerfile(t)
	if d.from != "scratch" {
		t.Errorf("FROM %s, want scratch", d.from)
	}
	if d.copySrc != "bin/linux-${TARGETARCH}${TARGETVARIANT}/flightctl" {
		t.Errorf("COPY %s: not the layout make cross writes", d.copySrc)
	}
	if d.user != imageUser {
		t.Errorf("USER %s, builder %s", d.user, imageUser)
	}
	if strings.Join(d.entrypoint, " ") != entrypoint || strings.Join(d.cmd, " ") != strings.Join(defaultCmd, " ") {
		t.Errorf("ENTRYPOINT %q CMD %q, builder %q %q", d.entrypoint, d.cmd, entrypoint, defaultCmd)
	}
	if len(d.workdirs) == 0 || d.workdirs[len(d.workdirs)-1] != "/" || !contains(d.workdirs, "/run/inflight") {
		t.Errorf("WORKDIR %q: want /run/inflight created and / last", d.workdirs)
	}
	img := builderImage(t, fakeBinary(t), d.args["VERSION"], "amd64")
	c := configOf(t, img)
	if fmt.Sprint(c.Labels) != fmt.Sprint(d.labels) {
		t.Errorf("labels differ:\n Dockerfile %v\n builder    %v", d.labels, c.Labels)
	}
	if !strings.Contains(string(layerFilesNames(t, img)), "run/inflight") {
		t.Error("builder image has no /run/inflight")
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func layerFilesNames(t *testing.T, img v1.Image) []byte {
	var b bytes.Buffer
	for n := range layerFiles(t, img) {
		b.WriteString(n + "\n")
	}
	return b.Bytes()
}

// builderImage runs the builder into a tarball and reads the image back.
func builderImage(t *testing.T, bin, version, plat string) v1.Image {
	t.Helper()
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := run(context.Background(), []string{"--binary", bin, "--version", version, "--platform", plat, "--tag", "inflight-test/flightctl:x", "--out", out}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("inflight-test/flightctl:x")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestDockerfileBuildsSameImage builds the Dockerfile with the Docker
// Engine's classic builder (present wherever dockerd is; BuildKit may not
// be) and compares the result with the builder's image.
func TestDockerfileBuildsSameImage(t *testing.T) {
	cli := testsvc.Docker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	df, err := os.ReadFile("../flightctl/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	bin := []byte("\x7fELF not really, amd64")
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	for _, f := range []struct {
		name string
		data []byte
	}{{"Dockerfile", df}, {"bin/linux-amd64/flightctl", bin}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o755, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	tw.Close()
	tag := fmt.Sprintf("inflight-test/flightctl-dockerfile:%d", os.Getpid())
	version := "3.1.4"
	resp, err := cli.ImageBuild(ctx, &ctxTar, build.ImageBuildOptions{
		Tags: []string{tag}, Version: build.BuilderV1, Remove: true, ForceRemove: true,
		// The classic builder sets no TARGET* arguments, and dockerd 20.10's
		// fails a FROM scratch build for a foreign --platform: build amd64.
		BuildArgs: map[string]*string{"TARGETARCH": ptr("amd64"), "VERSION": &version},
	})
	if err != nil {
		t.Fatalf("docker build: %v", err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Cleanup(func() {
		cli.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	if bytes.Contains(msg, []byte(`"errorDetail"`)) {
		t.Fatalf("docker build: %s", msg)
	}
	ins, _, err := cli.ImageInspectWithRaw(ctx, tag)
	if err != nil {
		t.Fatalf("inspect %s: %v\n%s", tag, err, msg)
	}
	binPath := filepath.Join(t.TempDir(), "flightctl")
	os.WriteFile(binPath, bin, 0o755)
	want := configOf(t, builderImage(t, binPath, version, "linux/amd64"))
	got := imageConfig{ins.Config.User, ins.Config.WorkingDir, ins.Config.Entrypoint, ins.Config.Cmd, ins.Config.Labels, ins.Architecture, ins.Variant}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("docker build and images/build differ:\n docker build %+v\n images/build %+v", got, want)
	}
}

func ptr(s string) *string { return &s }

// TestCompileLoadRunPush compiles the real flightctl for this machine,
// loads the image into Docker, runs it, and pushes it to a registry on
// 127.0.0.1.
func TestCompileLoadRunPush(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles flightctl")
	}
	cli := testsvc.Docker(t)
	reg := testsvc.Registry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tag := fmt.Sprintf("inflight-test/flightctl-build:%d", os.Getpid())
	t.Cleanup(func() {
		cli.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	var out bytes.Buffer
	push := reg + "/flightctl:{version}"
	if err := run(ctx, []string{"--version", "7.0.0", "--platform", "amd64", "--tag", tag, "--load", "--push", push, "--json"}, &out, os.Stderr); err != nil {
		t.Fatal(err)
	}
	var r result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if !r.Loaded || !strings.HasPrefix(r.Pushed, reg+"/flightctl@sha256:") || !strings.HasSuffix(r.Pushed, r.Digest) {
		t.Fatalf("result %+v", r)
	}
	ins, _, err := cli.ImageInspectWithRaw(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	if ins.ID != r.ID || ins.Config.Labels["org.inflight.version"] != "7.0.0" {
		t.Errorf("loaded %s labels %v; built %s", ins.ID, ins.Config.Labels, r.ID)
	}
	ref, _ := name.ParseReference(r.Pushed)
	if _, err := remote.Image(ref, remote.WithContext(ctx)); err != nil {
		t.Errorf("pull back %s: %v", r.Pushed, err)
	}
	// The static binary runs in the scratch image as nobody.
	runsInDocker(t, ctx, tag)
}

func runsInDocker(t *testing.T, ctx context.Context, tag string) {
	t.Helper()
	cli := testsvc.Docker(t)
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: tag, Cmd: []string{"--help"}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, fmt.Sprintf("inflight-test-build-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	wc, ec := cli.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
	select {
	case <-wc:
	case err := <-ec:
		t.Fatal(err)
	}
	logs, err := cli.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(logs)
	if !bytes.Contains(b, []byte("usage: flightctl")) {
		t.Errorf("flightctl --help in the image printed %q", b)
	}
}
