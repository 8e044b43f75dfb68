package process

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	rt "github.com/inflight-ota/inflight/agent/runtime"
)

// imageMeta is Dir/images/<hex>/image.json.
type imageMeta struct {
	rt.ImageInfo
	Env         []string `json:"env,omitempty"`
	RepoDigests []string `json:"repo_digests,omitempty"` // repo@sha256:… it was pulled by
}

// Sidecar is the JSON file beside a plain executable (<file>.json) that gives
// it the labels and platform an image config would.
type Sidecar struct {
	Labels  map[string]string `json:"labels"`
	OS      string            `json:"os,omitempty"`      // "linux" when empty
	Arch    string            `json:"arch,omitempty"`    // from the ELF header when empty
	Variant string            `json:"variant,omitempty"` // "v6", "v7"
	Cmd     []string          `json:"cmd,omitempty"`     // default arguments
	Env     []string          `json:"env,omitempty"`
}

func (r *Runtime) exePath(id string) string {
	return filepath.Join(r.imagesDir(), strings.TrimPrefix(id, "sha256:"), "exe")
}

// Pull imports ref: a registry reference pinned by digest (repo@sha256:…),
// or a local file (an absolute path or file:// URL, optionally suffixed
// @sha256:… to pin its content): a docker-archive tarball, or an executable
// with an optional sidecar <file>.json (see Sidecar).
func (r *Runtime) Pull(ctx context.Context, ref string, progress func(rt.Progress)) (rt.ImageInfo, error) {
	if p, ok := strings.CutPrefix(ref, "file://"); ok || strings.HasPrefix(ref, "/") {
		if !ok {
			p = ref
		}
		return r.pullFile(ctx, p, progress)
	}
	d, err := name.NewDigest(ref)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %q: %w (%v)", ref, rt.ErrNotPinned, err)
	}
	start := time.Now()
	desc, err := remote.Get(d, remote.WithContext(ctx))
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w", ref, err)
	}
	var img v1.Image
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w", ref, err)
		}
		if img, err = r.pickPlatform(idx); err != nil {
			return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w", ref, err)
		}
	} else if img, err = desc.Image(); err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w", ref, err)
	}
	info, err := r.importImage(img, nil, d.Context().Name()+"@"+d.DigestStr(), progress)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w", ref, err)
	}
	info.Digest = d.DigestStr()
	r.log.Info("image pulled", "ref", ref, "id", info.ID, "duration", time.Since(start))
	return info, nil
}

// pickPlatform chooses the image of idx this host runs, preferring an exact
// variant match.
func (r *Runtime) pickPlatform(idx v1.ImageIndex) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var best *v1.Descriptor
	for i, m := range im.Manifests {
		if m.Platform == nil {
			continue
		}
		p := rt.Platform{OS: m.Platform.OS, Arch: m.Platform.Architecture, Variant: m.Platform.Variant}
		if !r.platform.Accepts(p) {
			continue
		}
		if best == nil || p.Variant == r.platform.Variant {
			best = &im.Manifests[i]
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no image for %s in the index: %w", r.platform, rt.ErrWrongPlatform)
	}
	return idx.Image(best.Digest)
}

// Load imports a docker-archive tarball holding one image.
func (r *Runtime) Load(ctx context.Context, in io.Reader, progress func(rt.Progress)) (rt.ImageInfo, error) {
	start := time.Now()
	f, err := os.CreateTemp(r.tmpDir(), "load-*.tar")
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: load: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var total int64
	if s, ok := in.(interface{ Size() int64 }); ok {
		total = s.Size()
	}
	n, err := copyProgress(ctx, f, in, total, progress)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: load: %w", err)
	}
	info, err := r.loadTarball(f.Name(), nil)
	if err != nil {
		return rt.ImageInfo{}, err
	}
	if progress != nil {
		progress(rt.Progress{Phase: "done", Current: n, Total: n, Status: "loaded " + info.ID})
	}
	r.log.Info("image loaded", "id", info.ID, "bytes", n, "duration", time.Since(start))
	return info, nil
}

func copyProgress(ctx context.Context, w io.Writer, in io.Reader, total int64, progress func(rt.Progress)) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	last := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		k, err := in.Read(buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if progress != nil && (err != nil || time.Since(last) > 50*time.Millisecond) {
			last = time.Now()
			progress(rt.Progress{Phase: "load", Current: n, Total: total})
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (r *Runtime) loadTarball(p string, progress func(rt.Progress)) (rt.ImageInfo, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(p) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: load: not a docker-archive: %w: %w", err, rt.ErrUnsupportedImage)
	}
	if len(m) != 1 {
		return rt.ImageInfo{}, fmt.Errorf("process: load: the archive holds %d images, want 1: %w", len(m), rt.ErrUnsupportedImage)
	}
	img, err := tarball.Image(opener, nil)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: load: %w", err)
	}
	return r.importImage(img, m[0].RepoTags, "", progress)
}

