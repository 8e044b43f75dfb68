package mqttapi

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTopicsBuildAndParse(t *testing.T) {
	for _, root := range []string{"", "inflight", "site1/inflight"} {
		tp, err := NewTopics(root)
		if err != nil {
			t.Fatal(err)
		}
		d, err := tp.Drone("drone-1")
		if err != nil {
			t.Fatal(err)
		}
		r := tp.Root
		if d.Desired != r+"/drones/drone-1/desired" || d.Status != r+"/drones/drone-1/status" {
			t.Fatalf("root %q: %+v", root, d)
		}
		for k, topic := range map[Kind]string{KindDesired: d.Desired, KindReported: d.Reported, KindEvents: d.Events,
			KindTelemetry: d.Telemetry, KindRequests: d.Requests, KindStatus: d.Status} {
			got, err := tp.Parse(topic)
			if err != nil || got != (Topic{Kind: k, Drone: "drone-1"}) {
				t.Errorf("Parse(%q) = %+v, %v", topic, got, err)
			}
		}
		chunk, err := d.TransferChunk("4b3c1f0e5d2a6978")
		if err != nil {
			t.Fatal(err)
		}
		if chunk != r+"/drones/drone-1/transfer/4b3c1f0e5d2a6978/chunk" {
			t.Errorf("chunk topic %q", chunk)
		}
		have, _ := d.TransferHave("4b3c1f0e5d2a6978")
		for topic, k := range map[string]Kind{chunk: KindChunk, have: KindHave} {
			got, err := tp.Parse(topic)
			if err != nil || got != (Topic{Kind: k, Drone: "drone-1", Transfer: "4b3c1f0e5d2a6978"}) {
				t.Errorf("Parse(%q) = %+v, %v", topic, got, err)
			}
		}
		fleet, err := tp.FleetDesired("alpha")
		if err != nil || fleet != r+"/fleets/alpha/desired" {
			t.Fatalf("fleet topic %q, %v", fleet, err)
		}
		if got, err := tp.Parse(fleet); err != nil || got != (Topic{Kind: KindDesired, Fleet: "alpha"}) {
			t.Errorf("Parse(%q) = %+v, %v", fleet, got, err)
		}
		if f := tp.AllDrones(KindReported); f != r+"/drones/+/reported" {
			t.Errorf("AllDrones = %q", f)
		}
		if f := d.TransferFilter(); f != r+"/drones/drone-1/transfer/+/+" {
			t.Errorf("TransferFilter = %q", f)
		}
	}
}

func TestTopicsReject(t *testing.T) {
	tp := Topics{}
	for _, id := range []string{"", "a/b", "+", "#", "a+", "$SYS", "-x", ".x", "a b", strings.Repeat("a", MaxIDLen+1), "dröhne", "a\x00"} {
		if _, err := tp.Drone(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Drone(%q): %v, want ErrInvalidID", id, err)
		}
		if _, err := tp.FleetDesired(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("FleetDesired(%q): %v, want ErrInvalidID", id, err)
		}
	}
	if err := ValidateID(strings.Repeat("a", MaxIDLen)); err != nil {
		t.Errorf("id of MaxIDLen: %v", err)
	}
	d, _ := tp.Drone("d1")
	if _, err := d.TransferChunk("x/y"); !errors.Is(err, ErrInvalidID) {
		t.Errorf("transfer id with slash: %v", err)
	}
	for _, root := range []string{"a//b", "/a", "a/", "a/#", "$SYS"} {
		if _, err := NewTopics(root); !errors.Is(err, ErrInvalidID) {
			t.Errorf("NewTopics(%q): %v", root, err)
		}
	}
	for _, topic := range []string{
		"other/drones/d1/desired", "inflight/drones/d1", "inflight/drones/+/desired", "inflight/drones/d1/desired/x",
		"inflight/drones/d1/nope", "inflight/fleets/a/reported", "inflight/things/d1/desired",
		"inflight/drones/d1/transfer/t1/nope", "inflight/drones/d1/transfer/#/chunk", "inflight/drones/d1/xfer/t1/chunk",
		"inflightx/drones/d1/desired",
	} {
		if _, err := tp.Parse(topic); !errors.Is(err, ErrInvalidTopic) {
			t.Errorf("Parse(%q): %v, want ErrInvalidTopic", topic, err)
		}
	}
}

func writePub(t *testing.T, path string, keys ...ed25519.PrivateKey) {
	t.Helper()
	var out []byte
	for _, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadKeyring(t *testing.T) {
	dir := t.TempDir()
	a, b, c := testKey(1), testKey(2), testKey(3)
	writePub(t, filepath.Join(dir, "ops.pub"), a, b)
	writePub(t, filepath.Join(dir, "ci.pem"), c)
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	kr, err := LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	if kr.Len() != 3 {
		t.Fatalf("keyring of %d keys: %v", kr.Len(), kr.IDs())
	}
	for _, k := range []ed25519.PrivateKey{a, b, c} {
		if _, ok := kr.Lookup(KeyID(k.Public().(ed25519.PublicKey))); !ok {
			t.Errorf("key %s missing", KeyID(k.Public().(ed25519.PublicKey)))
		}
	}
	one, err := LoadKeyring(filepath.Join(dir, "ci.pem"))
	if err != nil || one.Len() != 1 {
		t.Fatalf("single file: %v, %d keys", err, one.Len())
	}

	// Failures.
	bad := filepath.Join(dir, "bad")
	if err := os.Mkdir(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty dir: %v", err)
	}
	priv := filepath.Join(bad, "x.pem")
	der, _ := x509.MarshalPKCS8PrivateKey(a)
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	if _, err := LoadKeyring(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("private key as trusted key: %v", err)
	}
	if _, err := LoadKeyring(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing path loaded")
	}
}
