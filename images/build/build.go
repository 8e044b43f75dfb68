package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/docker/docker/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/inflight-ota/inflight/agent/runtime/imagebuild"
	"github.com/inflight-ota/inflight/flightctl"
	"github.com/inflight-ota/inflight/handoff"
)

// The image's fixed shape; images/flightctl/Dockerfile says the same and
// TestDockerfileMatchesBuilder checks it.
const (
	entrypoint = "/flightctl"
	imageUser  = "65534:65534"
	buildinfo  = "github.com/inflight-ota/inflight/internal/buildinfo.Version"
)

var defaultCmd = []string{"--run-dir", "/run/inflight"}

// Label names (agent/runtime.Label*).
const (
	labelVersion  = "org.inflight.version"
	labelProtocol = "org.inflight.handoff.protocol"
	labelSchema   = "org.inflight.state.schema"
)

// ErrUsage is returned for bad command lines.
var ErrUsage = errors.New("usage")

// platform is one target, e.g. linux/arm/v6.
type platform struct {
	OS, Arch, Variant string
}

// allPlatforms are the bench's and the Pis'.
var allPlatforms = []platform{{"linux", "amd64", ""}, {"linux", "arm64", ""}, {"linux", "arm", "v7"}, {"linux", "arm", "v6"}}

func (p platform) String() string {
	s := p.OS + "/" + p.Arch
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// Dir is the short name `make cross` uses: amd64, arm64, armv7, armv6.
func (p platform) Dir() string { return p.Arch + p.Variant }

// parsePlatform accepts linux/arm/v7, arm/v7, armv7, arm64, linux/amd64 ….
func parsePlatform(s string) (platform, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "linux/")
	switch s {
	case "amd64", "arm64":
		return platform{"linux", s, ""}, nil
	case "arm64/v8":
		return platform{"linux", "arm64", ""}, nil
	case "arm/v6", "armv6", "armhf6":
		return platform{"linux", "arm", "v6"}, nil
	case "arm/v7", "armv7", "arm":
		return platform{"linux", "arm", "v7"}, nil
	}
	return platform{}, fmt.Errorf("platform %q: want linux/amd64, linux/arm64, linux/arm/v7 or linux/arm/v6: %w", s, ErrUsage)
}

func parsePlatforms(s string) ([]platform, error) {
	if s == "all" {
		return allPlatforms, nil
	}
	var ps []platform
	seen := map[platform]bool{}
	for _, f := range strings.Split(s, ",") {
		p, err := parsePlatform(f)
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ps = append(ps, p)
		}
	}
	return ps, nil
}

func hostPlatform() string {
	if goarch := os.Getenv("GOARCH"); goarch != "" {
		return goarch
	}
	out, err := exec.Command("go", "env", "GOARCH").Output()
	if err != nil {
		return "amd64"
	}
	return strings.TrimSpace(string(out))
}

type options struct {
	version, platforms, tag, out, push, binDir, binary, pkg, goTags, goCmd string
	protocol, schema                                                       string
	labels, env                                                            []string
	load, asJSON                                                           bool
}

