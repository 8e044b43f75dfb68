package imagebuild

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func TestBuildIsReproducibleAndComplete(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "flightctl")
	if err := os.WriteFile(bin, []byte("\x7fELF fake"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := Config{Binary: bin, Arch: "arm", Variant: "v6", Labels: map[string]string{"org.inflight.version": "1"}, Cmd: []string{"-role", "cold"}}
	a, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds differ: %s %s", da, db)
	}
	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "arm" || cf.Variant != "v6" || cf.OS != "linux" || cf.Config.User != DefaultUser ||
		cf.Config.Entrypoint[0] != "/flightctl" || cf.Config.Labels["org.inflight.version"] != "1" {
		t.Fatalf("config %+v", cf)
	}
	files := map[string]*tar.Header{}
	tr := tar.NewReader(mutate.Extract(a))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
	}
	if h := files["flightctl"]; h == nil || h.Mode&0o111 == 0 {
		t.Fatalf("entrypoint missing or not executable: %v", files)
	}
	for _, d := range []string{"tmp", "run/inflight"} {
		if files[d] == nil {
			t.Errorf("%s missing from %v", d, files)
		}
	}
	var buf bytes.Buffer
	if err := WriteTarball(&buf, a, "inflight/flightctl:v1"); err != nil {
		t.Fatal(err)
	}
	if buf.Len() == 0 {
		t.Fatal("empty tarball")
	}
	idx, err := Index(a)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Platform.Variant != "v6" {
		t.Fatalf("index %+v", im)
	}
}
