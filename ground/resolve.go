package ground

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/client"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/transfer"
)

// Image labels every controller image carries (images/Dockerfile; the
// agent checks the same names).
const (
	LabelVersion         = "org.inflight.version"
	LabelHandoffProtocol = "org.inflight.handoff.protocol"
	LabelStateSchema     = "org.inflight.state.schema"
)

// ImageInfo is what the ground learns about an image before it signs it.
type ImageInfo struct {
	Ref     string                 // repo@sha256:... as it goes in the manifest
	Digest  string                 // sha256:...
	Labels  map[string]string      // of the image config, when they could be read
	Arch    []string               // platforms, e.g. linux/arm64, when known
	Handoff *mqttapi.HandoffCompat // from the labels, when present
	Source  string                 // "registry", "docker" or "file"
}

// Version is the image's version label.
func (i ImageInfo) Version() string { return i.Labels[LabelVersion] }

func (i *ImageInfo) fromConfig(cf *v1.ConfigFile) {
	if cf == nil {
		return
	}
	i.Labels = cf.Config.Labels
	hc := &mqttapi.HandoffCompat{}
	if v := i.Labels[LabelHandoffProtocol]; v != "" {
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > hc.Protocol {
				hc.Protocol = n
			}
		}
	}
	if n, err := strconv.Atoi(i.Labels[LabelStateSchema]); err == nil && n > 0 {
		hc.StateSchema = n
	}
	if hc.Protocol > 0 || hc.StateSchema > 0 {
		i.Handoff = hc
	}
	if len(i.Arch) == 0 && cf.Architecture != "" {
		i.Arch = []string{platform(cf.OS, cf.Architecture, cf.Variant)}
	}
}

func platform(os, arch, variant string) string {
	if os == "" {
		os = "linux"
	}
	s := os + "/" + arch
	if variant != "" {
		s += "/" + variant
	}
	return s
}

// ResolveRegistry pins ref (repo:tag or repo@digest) to the digest the
// registry serves and reads the image's labels and platforms. Loopback and
// private registries are spoken to over plain HTTP, as
// go-containerregistry does.
func ResolveRegistry(ctx context.Context, ref string) (ImageInfo, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("ground: image %q: %w", ref, err)
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("ground: image %s: %w", ref, err)
	}
	info := ImageInfo{
		Ref:    r.Context().Name() + "@" + desc.Digest.String(),
		Digest: desc.Digest.String(),
		Source: "registry",
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return info, fmt.Errorf("ground: image %s: %w", ref, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return info, fmt.Errorf("ground: image %s: %w", ref, err)
		}
		var first *v1.Descriptor
		for i, m := range im.Manifests {
			if m.Platform == nil || m.Platform.Architecture == "unknown" {
				continue // attestation manifests
			}
			info.Arch = append(info.Arch, platform(m.Platform.OS, m.Platform.Architecture, m.Platform.Variant))
			if first == nil {
				first = &im.Manifests[i]
			}
		}
		sort.Strings(info.Arch)
		if first != nil {
			if img, err := idx.Image(first.Digest); err == nil {
				cf, _ := img.ConfigFile()
				info.fromConfig(cf)
			}
		}
		return info, nil
	}
	img, err := desc.Image()
	if err != nil {
		return info, fmt.Errorf("ground: image %s: %w", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return info, fmt.Errorf("ground: image %s: config: %w", ref, err)
	}
	info.fromConfig(cf)
	return info, nil
}

// Archive is an image archive ready to send over MQTT.
type Archive struct {
	Info   ImageInfo
	Path   string // the tarball
	Digest string // sha256 of the whole tarball
	Size   int64
	Format string // "docker-archive"
	temp   bool
}

// Close removes the tarball when it is a temporary copy (ImageSave).
func (a *Archive) Close() error {
	if a.temp {
		return os.Remove(a.Path)
	}
	return nil
}

// Manifest returns the archive's description for the manifest.
func (a *Archive) Manifest() *mqttapi.Archive {
	return &mqttapi.Archive{Digest: a.Digest, Size: a.Size, Format: a.Format}
}