// result is one built image, printed as a line (or a JSON object with --json).
type result struct {
	Platform string `json:"platform"`
	Tag      string `json:"tag"`
	ID       string `json:"id"`     // config digest, what `docker images` shows
	Digest   string `json:"digest"` // manifest digest, what a registry pins
	File     string `json:"file,omitempty"`
	Loaded   bool   `json:"loaded,omitempty"`
	Pushed   string `json:"pushed,omitempty"` // repo@sha256:…
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("images/build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.version, "version", "dev", "controller version: stamped into the binary and the org.inflight.version label")
	fs.StringVar(&o.platforms, "platform", "", "comma-separated platforms (linux/amd64, linux/arm64, linux/arm/v7, linux/arm/v6) or all (default: this machine's)")
	fs.StringVar(&o.tag, "tag", "inflight/flightctl:{version}", "image name:tag; {version} and {arch} (amd64, arm64, armv7, armv6) are replaced")
	fs.StringVar(&o.out, "out", "", "write a docker-archive tarball here; {version} and {arch} are replaced")
	fs.BoolVar(&o.load, "load", false, "load the image into the local Docker Engine (DOCKER_HOST)")
	fs.StringVar(&o.push, "push", "", "push to this registry reference (an index when several platforms); prints repo@sha256:…")
	fs.StringVar(&o.binDir, "bin-dir", "", "take <dir>/linux-<arch>/flightctl (what `make cross` builds) instead of compiling")
	fs.StringVar(&o.binary, "binary", "", "take this static flightctl binary (one platform) instead of compiling")
	fs.StringVar(&o.pkg, "pkg", "./cmd/flightctl", "package compiled when neither --bin-dir nor --binary is given")
	fs.StringVar(&o.goTags, "go-tags", "", "build tags for the compile (e.g. a demo feature of v2)")
	fs.StringVar(&o.goCmd, "go", "go", "go command")
	fs.StringVar(&o.protocol, "handoff-protocol", strconv.Itoa(handoff.ProtocolVersion), "org.inflight.handoff.protocol label: the protocol versions spoken, e.g. 1 or 1,2")
	fs.StringVar(&o.schema, "state-schema", strconv.Itoa(flightctl.SchemaVersion), "org.inflight.state.schema label: the flight-state schema version")
	fs.Func("label", "extra label key=value (repeatable)", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return fmt.Errorf("%q is not key=value", s)
		}
		o.labels = append(o.labels, s)
		return nil
	})
	fs.Func("env", "environment variable KEY=VALUE in the image config (repeatable), e.g. INFLIGHT_STATE_SCHEMA=2 so that the controller runs schema 2 whatever arguments the agent passes", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return fmt.Errorf("%q is not KEY=VALUE", s)
		}
		o.env = append(o.env, s)
		return nil
	})
	fs.BoolVar(&o.asJSON, "json", false, "print one JSON object per image")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: go run ./images/build [flags] (--out FILE | --load | --push REF)...

Builds the flightctl image (images/flightctl/Dockerfile) without docker build.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), ErrUsage)
	}
	if o.platforms == "" {
		o.platforms = hostPlatform()
	}
	plats, err := parsePlatforms(o.platforms)
	if err != nil {
		return err
	}
	if o.out == "" && !o.load && o.push == "" {
		return fmt.Errorf("say where the image goes: --out, --load and/or --push: %w", ErrUsage)
	}
	if o.binary != "" && (len(plats) != 1 || o.binDir != "") {
		return fmt.Errorf("--binary takes one platform and no --bin-dir: %w", ErrUsage)
	}
	if len(plats) > 1 {
		if o.out != "" && !strings.Contains(o.out, "{arch}") {
			return fmt.Errorf("--out %q: several platforms need {arch} in the name: %w", o.out, ErrUsage)
		}
		if o.load && !strings.Contains(o.tag, "{arch}") {
			return fmt.Errorf("--load of several platforms needs {arch} in --tag (one tag holds one image): %w", ErrUsage)
		}
	}
	labels := map[string]string{
		labelVersion: o.version, labelProtocol: o.protocol, labelSchema: o.schema,
		"org.opencontainers.image.title": "flightctl", "org.opencontainers.image.version": o.version,
	}
	for _, l := range o.labels {
		k, v, _ := strings.Cut(l, "=")
		labels[k] = v
	}

	tmp, err := os.MkdirTemp("", "inflight-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var imgs []v1.Image
	var results []result
	for _, p := range plats {
		bin, err := o.binaryFor(ctx, p, tmp, stderr)
		if err != nil {
			return err
		}
		img, err := imagebuild.Build(imagebuild.Config{
			Binary: bin, Entrypoint: entrypoint, Cmd: defaultCmd, Env: o.env, Labels: labels,
			OS: p.OS, Arch: p.Arch, Variant: p.Variant, User: imageUser,
		})
		if err != nil {
			return err
		}
		r := result{Platform: p.String(), Tag: sanitizeTag(expand(o.tag, o.version, p))}
		id, err := img.ConfigName()
		if err != nil {
			return err
		}
		d, err := img.Digest()
		if err != nil {
			return err
		}
		r.ID, r.Digest = id.String(), d.String()
		if o.out != "" {
			r.File = expand(o.out, o.version, p)
			if err := writeTarball(r.File, img, r.Tag); err != nil {
				return err
			}
		}
		if o.load {
			if err := load(ctx, img, r.Tag); err != nil {
				return err
			}
			r.Loaded = true
		}
		imgs = append(imgs, img)
		results = append(results, r)
	}
	if o.push != "" {
		ref := sanitizeTag(expand(o.push, o.version, plats[0]))
		var pinned string
		if len(imgs) == 1 {
			pinned, err = imagebuild.Push(ctx, imgs[0], ref)
		} else {
			idx, ierr := imagebuild.Index(imgs...)
			if ierr != nil {
				return ierr
			}
			pinned, err = imagebuild.PushIndex(ctx, idx, ref)
		}
		if err != nil {
			return err
		}
		for i := range results {
			results[i].Pushed = pinned
		}
	}
	for _, r := range results {
		if o.asJSON {
			b, _ := json.Marshal(r)
			fmt.Fprintln(stdout, string(b))
			continue
		}
		line := fmt.Sprintf("%s %s id %s digest %s", r.Platform, r.Tag, r.ID, r.Digest)
		if r.File != "" {
			line += " file " + r.File
		}
		if r.Loaded {
			line += " loaded"
		}
		if r.Pushed != "" {
			line += " pushed " + r.Pushed
		}
		fmt.Fprintln(stdout, line)
	}
	return nil
}

