package mqttapi

import (
	"fmt"
	"slices"
	"time"
)

// DefaultSkew is the clock-skew allowance when Expect.Skew is zero.
const DefaultSkew = time.Minute

// Expect is what the verifying drone knows about itself.
type Expect struct {
	Drone  string   // this drone's id; required
	Fleets []string // fleets this drone belongs to
	// LastSerial is the serial last applied: of manifests for Verify, of
	// requests for VerifyRequest. A greater serial is new; the same serial
	// is ErrAlreadyApplied (a no-op); a smaller one is ErrReplayed.
	LastSerial uint64
	// Arch is this drone's platform, e.g. "linux/arm64". When set, a
	// manifest that lists architectures must list it.
	Arch string
	// Skew is the clock-skew allowance on issued_at and expires_at;
	// zero means DefaultSkew.
	Skew time.Duration
}

func (e Expect) skew() time.Duration {
	if e.Skew <= 0 {
		return DefaultSkew
	}
	return e.Skew
}

// Verify checks a raw envelope holding a manifest and returns the manifest
// when it may be applied. The checks run in this order, each failure
// wrapping its sentinel: size (ErrOversized), JSON (ErrUnparsable),
// envelope version (ErrUnsupportedVersion), signature present (ErrUnsigned),
// algorithm (ErrUnsupportedAlg), key (ErrUnknownKey), signature
// (ErrBadSignature), then the signed payload: JSON, version, consistency
// (ErrInvalid, ErrBadDigest), target (ErrWrongTarget), serial
// (ErrAlreadyApplied, ErrReplayed), validity window (ErrNotYetValid,
// ErrExpired, with exp.Skew allowed), architecture (ErrWrongArch).
//
// An empty message (a cleared retained desired topic) gives ErrCleared,
// which, like ErrAlreadyApplied, is a no-op and not a rejection.
//
// The serial comes before the validity window so that the retained desired
// state seen again after a reconnect is a silent no-op even once expired.
func Verify(raw []byte, kr *Keyring, now time.Time, exp Expect) (*Manifest, error) {
	payload, keyID, err := kr.Open(raw)
	if err != nil {
		return nil, err
	}
	m, err := DecodeManifest(payload)
	if err != nil {
		return nil, fmt.Errorf("%w (signed by %s)", err, keyID)
	}
	switch {
	case m.Drone != "" && m.Drone != exp.Drone:
		return nil, fmt.Errorf("mqttapi: manifest %d is for drone %q, this is %q: %w", m.Serial, m.Drone, exp.Drone, ErrWrongTarget)
	case m.Fleet != "" && !slices.Contains(exp.Fleets, m.Fleet):
		return nil, fmt.Errorf("mqttapi: manifest %d is for fleet %q, drone %q is in %q: %w", m.Serial, m.Fleet, exp.Drone, exp.Fleets, ErrWrongTarget)
	}
	if err := checkSerial("manifest", m.Serial, exp.LastSerial); err != nil {
		return nil, err
	}
	if err := checkWindow("manifest", m.Serial, m.IssuedAt, m.ExpiresAt, now, exp.skew()); err != nil {
		return nil, err
	}
	if exp.Arch != "" && len(m.Arch) > 0 && !slices.Contains(m.Arch, exp.Arch) {
		return nil, fmt.Errorf("mqttapi: manifest %d offers %q, drone is %s: %w", m.Serial, m.Arch, exp.Arch, ErrWrongArch)
	}
	return m, nil
}

// VerifyRequest checks a raw envelope holding a rollback or cancel request,
// with the same checks and order as Verify; exp.LastSerial is the last
// request serial applied. Fleets and Arch are not used.
func VerifyRequest(raw []byte, kr *Keyring, now time.Time, exp Expect) (*Request, error) {
	payload, keyID, err := kr.Open(raw)
	if err != nil {
		return nil, err
	}
	r, err := DecodeRequest(payload)
	if err != nil {
		return nil, fmt.Errorf("%w (signed by %s)", err, keyID)
	}
	if r.Drone != exp.Drone {
		return nil, fmt.Errorf("mqttapi: %s request %d is for drone %q, this is %q: %w", r.Kind, r.Serial, r.Drone, exp.Drone, ErrWrongTarget)
	}
	if err := checkSerial(r.Kind+" request", r.Serial, exp.LastSerial); err != nil {
		return nil, err
	}
	if err := checkWindow(r.Kind+" request", r.Serial, r.IssuedAt, r.ExpiresAt, now, exp.skew()); err != nil {
		return nil, err
	}
	return r, nil
}

func checkSerial(what string, serial, last uint64) error {
	switch {
	case serial == last:
		return fmt.Errorf("mqttapi: %s serial %d: %w", what, serial, ErrAlreadyApplied)
	case serial < last:
		return fmt.Errorf("mqttapi: %s serial %d, last applied %d: %w", what, serial, last, ErrReplayed)
	}
	return nil
}

func checkWindow(what string, serial uint64, issued, expires, now time.Time, skew time.Duration) error {
	if now.Add(skew).Before(issued) {
		return fmt.Errorf("mqttapi: %s %d issued at %s, now is %s: %w", what, serial, issued.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrNotYetValid)
	}
	if now.Add(-skew).After(expires) {
		return fmt.Errorf("mqttapi: %s %d expired at %s, now is %s: %w", what, serial, expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrExpired)
	}
	return nil
}
