package keys

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
)

func TestKeygenSignVerify(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, "k", PrivateName), filepath.Join(dir, "k", PublicName)
	id, err := Keygen(privPath, pubPath, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{privPath: 0o600, pubPath: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(privPath))
	if len(ents) != 2 {
		t.Errorf("key dir holds %d entries, want 2 (no temporary files left)", len(ents))
	}
	privPEM, _ := os.ReadFile(privPath)
	if !bytes.HasPrefix(privPEM, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("private key file is not PEM PKCS#8:\n%s", privPEM)
	}

	s, err := LoadSigner(privPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if s.KeyID() != id || mqttapi.KeyID(pub) != id || !pub.Equal(s.Public()) {
		t.Fatalf("key ids: signer %s, file %s, keygen %s", s.KeyID(), mqttapi.KeyID(pub), id)
	}

	// What the drone does: trust the .pub file, verify what the ground signed.
	kr, err := mqttapi.LoadKeyring(filepath.Dir(pubPath))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	m := &mqttapi.Manifest{Kind: mqttapi.KindUpdate, Drone: "drone-1", Serial: mqttapi.NextSerial(0, now), Version: "2.0.0",
		Image:    mqttapi.Image{Ref: "flightctl@sha256:" + string(bytes.Repeat([]byte("ab"), 32))},
		IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	raw, err := s.SignManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := mqttapi.Verify(raw, kr, now, mqttapi.Expect{Drone: "drone-1"})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.Serial != m.Serial || got.Version != "2.0.0" {
		t.Fatalf("got %+v", got)
	}
	r := &mqttapi.Request{Kind: mqttapi.KindRollback, Drone: "drone-1", Serial: 1, IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	raw, err = s.SignRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mqttapi.VerifyRequest(raw, kr, now, mqttapi.Expect{Drone: "drone-1"}); err != nil {
		t.Fatalf("VerifyRequest: %v", err)
	}
	env, err := s.Sign([]byte(`{"v":1}`))
	if err != nil || env.KeyID != id || env.Alg != mqttapi.AlgEd25519 || !ed25519.Verify(pub, env.Payload, env.Sig) {
		t.Fatalf("Sign: %+v %v", env, err)
	}
	// A manifest that does not validate is not signed.
	m.Image.Ref = "flightctl:latest"
	if _, err := s.SignManifest(m); !errors.Is(err, mqttapi.ErrBadDigest) {
		t.Fatalf("unpinned image signed: %v", err)
	}
}

func TestKeygenRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, PrivateName), filepath.Join(dir, PublicName)
	id1, err := Keygen(privPath, pubPath, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Keygen(privPath, pubPath, false, nil); !errors.Is(err, ErrExists) {
		t.Fatalf("second keygen: %v, want ErrExists", err)
	}
	s, _ := LoadSigner(privPath)
	if s.KeyID() != id1 {
		t.Fatal("the refused keygen changed the key")
	}
	id2, err := Keygen(privPath, pubPath, true, nil)
	if err != nil || id2 == id1 {
		t.Fatalf("overwrite: %s %v", id2, err)
	}
	if s, _ := LoadSigner(privPath); s.KeyID() != id2 {
		t.Fatal("overwrite did not replace the key")
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, PrivateName), filepath.Join(dir, PublicName)
	if _, err := Keygen(privPath, pubPath, false, bytes.NewReader(bytes.Repeat([]byte{7}, 64))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(privPath, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(privPath); !errors.Is(err, ErrInsecure) {
		t.Errorf("group-readable key: %v", err)
	}
	os.Chmod(privPath, 0o600)
	if _, err := LoadPrivateKey(pubPath + "x"); err == nil {
		t.Error("missing file loaded")
	}
	// Swapped files.
	if _, err := LoadPublicKey(privPath); !errors.Is(err, ErrFormat) {
		t.Errorf("private key as public: %v", err)
	}
	swapped := filepath.Join(dir, "swapped")
	pubPEM, _ := os.ReadFile(pubPath)
	os.WriteFile(swapped, pubPEM, 0o600)
	if _, err := LoadPrivateKey(swapped); !errors.Is(err, ErrFormat) {
		t.Errorf("public key as private: %v", err)
	}
	two := filepath.Join(dir, "two.pub")
	os.WriteFile(two, append(bytes.Clone(pubPEM), pubPEM...), 0o644)
	if _, err := LoadPublicKey(two); !errors.Is(err, ErrFormat) {
		t.Errorf("two keys in one public file: %v", err)
	}
	if _, err := NewSigner(ed25519.PrivateKey{1, 2}); !errors.Is(err, ErrFormat) {
		t.Errorf("short key: %v", err)
	}
}