// ArchiveFromFile reads a Docker image tarball ("docker save" output, with
// or without the OCI index): the image id (config digest) the engine will
// report after loading it, its labels, and the digest of the file. repo
// names the image in the manifest when the tarball carries no tag.
func ArchiveFromFile(path, repo string) (*Archive, error) {
	mf, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		return nil, fmt.Errorf("ground: %s: not a docker-archive (manifest.json): %w", path, err)
	}
	if len(mf) != 1 {
		return nil, fmt.Errorf("ground: %s holds %d images, want 1: %w", path, len(mf), mqttapi.ErrInvalid)
	}
	var tag *name.Tag
	if len(mf[0].RepoTags) > 0 {
		if t, err := name.NewTag(mf[0].RepoTags[0]); err == nil {
			tag = &t
			if repo == "" {
				repo = repoOf(mf[0].RepoTags[0])
			}
		}
	}
	img, err := tarball.ImageFromPath(path, tag)
	if err != nil {
		return nil, fmt.Errorf("ground: %s: %w", path, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("ground: %s: %w", path, err)
	}
	if repo == "" {
		repo = "inflight/flightctl"
	}
	info := ImageInfo{Ref: repo + "@" + id.String(), Digest: id.String(), Source: "file"}
	cf, _ := img.ConfigFile()
	info.fromConfig(cf)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ground: %w", err)
	}
	defer f.Close()
	d, n, err := transfer.Digest(f)
	if err != nil {
		return nil, err
	}
	return &Archive{Info: info, Path: path, Digest: d, Size: n, Format: "docker-archive"}, nil
}

// ArchiveFromDocker saves ref from the local Docker Engine (ImageSave)
// into a temporary file in dir ("" for the system's) and describes it.
// Close the archive to remove the file.
func ArchiveFromDocker(ctx context.Context, ref, dir string) (*Archive, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("ground: docker: %w", err)
	}
	defer cli.Close()
	ins, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("ground: docker image %s: %w", ref, err)
	}
	rc, err := cli.ImageSave(ctx, []string{ref})
	if err != nil {
		return nil, fmt.Errorf("ground: docker save %s: %w", ref, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, "groundctl-image-*.tar")
	if err != nil {
		return nil, fmt.Errorf("ground: %w", err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("ground: docker save %s: %w", ref, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("ground: %w", err)
	}
	a, err := ArchiveFromFile(f.Name(), repoOf(ref))
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	a.temp = true
	if a.Info.Digest != ins.ID {
		a.Close()
		return nil, fmt.Errorf("ground: docker says image %s is %s, the saved archive holds %s", ref, ins.ID, a.Info.Digest)
	}
	a.Info.Source = "docker"
	return a, nil
}

// ResolveDocker pins ref to a digest the local Docker Engine knows: a
// registry digest from RepoDigests when it has one, else the image id.
func ResolveDocker(ctx context.Context, ref string) (ImageInfo, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return ImageInfo{}, fmt.Errorf("ground: docker: %w", err)
	}
	defer cli.Close()
	ins, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("ground: docker image %s: %w", ref, err)
	}
	info := ImageInfo{Source: "docker", Digest: ins.ID}
	repo := repoOf(ref)
	info.Ref = repo + "@" + ins.ID
	for _, rd := range ins.RepoDigests {
		if strings.HasPrefix(rd, repo+"@") || repo == "" {
			info.Ref = rd
			info.Digest = rd[strings.LastIndex(rd, "@")+1:]
			break
		}
	}
	if ins.Config != nil {
		info.Labels = ins.Config.Labels
	}
	info.Arch = []string{platform(ins.Os, ins.Architecture, ins.Variant)}
	cf := &v1.ConfigFile{OS: ins.Os, Architecture: ins.Architecture, Variant: ins.Variant}
	cf.Config.Labels = info.Labels
	info.fromConfig(cf)
	return info, nil
}

// repoOf strips the tag or digest from an image reference as the user
// wrote it ("flightctl:2", "reg:5000/x/flightctl@sha256:..."), without
// adding Docker Hub's default registry the way name.Repository does.
func repoOf(ref string) string {
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}
