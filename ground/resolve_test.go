package ground

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/inflight-ota/inflight/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

func labelled(t *testing.T, arch, variant string) v1.Image {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = "linux", arch, variant
	cf.Config.Labels = map[string]string{LabelVersion: "2.1.0", LabelHandoffProtocol: "1,2", LabelStateSchema: "3"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestResolveRegistryIndex(t *testing.T) {
	reg := testsvc.Registry(t)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: labelled(t, "arm64", ""), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: labelled(t, "arm", "v7"), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}}},
	)
	ref, _ := name.ParseReference(reg + "/inflight/flightctl:2.1.0")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	info, err := ResolveRegistry(context.Background(), ref.String())
	if err != nil {
		t.Fatal(err)
	}
	if info.Ref != reg+"/inflight/flightctl@"+d.String() || info.Version() != "2.1.0" {
		t.Errorf("info %+v", info)
	}
	if len(info.Arch) != 2 || info.Arch[0] != "linux/arm/v7" || info.Arch[1] != "linux/arm64" {
		t.Errorf("arch %v", info.Arch)
	}
	if info.Handoff == nil || info.Handoff.Protocol != 2 || info.Handoff.StateSchema != 3 {
		t.Errorf("handoff %+v", info.Handoff)
	}
}

func TestRepoOf(t *testing.T) {
	for in, want := range map[string]string{
		"flightctl:2":                                   "flightctl",
		"127.0.0.1:5000/x/flightctl:2":                  "127.0.0.1:5000/x/flightctl",
		"127.0.0.1:5000/x/flightctl":                    "127.0.0.1:5000/x/flightctl",
		"r/flightctl@sha256:" + string(make([]byte, 0)): "r/flightctl",
	} {
		if got := repoOf(in); got != want {
			t.Errorf("repoOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestArchiveFromDocker saves an image from the local Docker Engine and
// checks the manifest names the id the engine reports.
func TestArchiveFromDocker(t *testing.T) {
	cli := testsvc.Docker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img := labelled(t, "amd64", "")
	tag, _ := name.NewTag("inflight-groundctl-test/flightctl:2.1.0")
	p := filepath.Join(t.TempDir(), "in.tar")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	resp, err := cli.ImageLoad(ctx, f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("ImageLoad: %s", body)
	t.Cleanup(func() { cli.ImageRemove(context.Background(), tag.String(), image.RemoveOptions{Force: true}) })
	a, err := ArchiveFromDocker(ctx, tag.String(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	id, _ := img.ConfigName()
	if a.Info.Ref != "inflight-groundctl-test/flightctl@"+id.String() || a.Info.Version() != "2.1.0" || a.Size == 0 {
		t.Errorf("archive %+v", a)
	}
}
