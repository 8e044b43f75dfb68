package mqttapi

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

const testDigest = "sha256:4b3c1f0e5d2a6978b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8"

func testKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func testManifest() *Manifest {
	return &Manifest{
		Kind:      KindUpdate,
		Drone:     "drone-1",
		Serial:    1000,
		Version:   "2.0.0",
		Image:     Image{Ref: "registry.local/inflight/flightctl@" + testDigest},
		Arch:      []string{"linux/arm64", "linux/amd64"},
		Handoff:   &HandoffCompat{Protocol: 1, StateSchema: 2},
		IssuedAt:  t0,
		ExpiresAt: t0.Add(time.Hour),
		Options:   Options{Probation: Duration(30 * time.Second), BatteryFloorPct: 30},
	}
}

func sealJSON(t testing.TB, priv ed25519.PrivateKey, payload []byte) []byte {
	t.Helper()
	env, err := Sign(priv, payload)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func seal(t testing.TB, priv ed25519.PrivateKey, m *Manifest) []byte {
	t.Helper()
	p, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return sealJSON(t, priv, p)
}

func expect() Expect {
	return Expect{Drone: "drone-1", Fleets: []string{"alpha"}, LastSerial: 999, Arch: "linux/arm64"}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	priv := testKey(1)
	kr := NewKeyring(priv.Public().(ed25519.PublicKey))
	want := testManifest()
	raw := seal(t, priv, want)

	got, err := Verify(raw, kr, t0.Add(time.Minute), expect())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.Serial != want.Serial || got.Version != want.Version || got.Image.Ref != want.Image.Ref ||
		!got.IssuedAt.Equal(want.IssuedAt) || got.Options.Probation != want.Options.Probation ||
		got.Handoff.StateSchema != 2 || !got.Options.GroundSwapAllowed() {
		t.Fatalf("Verify returned %+v, want %+v", got, want)
	}

	// A fleet manifest for a fleet the drone is in.
	f := testManifest()
	f.Drone, f.Fleet = "", "alpha"
	if _, err := Verify(seal(t, priv, f), kr, t0, expect()); err != nil {
		t.Fatalf("fleet manifest: %v", err)
	}
}

func TestSignedBytesAreExact(t *testing.T) {
	priv := testKey(1)
	kr := NewKeyring(priv.Public().(ed25519.PublicKey))
	p, err := testManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Hand-written payload with its own spacing and field order: it is
	// accepted because the signature covers these very bytes.
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, p, "", "  "); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(sealJSON(t, priv, pretty.Bytes()), kr, t0, expect()); err != nil {
		t.Fatalf("indented payload: %v", err)
	}
	// The same manifest, re-serialised after signing: the signature no
	// longer matches.
	env, _ := Sign(priv, pretty.Bytes())
	env.Payload = p
	raw, _ := env.Marshal()
	if _, err := Verify(raw, kr, t0, expect()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("re-serialised payload: got %v, want ErrBadSignature", err)
	}
}

