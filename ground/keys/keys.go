package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/inflight-ota/inflight/mqttapi"
)

// Default file names inside a key directory.
const (
	PrivateName = "ground.key"
	PublicName  = "ground.pub"
)

// Sentinel errors.
var (
	ErrExists   = errors.New("key file exists")
	ErrInsecure = errors.New("private key file readable by group or others")
	ErrFormat   = errors.New("not an ed25519 key in the expected PEM format")
)

// maxKeyFile bounds what is read from a key file.
const maxKeyFile = 64 << 10

// Generate makes a new ed25519 key pair from r (nil means crypto/rand).
func Generate(r io.Reader) (ed25519.PrivateKey, error) {
	if r == nil {
		r = rand.Reader
	}
	_, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return nil, fmt.Errorf("keys: generate: %w", err)
	}
	return priv, nil
}

// EncodePrivateKey returns priv as a PEM "PRIVATE KEY" block (PKCS#8).
func EncodePrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodePublicKey returns pub as a PEM "PUBLIC KEY" block (PKIX).
func EncodePublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKey reads one PEM "PRIVATE KEY" block holding an ed25519 key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("keys: no PEM PRIVATE KEY block: %w", ErrFormat)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("keys: %v: %w", err, ErrFormat)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("keys: private key of type %T: %w", k, ErrFormat)
	}
	return priv, nil
}

// ParsePublicKey reads exactly one PEM "PUBLIC KEY" block holding an
// ed25519 key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	ks, err := mqttapi.ParsePublicKeys(data)
	if err != nil {
		return nil, fmt.Errorf("keys: %v: %w", err, ErrFormat)
	}
	if len(ks) != 1 {
		return nil, fmt.Errorf("keys: %d public keys in one file, want 1: %w", len(ks), ErrFormat)
	}
	return ks[0], nil
}

// Keygen generates a key pair and writes it to privPath (mode 0600) and
// pubPath (mode 0644), creating their directories (mode 0700). Existing
// files are an error wrapping ErrExists unless overwrite is set. Each file
// is written to a temporary name and then moved into place, so a crash
// never leaves half a key. It returns the key id.
func Keygen(privPath, pubPath string, overwrite bool, r io.Reader) (keyID string, err error) {
	priv, err := Generate(r)
	if err != nil {
		return "", err
	}
	if err := WriteKeyPair(priv, privPath, pubPath, overwrite); err != nil {
		return "", err
	}
	return mqttapi.KeyID(priv.Public().(ed25519.PublicKey)), nil
}

// WriteKeyPair writes priv and its public key as Keygen does.
func WriteKeyPair(priv ed25519.PrivateKey, privPath, pubPath string, overwrite bool) error {
	if !overwrite {
		for _, p := range []string{privPath, pubPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("keys: %s: %w (pass overwrite to replace it)", p, ErrExists)
			}
		}
	}
	privPEM, err := EncodePrivateKey(priv)
	if err != nil {
		return err
	}
	pubPEM, err := EncodePublicKey(priv.Public().(ed25519.PublicKey))
	if err != nil {
		return err
	}
	if err := writeFile(privPath, privPEM, 0o600, overwrite); err != nil {
		return err
	}
	return writeFile(pubPath, pubPEM, 0o644, overwrite)
}

func writeFile(path string, data []byte, mode os.FileMode, overwrite bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful link or rename: a no-op or the spare name
	// CreateTemp makes the file 0600, so the private key is never readable
	// by others, even for an instant.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("keys: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("keys: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("keys: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if overwrite {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path) // fails if path appeared meanwhile
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("keys: %s: %w", path, ErrExists)
		}
	}
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	return nil
}

// LoadPrivateKey reads a private key file written by Keygen. It refuses a
// file that group or others may read (ErrInsecure).
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("keys: %s has mode %v, want 0600 (chmod 600 it): %w", path, fi.Mode().Perm(), ErrInsecure)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	priv, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", path, err)
	}
	return priv, nil
}

// LoadPublicKey reads a public key file written by Keygen.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", path, err)
	}
	return pub, nil
}

// Signer signs payloads with one private key.
type Signer struct {
	priv ed25519.PrivateKey
	id   string
}

// NewSigner returns a signer for priv.
func NewSigner(priv ed25519.PrivateKey) (*Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("keys: private key of %d bytes: %w", len(priv), ErrFormat)
	}
	return &Signer{priv: priv, id: mqttapi.KeyID(priv.Public().(ed25519.PublicKey))}, nil
}

// LoadSigner reads the private key at path and returns its signer.
func LoadSigner(path string) (*Signer, error) {
	priv, err := LoadPrivateKey(path)
	if err != nil {
		return nil, err
	}
	return NewSigner(priv)
}

// KeyID is the id of the signer's public key (mqttapi.KeyID).
func (s *Signer) KeyID() string { return s.id }

// Public is the signer's public key.
func (s *Signer) Public() ed25519.PublicKey { return s.priv.Public().(ed25519.PublicKey) }

// Sign signs payload, exactly as given, into an envelope.
func (s *Signer) Sign(payload []byte) (mqttapi.Envelope, error) {
	env, err := mqttapi.Sign(s.priv, payload)
	if err != nil {
		return mqttapi.Envelope{}, fmt.Errorf("keys: %w", err)
	}
	return env, nil
}

// SignManifest validates and encodes m, signs the bytes and returns the
// envelope ready to publish on a desired topic.
func (s *Signer) SignManifest(m *mqttapi.Manifest) ([]byte, error) {
	p, err := m.Marshal()
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return s.seal(p)
}

// SignRequest validates and encodes r, signs the bytes and returns the
// envelope ready to publish on a requests topic.
func (s *Signer) SignRequest(r *mqttapi.Request) ([]byte, error) {
	p, err := r.Marshal()
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return s.seal(p)
}

func (s *Signer) seal(p []byte) ([]byte, error) {
	env, err := s.Sign(p)
	if err != nil {
		return nil, err
	}
	raw, err := env.Marshal()
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return raw, nil
}
