package mqttapi

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Version is the value of "v" in every payload this package writes and the
// only one it accepts.
const Version = 1

// AlgEd25519 is the only signature algorithm.
const AlgEd25519 = "ed25519"

// MaxSignedSize bounds a raw envelope (manifest or request), checked before
// any parsing.
const MaxSignedSize = 64 << 10

// MaxStateSize bounds reported state, events, telemetry, status and have
// reports.
const MaxStateSize = 64 << 10

// Envelope carries a signed payload. Payload holds the exact bytes that were
// signed (a JSON Manifest or Request); Sig is the ed25519 signature over
// them. Both are base64 (standard, padded) in JSON.
type Envelope struct {
	V       int    `json:"v"`
	KeyID   string `json:"key_id"`
	Alg     string `json:"alg"`
	Payload []byte `json:"payload"`
	Sig     []byte `json:"sig"`
}

// KeyID derives the id of an ed25519 public key: the first 16 hex digits of
// the sha256 of its 32 raw bytes.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Sign signs payload, exactly as given, with priv and returns the envelope.
func Sign(priv ed25519.PrivateKey, payload []byte) (Envelope, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return Envelope{}, fmt.Errorf("mqttapi: sign: private key of %d bytes: %w", len(priv), ErrInvalid)
	}
	if len(payload) == 0 {
		return Envelope{}, fmt.Errorf("mqttapi: sign: empty payload: %w", ErrInvalid)
	}
	pub := priv.Public().(ed25519.PublicKey)
	return Envelope{
		V:       Version,
		KeyID:   KeyID(pub),
		Alg:     AlgEd25519,
		Payload: bytes.Clone(payload),
		Sig:     ed25519.Sign(priv, payload),
	}, nil
}

// Marshal encodes the envelope as JSON and checks it fits MaxSignedSize.
func (e Envelope) Marshal() ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("mqttapi: envelope: %w", err)
	}
	if len(b) > MaxSignedSize {
		return nil, fmt.Errorf("mqttapi: envelope of %d bytes, at most %d: %w", len(b), MaxSignedSize, ErrOversized)
	}
	return b, nil
}

// DecodeEnvelope parses a raw envelope without checking its signature. It
// rejects oversized input before parsing, unparsable JSON, and versions
// other than 1. Unknown fields are ignored so that a bare, unsigned payload
// is reported as ErrUnsigned by Open rather than as unparsable.
func DecodeEnvelope(raw []byte) (*Envelope, error) {
	var e Envelope
	if err := decode("envelope", raw, MaxSignedSize, &e, false); err != nil {
		return nil, err
	}
	return &e, nil
}

// Keyring holds the trusted ed25519 public keys by key id. Its methods are
// safe for concurrent reads once built.
type Keyring struct {
	keys map[string]ed25519.PublicKey
}

// NewKeyring returns a keyring trusting keys.
func NewKeyring(keys ...ed25519.PublicKey) *Keyring {
	k := &Keyring{keys: map[string]ed25519.PublicKey{}}
	for _, p := range keys {
		k.Add(p)
	}
	return k
}

// Add trusts pub and returns its key id.
func (k *Keyring) Add(pub ed25519.PublicKey) string {
	if k.keys == nil {
		k.keys = map[string]ed25519.PublicKey{}
	}
	id := KeyID(pub)
	k.keys[id] = bytes.Clone(pub)
	return id
}

// Lookup returns the key with id.
func (k *Keyring) Lookup(id string) (ed25519.PublicKey, bool) {
	if k == nil {
		return nil, false
	}
	p, ok := k.keys[id]
	return p, ok
}