func expand(s, version string, p platform) string {
	return strings.NewReplacer("{version}", version, "{arch}", p.Dir()).Replace(s)
}

var badTagChars = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// sanitizeTag makes the tag part of ref valid (a version such as
// 1.0.0+dirty has a character tags may not hold).
func sanitizeTag(ref string) string {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") || strings.Contains(ref, "@") {
		return ref
	}
	return ref[:i+1] + badTagChars.ReplaceAllString(ref[i+1:], "-")
}

// binaryFor returns the path of the static flightctl for p.
func (o *options) binaryFor(ctx context.Context, p platform, tmp string, stderr io.Writer) (string, error) {
	if o.binary != "" {
		return o.binary, nil
	}
	if o.binDir != "" {
		b := filepath.Join(o.binDir, "linux-"+p.Dir(), "flightctl")
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("%w (run make cross, or drop --bin-dir to compile)", err)
		}
		return b, nil
	}
	out := filepath.Join(tmp, p.Dir(), "flightctl")
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X " + buildinfo + "=" + o.version, "-o", out}
	if o.goTags != "" {
		args = append(args, "-tags", o.goTags)
	}
	args = append(args, o.pkg)
	cmd := exec.CommandContext(ctx, o.goCmd, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Arch, "GOARM="+strings.TrimPrefix(p.Variant, "v"))
	if root := moduleRoot(o.goCmd); root != "" {
		cmd.Dir = root
	}
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &errb, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("compile %s for %s: %v\n%s", o.pkg, p, err, errb.String())
	}
	return out, nil
}

// moduleRoot is the directory of the go.mod governing the working directory.
func moduleRoot(goCmd string) string {
	out, err := exec.Command(goCmd, "env", "GOMOD").Output()
	if err != nil {
		return ""
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return ""
	}
	return filepath.Dir(gomod)
}

func writeTarball(path string, img v1.Image, tag string) error {
	if path == "-" {
		return imagebuild.WriteTarball(os.Stdout, img, tag)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := imagebuild.WriteTarball(f, img, tag); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// load streams img as a docker-archive into the local Docker Engine.
func load(ctx context.Context, img v1.Image, tag string) error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	defer cli.Close()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(imagebuild.WriteTarball(pw, img, tag)) }()
	resp, err := cli.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("docker: load %s: %w", tag, err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("docker: load %s: %w", tag, err)
		}
		if m.Error != "" {
			return fmt.Errorf("docker: load %s: %s", tag, m.Error)
		}
	}
}