// importImage extracts the entrypoint of img into the store.
func (r *Runtime) importImage(img v1.Image, tags []string, repoDigest string, progress func(rt.Progress)) (rt.ImageInfo, error) {
	id, err := img.ConfigName()
	if err != nil {
		return rt.ImageInfo{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return rt.ImageInfo{}, err
	}
	ep := cf.Config.Entrypoint
	if len(ep) == 0 {
		ep = cf.Config.Cmd
	}
	if len(ep) == 0 || !path.IsAbs(ep[0]) {
		return rt.ImageInfo{}, fmt.Errorf("image %s: entrypoint %q is not one absolute path: %w", id, ep, rt.ErrUnsupportedImage)
	}
	meta := imageMeta{ImageInfo: rt.ImageInfo{
		ID: id.String(), OS: cf.OS, Arch: cf.Architecture, Variant: cf.Variant,
		Labels: cf.Config.Labels, Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd, RepoTags: tags,
	}, Env: cf.Config.Env}
	if repoDigest != "" {
		meta.RepoDigests = []string{repoDigest}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	final := filepath.Dir(r.exePath(meta.ID))
	if old, err := r.readMeta(final); err == nil { // already there: add the new names
		meta.RepoTags = mergeNames(old.RepoTags, meta.RepoTags)
		meta.RepoDigests = mergeNames(old.RepoDigests, meta.RepoDigests)
		meta.Size = old.Size
		meta.Digest = old.Digest
		if err := writeJSON(filepath.Join(final, "image.json"), meta); err != nil {
			return rt.ImageInfo{}, err
		}
		return meta.info(), nil
	}
	var total int64
	if layers, err := img.Layers(); err == nil {
		for _, l := range layers {
			if s, err := l.Size(); err == nil {
				total += s
			}
		}
	}
	if progress != nil {
		progress(rt.Progress{Phase: "download", Total: total, Status: "extracting " + ep[0]})
	}
	tmp, err := os.MkdirTemp(r.tmpDir(), "img-*")
	if err != nil {
		return rt.ImageInfo{}, err
	}
	defer os.RemoveAll(tmp)
	size, err := extractFile(img, ep[0], filepath.Join(tmp, "exe"))
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("image %s: %w", id, err)
	}
	meta.Size = size
	if err := writeJSON(filepath.Join(tmp, "image.json"), meta); err != nil {
		return rt.ImageInfo{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return rt.ImageInfo{}, err
	}
	if progress != nil {
		progress(rt.Progress{Phase: "done", Current: total, Total: total, Status: "imported " + meta.ID})
	}
	return meta.info(), nil
}

func (m imageMeta) info() rt.ImageInfo {
	i := m.ImageInfo
	if i.Labels == nil {
		i.Labels = map[string]string{}
	}
	if len(m.RepoDigests) == 1 && i.Digest == "" {
		_, i.Digest, _ = strings.Cut(m.RepoDigests[0], "@")
	}
	return i
}

func mergeNames(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// extractFile writes the regular file at p of img's flattened filesystem to dst.
func extractFile(img v1.Image, p, dst string) (int64, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	want := strings.TrimPrefix(path.Clean(p), "/")
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return 0, fmt.Errorf("entrypoint %s not in the image: %w", p, rt.ErrUnsupportedImage)
		}
		if err != nil {
			return 0, err
		}
		if strings.TrimPrefix(path.Clean(h.Name), "/") != want {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return 0, fmt.Errorf("entrypoint %s is not a regular file (the process runtime runs single static binaries): %w", p, rt.ErrUnsupportedImage)
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			return 0, err
		}
		n, err := io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return n, err
	}
}

// pullFile imports a local tarball or executable.
func (r *Runtime) pullFile(ctx context.Context, p string, progress func(rt.Progress)) (rt.ImageInfo, error) {
	p, pin, _ := strings.Cut(p, "@")
	f, err := os.Open(p)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w: %w", p, rt.ErrNotFound, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %s: %w", p, err)
	}
	sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if pin != "" && pin != sum {
		return rt.ImageInfo{}, fmt.Errorf("process: pull %s: content is %s, pinned %s: %w", p, sum, pin, rt.ErrIncompatible)
	}
	head := make([]byte, 512)
	n, _ := f.ReadAt(head, 0)
	if n >= 262 && string(head[257:262]) == "ustar" {
		info, err := r.loadTarball(p, progress)
		if err != nil {
			return rt.ImageInfo{}, err
		}
		return info, nil
	}
	return r.importExecutable(p, sum)
}