// IDs lists the key ids, sorted.
func (k *Keyring) IDs() []string {
	if k == nil {
		return nil
	}
	ids := make([]string, 0, len(k.keys))
	for id := range k.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Len is the number of trusted keys.
func (k *Keyring) Len() int {
	if k == nil {
		return 0
	}
	return len(k.keys)
}

// Open checks the envelope's version, signature presence, algorithm, key id
// and signature, in that order, and returns the exact signed payload bytes
// and the key id that signed them.
//
// An empty raw message (a cleared retained topic) gives ErrCleared.
func (k *Keyring) Open(raw []byte) (payload []byte, keyID string, err error) {
	if len(raw) == 0 {
		return nil, "", fmt.Errorf("mqttapi: %w", ErrCleared)
	}
	e, err := DecodeEnvelope(raw)
	if err != nil {
		return nil, "", err
	}
	if len(e.Sig) == 0 {
		return nil, "", fmt.Errorf("mqttapi: envelope: no signature: %w", ErrUnsigned)
	}
	if e.KeyID == "" {
		return nil, "", fmt.Errorf("mqttapi: envelope: no key id: %w", ErrUnsigned)
	}
	if len(e.Payload) == 0 {
		return nil, "", fmt.Errorf("mqttapi: envelope: no payload: %w", ErrInvalid)
	}
	if e.Alg != AlgEd25519 {
		return nil, "", fmt.Errorf("mqttapi: envelope: alg %q, want %q: %w", e.Alg, AlgEd25519, ErrUnsupportedAlg)
	}
	pub, ok := k.Lookup(e.KeyID)
	if !ok {
		return nil, "", fmt.Errorf("mqttapi: envelope: key id %q not trusted: %w", e.KeyID, ErrUnknownKey)
	}
	if len(e.Sig) != ed25519.SignatureSize || !ed25519.Verify(pub, e.Payload, e.Sig) {
		return nil, "", fmt.Errorf("mqttapi: envelope: signature by key %s does not verify: %w", e.KeyID, ErrBadSignature)
	}
	return e.Payload, e.KeyID, nil
}

// ParsePublicKeys reads every "PUBLIC KEY" PEM block (PKIX) in data and
// returns the ed25519 keys. Other block types are an error, as is finding
// none.
func ParsePublicKeys(data []byte) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("mqttapi: PEM block %q, want PUBLIC KEY: %w", b.Type, ErrInvalid)
		}
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("mqttapi: public key: %v: %w", err, ErrInvalid)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("mqttapi: public key of type %T, want ed25519: %w", k, ErrInvalid)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("mqttapi: no PEM PUBLIC KEY block: %w", ErrInvalid)
	}
	return keys, nil
}

// LoadKeyring reads trusted public keys from path: a file holding one or
// more PEM "PUBLIC KEY" blocks, or a directory whose *.pub and *.pem files
// each hold some (other files are ignored; a directory without any key is
// an error).
func LoadKeyring(path string) (*Keyring, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("mqttapi: keyring: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		ents, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("mqttapi: keyring: %w", err)
		}
		files = files[:0]
		for _, e := range ents {
			n := e.Name()
			if e.Type().IsRegular() && (strings.HasSuffix(n, ".pub") || strings.HasSuffix(n, ".pem")) {
				files = append(files, filepath.Join(path, n))
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("mqttapi: keyring: no *.pub or *.pem file in %s: %w", path, ErrInvalid)
		}
	}
	k := NewKeyring()
	for _, f := range files {
		data, err := readBounded(f, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("mqttapi: keyring: %w", err)
		}
		keys, err := ParsePublicKeys(data)
		if err != nil {
			return nil, fmt.Errorf("mqttapi: keyring: %s: %w", f, err)
		}
		for _, p := range keys {
			k.Add(p)
		}
	}
	return k, nil
}

func readBounded(name string, max int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", name, max, ErrOversized)
	}
	return b, nil
}

// decode is the one JSON decoder behind every Decode function: it bounds the
// size, checks "v" first (so a future version is reported as such and not
// as unparsable), then decodes, strictly (unknown fields rejected) when
// strict is set, and refuses trailing data.
func decode(what string, raw []byte, max int, v any, strict bool) error {
	if len(raw) > max {
		return fmt.Errorf("mqttapi: %s of %d bytes, at most %d: %w", what, len(raw), max, ErrOversized)
	}
	var head struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return fmt.Errorf("mqttapi: %s: %v: %w", what, err, ErrUnparsable)
	}
	if head.V == nil {
		return fmt.Errorf("mqttapi: %s: no \"v\" field: %w", what, ErrUnsupportedVersion)
	}
	if *head.V != Version {
		return fmt.Errorf("mqttapi: %s: v=%d, want %d: %w", what, *head.V, Version, ErrUnsupportedVersion)
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	if strict {
		d.DisallowUnknownFields()
	}
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("mqttapi: %s: %v: %w", what, err, ErrUnparsable)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("mqttapi: %s: trailing data: %w", what, ErrUnparsable)
	}
	return nil
}
