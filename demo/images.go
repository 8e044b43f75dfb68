package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
)

// builtImage is one line of images/build --json.
type builtImage struct {
	Platform string `json:"platform"`
	Tag      string `json:"tag"`
	ID       string `json:"id"`
	Digest   string `json:"digest"`
	File     string `json:"file"`
}

// moduleRoot finds the inflight module from dir (the working directory when
// empty): images/build compiles flightctl from its source.
func moduleRoot(ctx context.Context, goCmd, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, goCmd, "env", "GOMOD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: go env GOMOD: %v (is Go installed?)", ErrDemo, err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("%w: not inside the inflight module: run the demo inside the repository (or give --source)", ErrDemo)
	}
	root := filepath.Dir(gomod)
	b, err := os.ReadFile(gomod)
	if err != nil || !bytes.Contains(b, []byte("module "+modulePath)) {
		return "", fmt.Errorf("%w: %s is not the %s module: run the demo inside the repository (or give --source)", ErrDemo, gomod, modulePath)
	}
	return root, nil
}

const modulePath = "github.com/inflight-ota/inflight"

// buildImages makes the v1 and v2 images as docker-archive tarballs in dir
// with images/build, each labelled for this run so that cleanup finds them.
func (d *run) buildImages(ctx context.Context) (v1, v2 builtImage, err error) {
	o := &d.o
	root, err := moduleRoot(ctx, o.Go, o.SourceDir)
	if err != nil {
		return v1, v2, err
	}
	tool := filepath.Join(d.work, "images-build")
	cmd := exec.CommandContext(ctx, o.Go, "build", "-o", tool, "./images/build")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return v1, v2, fmt.Errorf("%w: go build ./images/build: %v\n%s", ErrDemo, err, b)
	}
	plat := "linux/" + goruntime.GOARCH
	build := func(version string, extra []string) (builtImage, error) {
		args := []string{"--version", version, "--platform", plat,
			"--tag", d.repo + ":{version}",
			"--out", filepath.Join(d.work, "flightctl-{version}-{arch}.tar"),
			"--label", LabelRun + "=" + d.id, "--json"}
		args = append(args, extra...)
		cmd := exec.CommandContext(ctx, tool, args...)
		cmd.Dir = root
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return builtImage{}, fmt.Errorf("%w: images/build %s: %v\n%s", ErrDemo, strings.Join(args, " "), err, stderr.String())
		}
		var img builtImage
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if json.Unmarshal(sc.Bytes(), &img) == nil && img.File != "" {
				return img, nil
			}
		}
		return builtImage{}, fmt.Errorf("%w: images/build printed no image:\n%s", ErrDemo, out)
	}
	if v1, err = build(o.V1Version, o.V1BuildArgs); err != nil {
		return v1, v2, err
	}
	v2, err = build(o.V2Version, o.V2BuildArgs)
	return v1, v2, err
}
