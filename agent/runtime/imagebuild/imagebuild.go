// Package imagebuild assembles controller images in Go, without `docker
// build`: one layer holding a static binary (plus optional files), a config
// with the entrypoint, the inflight labels, the platform and a non-root user.
// Images are reproducible: the same binary, labels and platform give the same
// digests. It writes them as docker-archive tarballs (for ImageLoad and the
// MQTT transfer) or pushes them to a registry (for pull by digest).
//
// It never runs anything and never talks to a Docker Engine.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultUser is the user controllers run as: nobody.
const DefaultUser = "65534:65534"

// File is an extra file put into the image.
type File struct {
	Path string // absolute path in the image
	Data []byte
	Mode int64 // 0644 when 0
}

// Config describes an image. Only Binary is required.
type Config struct {
	Binary     string   // path of the static executable on this machine
	Entrypoint string   // its path in the image; "/" + base name of Binary when empty
	Cmd        []string // default arguments
	Env        []string
	Labels     map[string]string
	OS         string // "linux" when empty
	Arch       string // GOARCH spelling; runtime.GOARCH when empty
	Variant    string // "v6", "v7" for arm
	User       string // DefaultUser when empty
	Files      []File
}

// Build assembles the image.
func Build(c Config) (v1.Image, error) {
	bin, err := os.ReadFile(c.Binary)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	return BuildBytes(c, bin)
}

// BuildBytes is Build with the binary's content given.
func BuildBytes(c Config, bin []byte) (v1.Image, error) {
	if c.Entrypoint == "" {
		if c.Binary == "" {
			return nil, fmt.Errorf("imagebuild: no entrypoint and no binary path")
		}
		c.Entrypoint = "/" + path.Base(c.Binary)
	}
	if !path.IsAbs(c.Entrypoint) {
		return nil, fmt.Errorf("imagebuild: entrypoint %q is not absolute", c.Entrypoint)
	}
	if c.OS == "" {
		c.OS = "linux"
	}
	if c.Arch == "" {
		c.Arch = runtime.GOARCH
	}
	if c.User == "" {
		c.User = DefaultUser
	}
	files := append([]File{{Path: c.Entrypoint, Data: bin, Mode: 0o755}}, c.Files...)
	layerTar, err := tarOf(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("imagebuild: layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = c.OS, c.Arch, c.Variant
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = []string{c.Entrypoint}
	cf.Config.Cmd = c.Cmd
	cf.Config.Env = c.Env
	cf.Config.User = c.User
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = c.Labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: config: %w", err)
	}
	return img, nil
}

// tarOf writes the files, with their parent directories and an empty /tmp and
// /run/inflight, owned by root, at the epoch.
func tarOf(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{"tmp": true, "run": true, "run/inflight": true}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean(f.Path), "/")
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(path.Clean(f.Path), "/"), Mode: mode, Size: int64(len(f.Data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("imagebuild: tar: %w", err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("imagebuild: tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("imagebuild: tar: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteTarball writes img as a docker-archive tarball tagged tag
// (e.g. "inflight/flightctl:v2"), which Docker's ImageLoad and the process
// runtime's Load accept.
func WriteTarball(w io.Writer, img v1.Image, tag string) error {
	t, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("imagebuild: tag %q: %w", tag, err)
	}
	if err := tarball.Write(t, img, w); err != nil {
		return fmt.Errorf("imagebuild: write %s: %w", tag, err)
	}
	return nil
}

// Push uploads img to ref (repo[:tag]; plain HTTP for loopback registries)
// and returns the reference pinned by digest, repo@sha256:….
func Push(ctx context.Context, img v1.Image, ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("imagebuild: ref %q: %w", ref, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("imagebuild: push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("imagebuild: %w", err)
	}
	return r.Context().Name() + "@" + d.String(), nil
}

// Index makes a multi-platform image index of images, each described by the
// platform in its config.
func Index(imgs ...v1.Image) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, fmt.Errorf("imagebuild: %w", err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{
				OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant,
			}},
		})
	}
	return idx, nil
}

// PushIndex uploads idx to ref and returns the reference pinned by the
// index's digest.
func PushIndex(ctx context.Context, idx v1.ImageIndex, ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("imagebuild: ref %q: %w", ref, err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("imagebuild: push %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return "", fmt.Errorf("imagebuild: %w", err)
	}
	return r.Context().Name() + "@" + d.String(), nil
}