func (r *Runtime) importExecutable(p, sum string) (rt.ImageInfo, error) {
	var sc Sidecar
	if err := readJSON(p+".json", &sc); err != nil && !errors.Is(err, os.ErrNotExist) {
		return rt.ImageInfo{}, fmt.Errorf("process: sidecar %s.json: %w", p, err)
	}
	if sc.OS == "" {
		sc.OS = "linux"
	}
	if sc.Arch == "" {
		a, err := elfArch(p)
		if err != nil {
			return rt.ImageInfo{}, fmt.Errorf("process: %s: %w: %w", p, err, rt.ErrUnsupportedImage)
		}
		sc.Arch = a
	}
	meta := imageMeta{ImageInfo: rt.ImageInfo{
		ID: sum, Digest: sum, OS: sc.OS, Arch: sc.Arch, Variant: sc.Variant, Labels: maps.Clone(sc.Labels),
		Entrypoint: []string{"/" + filepath.Base(p)}, Cmd: sc.Cmd,
		RepoTags: []string{"file://" + p},
	}, Env: sc.Env}
	r.mu.Lock()
	defer r.mu.Unlock()
	final := filepath.Dir(r.exePath(sum))
	if _, err := os.Stat(final); err == nil {
		old, err := r.readMeta(final)
		if err != nil {
			return rt.ImageInfo{}, err
		}
		return old.info(), nil
	}
	tmp, err := os.MkdirTemp(r.tmpDir(), "img-*")
	if err != nil {
		return rt.ImageInfo{}, err
	}
	defer os.RemoveAll(tmp)
	src, err := os.Open(p)
	if err != nil {
		return rt.ImageInfo{}, err
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(tmp, "exe"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return rt.ImageInfo{}, err
	}
	meta.Size, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rt.ImageInfo{}, err
	}
	if err := writeJSON(filepath.Join(tmp, "image.json"), meta); err != nil {
		return rt.ImageInfo{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return rt.ImageInfo{}, err
	}
	return meta.info(), nil
}

func elfArch(p string) (string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_386:
		return "386", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	}
	return "", fmt.Errorf("ELF machine %v", f.Machine)
}

func (r *Runtime) readMeta(dir string) (imageMeta, error) {
	var m imageMeta
	err := readJSON(filepath.Join(dir, "image.json"), &m)
	return m, err
}

func (r *Runtime) allImages() ([]imageMeta, error) {
	ents, err := os.ReadDir(r.imagesDir())
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	var out []imageMeta
	for _, e := range ents {
		if m, err := r.readMeta(filepath.Join(r.imagesDir(), e.Name())); err == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// Inspect finds an image by ID, name:tag, name@digest or file:// path.
func (r *Runtime) Inspect(ctx context.Context, ref string) (rt.ImageInfo, error) {
	m, err := r.find(ref)
	if err != nil {
		return rt.ImageInfo{}, err
	}
	info := m.info()
	if _, dg, ok := strings.Cut(ref, "@"); ok {
		info.Digest = dg
	}
	return info, nil
}

func (r *Runtime) find(ref string) (imageMeta, error) {
	notFound := fmt.Errorf("process: image %s: %w", ref, rt.ErrNotFound)
	if strings.HasPrefix(ref, "sha256:") {
		m, err := r.readMeta(filepath.Dir(r.exePath(ref)))
		if err != nil {
			return m, notFound
		}
		return m, nil
	}
	all, err := r.allImages()
	if err != nil {
		return imageMeta{}, err
	}
	want := normalize(ref)
	for _, m := range all {
		for _, n := range append(slices.Clone(m.RepoTags), m.RepoDigests...) {
			if n == ref || normalize(n) == want {
				return m, nil
			}
		}
	}
	return imageMeta{}, notFound
}

func normalize(ref string) string {
	if strings.HasPrefix(ref, "file://") {
		return ref
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return ref
	}
	return r.Name()
}

// Prune removes the selected images no controller uses, except the kept.
func (r *Runtime) Prune(ctx context.Context, opts rt.PruneOptions) ([]string, error) {
	all, err := r.allImages()
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, k := range opts.Keep {
		if m, err := r.find(k); err == nil {
			keep[m.ID] = true
		}
	}
	states, err := r.states()
	if err != nil {
		return nil, err
	}
	for _, s := range states {
		keep[s.Image] = true
	}
	var removed []string
	for _, m := range all {
		if keep[m.ID] {
			continue
		}
		if len(opts.Labels) == 0 {
			if _, ok := m.Labels[rt.LabelVersion]; !ok {
				continue
			}
		} else if !rt.HasLabels(m.Labels, opts.Labels) {
			continue
		}
		if err := os.RemoveAll(filepath.Dir(r.exePath(m.ID))); err != nil {
			return removed, fmt.Errorf("process: prune %s: %w", m.ID, err)
		}
		removed = append(removed, m.ID)
		r.log.Info("image pruned", "id", m.ID, "tags", m.RepoTags)
	}
	return removed, nil
}