func TestVerifyRejects(t *testing.T) {
	priv := testKey(1)
	kr := NewKeyring(priv.Public().(ed25519.PublicKey))
	good := testManifest()
	goodPayload, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mutEnv := func(f func(e *Envelope)) []byte {
		env, err := Sign(priv, goodPayload)
		if err != nil {
			t.Fatal(err)
		}
		f(&env)
		b, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mutMan := func(f func(m *Manifest)) []byte {
		m := testManifest()
		f(m)
		b, err := json.Marshal(m) // not m.Marshal: it would refuse to build a bad one
		if err != nil {
			t.Fatal(err)
		}
		return sealJSON(t, priv, b)
	}
	mutRaw := func(f func(s string) string) []byte {
		return sealJSON(t, priv, []byte(f(string(goodPayload))))
	}
	exp := expect()

	cases := []struct {
		name   string
		raw    []byte
		now    time.Time
		exp    Expect
		want   error
		reason string
	}{
		{"empty (cleared)", nil, t0, exp, ErrCleared, "cleared"},
		{"oversized", append(seal(t, priv, good), bytes.Repeat([]byte(" "), MaxSignedSize)...), t0, exp, ErrOversized, "oversized"},
		{"unparsable", []byte(`{"v":1,"key_id":`), t0, exp, ErrUnparsable, "unparsable"},
		{"not json", []byte("hello"), t0, exp, ErrUnparsable, "unparsable"},
		{"trailing data", append(seal(t, priv, good), []byte(`{}`)...), t0, exp, ErrUnparsable, "unparsable"},
		{"bare manifest", goodPayload, t0, exp, ErrUnsigned, "unsigned"},
		{"no signature", mutEnv(func(e *Envelope) { e.Sig = nil }), t0, exp, ErrUnsigned, "unsigned"},
		{"no key id", mutEnv(func(e *Envelope) { e.KeyID = "" }), t0, exp, ErrUnsigned, "unsigned"},
		{"no payload", mutEnv(func(e *Envelope) { e.Payload = nil }), t0, exp, ErrInvalid, "invalid"},
		{"alg", mutEnv(func(e *Envelope) { e.Alg = "rsa" }), t0, exp, ErrUnsupportedAlg, "unsupported_alg"},
		{"unknown key", sealJSON(t, testKey(2), goodPayload), t0, exp, ErrUnknownKey, "unknown_key"},
		{"key id of another key", mutEnv(func(e *Envelope) { e.KeyID = KeyID(testKey(2).Public().(ed25519.PublicKey)) }), t0, exp, ErrUnknownKey, "unknown_key"},
		{"tampered payload", mutEnv(func(e *Envelope) { e.Payload = bytes.Replace(e.Payload, []byte("2.0.0"), []byte("6.6.6"), 1) }), t0, exp, ErrBadSignature, "bad_signature"},
		{"short signature", mutEnv(func(e *Envelope) { e.Sig = e.Sig[:10] }), t0, exp, ErrBadSignature, "bad_signature"},
		{"flipped signature bit", mutEnv(func(e *Envelope) { e.Sig[3] ^= 1 }), t0, exp, ErrBadSignature, "bad_signature"},
		{"envelope v2", mutEnv(func(e *Envelope) { e.V = 2 }), t0, exp, ErrUnsupportedVersion, "unsupported_version"},
		{"envelope without v", []byte(`{"key_id":"00","alg":"ed25519","payload":"e30=","sig":"AAAA"}`), t0, exp, ErrUnsupportedVersion, "unsupported_version"},
		{"manifest v2", mutMan(func(m *Manifest) { m.V = 2 }), t0, exp, ErrUnsupportedVersion, "unsupported_version"},
		{"manifest unparsable", sealJSON(t, priv, []byte(`{"v":1,"kind":`)), t0, exp, ErrUnparsable, "unparsable"},
		{"manifest unknown field", mutRaw(func(s string) string { return strings.Replace(s, `"kind"`, `"launch_missiles":true,"kind"`, 1) }), t0, exp, ErrUnparsable, "unparsable"},
		{"manifest kind", mutMan(func(m *Manifest) { m.V, m.Kind = 1, KindRollback }), t0, exp, ErrInvalid, "invalid"},
		{"manifest serial 0", mutMan(func(m *Manifest) { m.V, m.Serial = 1, 0 }), t0, exp, ErrInvalid, "invalid"},
		{"no target", mutMan(func(m *Manifest) { m.V, m.Drone = 1, "" }), t0, exp, ErrInvalid, "invalid"},
		{"two targets", mutMan(func(m *Manifest) { m.V, m.Fleet = 1, "alpha" }), t0, exp, ErrInvalid, "invalid"},
		{"drone id wildcard", mutMan(func(m *Manifest) { m.V, m.Drone = 1, "drone/+" }), t0, exp, ErrInvalidID, "invalid"},
		{"expiry before issue", mutMan(func(m *Manifest) { m.V, m.ExpiresAt = 1, m.IssuedAt }), t0, exp, ErrInvalid, "invalid"},
		{"no expiry", mutMan(func(m *Manifest) { m.V, m.ExpiresAt = 1, time.Time{} }), t0, exp, ErrInvalid, "invalid"},
		{"tag not digest", mutMan(func(m *Manifest) { m.V, m.Image.Ref = 1, "registry.local/flightctl:2.0.0" }), t0, exp, ErrBadDigest, "bad_digest"},
		{"short digest", mutMan(func(m *Manifest) { m.V, m.Image.Ref = 1, "flightctl@sha256:abcd" }), t0, exp, ErrBadDigest, "bad_digest"},
		{"upper-case digest", mutMan(func(m *Manifest) { m.V, m.Image.Ref = 1, "flightctl@"+strings.ToUpper(testDigest) }), t0, exp, ErrBadDigest, "bad_digest"},
		{"sha512 digest", mutMan(func(m *Manifest) { m.V, m.Image.Ref = 1, "flightctl@sha512:"+strings.Repeat("a", 128) }), t0, exp, ErrBadDigest, "bad_digest"},
		{"no repository", mutMan(func(m *Manifest) { m.V, m.Image.Ref = 1, "@"+testDigest }), t0, exp, ErrBadDigest, "bad_digest"},
		{"mqtt without archive", mutMan(func(m *Manifest) { m.V, m.Image.Transfer = 1, TransferMQTT }), t0, exp, ErrInvalid, "invalid"},
		{"mqtt archive bad digest", mutMan(func(m *Manifest) {
			m.V, m.Image.Transfer, m.Image.Archive = 1, TransferMQTT, &Archive{Digest: "sha256:xyz", Size: 10}
		}), t0, exp, ErrBadDigest, "bad_digest"},
		{"transfer unknown", mutMan(func(m *Manifest) { m.V, m.Image.Transfer = 1, "carrier-pigeon" }), t0, exp, ErrInvalid, "invalid"},
		{"battery floor", mutMan(func(m *Manifest) { m.V, m.Options.BatteryFloorPct = 1, 120 }), t0, exp, ErrInvalid, "invalid"},
		{"another drone", mutMan(func(m *Manifest) { m.V, m.Drone = 1, "drone-2" }), t0, exp, ErrWrongTarget, "wrong_target"},
		{"another fleet", mutMan(func(m *Manifest) { m.V, m.Drone, m.Fleet = 1, "", "bravo" }), t0, exp, ErrWrongTarget, "wrong_target"},
		{"older serial", seal(t, priv, good), t0, Expect{Drone: "drone-1", LastSerial: 2000}, ErrReplayed, "replayed"},
		{"same serial", seal(t, priv, good), t0, Expect{Drone: "drone-1", LastSerial: 1000}, ErrAlreadyApplied, "already_applied"},
		{"same serial, expired", seal(t, priv, good), t0.Add(48 * time.Hour), Expect{Drone: "drone-1", LastSerial: 1000}, ErrAlreadyApplied, "already_applied"},
		{"expired", seal(t, priv, good), t0.Add(time.Hour + DefaultSkew + time.Second), exp, ErrExpired, "expired"},
		{"not yet valid", seal(t, priv, good), t0.Add(-DefaultSkew - time.Second), exp, ErrNotYetValid, "not_yet_valid"},
		{"expired, small skew", seal(t, priv, good), t0.Add(time.Hour + 2*time.Second), Expect{Drone: "drone-1", Skew: time.Second}, ErrExpired, "expired"},
		{"wrong arch", seal(t, priv, good), t0, Expect{Drone: "drone-1", Arch: "linux/arm/v6"}, ErrWrongArch, "wrong_arch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Verify(c.raw, kr, c.now, c.exp)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if m != nil {
				t.Fatalf("rejected manifest returned: %+v", m)
			}
			if r := Reason(err); r != c.reason {
				t.Fatalf("Reason = %q, want %q (err %v)", r, c.reason, err)
			}
			if !strings.HasPrefix(err.Error(), "mqttapi: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestVerifyWithinSkew(t *testing.T) {
	priv := testKey(1)
	kr := NewKeyring(priv.Public().(ed25519.PublicKey))
	raw := seal(t, priv, testManifest())
	for _, now := range []time.Time{t0.Add(-DefaultSkew + time.Second), t0.Add(time.Hour + DefaultSkew - time.Second)} {
		if _, err := Verify(raw, kr, now, expect()); err != nil {
			t.Errorf("at %s: %v", now, err)
		}
	}
	// A manifest that lists no architecture is not rejected on that ground.
	m := testManifest()
	m.Arch = nil
	if _, err := Verify(seal(t, priv, m), kr, t0, Expect{Drone: "drone-1", Arch: "linux/arm/v6"}); err != nil {
		t.Errorf("no arch list: %v", err)
	}
}

func TestAlreadyAppliedIsReplayed(t *testing.T) {
	if !errors.Is(ErrAlreadyApplied, ErrReplayed) {
		t.Fatal("ErrAlreadyApplied must wrap ErrReplayed")
	}
	if !IsNoop(fmt.Errorf("x: %w", ErrAlreadyApplied)) || !IsNoop(ErrCleared) || IsNoop(ErrReplayed) || IsNoop(ErrExpired) {
		t.Fatal("IsNoop")
	}
	if Reason(errors.New("other")) != "error" || Reason(nil) != "" {
		t.Fatal("Reason of foreign error or nil")
	}
}

func testRequest() *Request {
	return &Request{Kind: KindRollback, Drone: "drone-1", Serial: 7, UpdateSerial: 1000, Reason: "wobbles", IssuedAt: t0, ExpiresAt: t0.Add(5 * time.Minute)}
}

func TestVerifyRequest(t *testing.T) {
	priv := testKey(1)
	kr := NewKeyring(priv.Public().(ed25519.PublicKey))
	p, err := testRequest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	raw := sealJSON(t, priv, p)
	r, err := VerifyRequest(raw, kr, t0, Expect{Drone: "drone-1", LastSerial: 6})
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindRollback || r.UpdateSerial != 1000 || r.Reason != "wobbles" {
		t.Fatalf("got %+v", r)
	}
	checks := []struct {
		name string
		raw  []byte
		now  time.Time
		exp  Expect
		want error
	}{
		{"replayed", raw, t0, Expect{Drone: "drone-1", LastSerial: 7}, ErrAlreadyApplied},
		{"older", raw, t0, Expect{Drone: "drone-1", LastSerial: 9}, ErrReplayed},
		{"another drone", raw, t0, Expect{Drone: "drone-2"}, ErrWrongTarget},
		{"expired", raw, t0.Add(time.Hour), Expect{Drone: "drone-1"}, ErrExpired},
		{"unknown key", sealJSON(t, testKey(3), p), t0, Expect{Drone: "drone-1"}, ErrUnknownKey},
		{"manifest as request", seal(t, priv, testManifest()), t0, Expect{Drone: "drone-1"}, ErrUnparsable},
		{"bad kind", sealJSON(t, priv, bytes.Replace(p, []byte(`"rollback"`), []byte(`"selfdestruct"`), 1)), t0, Expect{Drone: "drone-1"}, ErrInvalid},
		{"unsigned", p, t0, Expect{Drone: "drone-1"}, ErrUnsigned},
	}
	for _, c := range checks {
		if _, err := VerifyRequest(c.raw, kr, c.now, c.exp); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	// A request is never a manifest either.
	if _, err := Verify(raw, kr, t0, Expect{Drone: "drone-1"}); !errors.Is(err, ErrUnparsable) {
		t.Errorf("request as manifest: got %v", err)
	}
}

func TestNextSerial(t *testing.T) {
	if got := NextSerial(0, t0); got != uint64(t0.UnixMilli()) {
		t.Errorf("NextSerial(0) = %d", got)
	}
	big := uint64(t0.UnixMilli()) + 10
	if got := NextSerial(big, t0); got != big+1 {
		t.Errorf("NextSerial(%d) = %d", big, got)
	}
}

func TestEnvelopeJSONShape(t *testing.T) {
	priv := testKey(1)
	raw := sealJSON(t, priv, []byte(`{"v":1}`))
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"v", "key_id", "alg", "payload", "sig"} {
		if _, ok := m[k]; !ok {
			t.Errorf("envelope lacks %q: %s", k, raw)
		}
	}
	p, err := base64.StdEncoding.DecodeString(m["payload"].(string))
	if err != nil || string(p) != `{"v":1}` {
		t.Errorf("payload %q is not the base64 of the signed bytes (%v)", m["payload"], err)
	}
	if id := m["key_id"].(string); len(id) != 16 {
		t.Errorf("key id %q is not 16 hex digits", id)
	}
}
