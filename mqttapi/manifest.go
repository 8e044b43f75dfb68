package mqttapi

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Manifest kinds and request kinds ("kind" in the signed payload). A payload
// of one kind never decodes as another, so a signature over a request can
// never be presented as an update.
const (
	KindUpdate   = "update"
	KindRollback = "rollback"
	KindCancel   = "cancel"
)

// Image transfer methods.
const (
	TransferRegistry = "registry" // ImagePull by digest (the default)
	TransferMQTT     = "mqtt"     // chunks over MQTT, then ImageLoad
)

// Manifest is the signed desired state: "run this controller version".
// It is published, inside an Envelope, retained on a drone's or a fleet's
// desired topic.
type Manifest struct {
	V    int    `json:"v"`
	Kind string `json:"kind"` // KindUpdate
	// Exactly one of Drone and Fleet names the target.
	Drone string `json:"drone,omitempty"`
	Fleet string `json:"fleet,omitempty"`
	// Serial only grows; a drone applies a manifest whose serial is greater
	// than the last one it applied. See NextSerial.
	Serial  uint64 `json:"serial"`
	Version string `json:"version"` // controller version, e.g. "2.0.0"
	Image   Image  `json:"image"`
	// Arch lists the platforms the image provides, e.g. "linux/arm64",
	// "linux/arm/v7". Empty means "not stated"; the agent still checks the
	// image itself.
	Arch []string `json:"arch,omitempty"`
	// Handoff states what the image's labels must say, if anything.
	Handoff   *HandoffCompat `json:"handoff,omitempty"`
	IssuedAt  time.Time      `json:"issued_at"`
	ExpiresAt time.Time      `json:"expires_at"`
	Options   Options        `json:"options,omitzero"`
}

// Image says which image to run and how to get it.
type Image struct {
	// Ref is pinned by digest: "repo@sha256:<64 hex>". For registry
	// transfer the digest is the registry manifest (or index) digest; for
	// MQTT transfer it is the image id (config digest) the engine reports
	// after loading the archive.
	Ref      string   `json:"ref"`
	Transfer string   `json:"transfer,omitempty"` // "" or "registry", or "mqtt"
	Archive  *Archive `json:"archive,omitempty"`  // required for "mqtt"
}

// Archive describes the image tarball sent over MQTT. Its digest is signed
// with the manifest: it is what makes the unsigned chunks trustworthy.
type Archive struct {
	Digest string `json:"digest"`           // "sha256:<64 hex>" of the whole tarball
	Size   int64  `json:"size"`             // bytes
	Format string `json:"format,omitempty"` // "docker-archive" (default) or "oci-archive"
}

// TransferID is the id of the MQTT transfer of this archive: the first 16
// hex digits of its digest, so that a restarted ground station resumes the
// same transfer.
func (a Archive) TransferID() string {
	h := strings.TrimPrefix(a.Digest, "sha256:")
	if len(h) < 16 {
		return h
	}
	return h[:16]
}

// HandoffCompat states what the image's handoff labels must say. Zero
// fields are not checked.
type HandoffCompat struct {
	Protocol    int `json:"protocol,omitempty"`     // handoff protocol version
	StateSchema int `json:"state_schema,omitempty"` // state schema version of v2
}

// Options tune how the agent applies the update. Zero values mean the
// agent's configured defaults.
type Options struct {
	Probation       Duration `json:"probation,omitempty"`         // hot-standby window after the switch
	SwitchDeadline  Duration `json:"switch_deadline,omitempty"`   // abort if not switched by then (from receipt)
	AllowGroundSwap *bool    `json:"allow_ground_swap,omitempty"` // nil means true: disarmed on the ground, a plain swap
	BatteryFloorPct float64  `json:"battery_floor_pct,omitempty"` // no switch below this charge
}

// GroundSwapAllowed reports whether a disarmed drone may do a plain swap.
func (o Options) GroundSwapAllowed() bool { return o.AllowGroundSwap == nil || *o.AllowGroundSwap }

// Duration is a time.Duration written in JSON as a Go duration string
// ("30s", "1m30s").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// NextSerial returns a serial greater than last: the current Unix time in
// milliseconds, or last+1 if that is not greater. Serials made this way grow
// across ground stations and targets without shared state.
func NextSerial(last uint64, now time.Time) uint64 {
	ms := now.UnixMilli()
	if ms > 0 && uint64(ms) > last {
		return uint64(ms)
	}
	return last + 1
}

// ParseImageRef splits "repo@sha256:<64 hex>" into repo and digest
// ("sha256:<hex>"). Anything else wraps ErrBadDigest.
func ParseImageRef(ref string) (repo, digest string, err error) {
	i := strings.LastIndex(ref, "@")
	if i <= 0 {
		return "", "", fmt.Errorf("mqttapi: image %q: no @sha256: digest: %w", ref, ErrBadDigest)
	}
	repo, digest = ref[:i], ref[i+1:]
	if len(repo) > 255 || strings.ContainsAny(repo, " \t\r\n@") || !printable(repo) {
		return "", "", fmt.Errorf("mqttapi: image %q: bad repository: %w", ref, ErrBadDigest)
	}
	if err := ValidateDigest(digest); err != nil {
		return "", "", fmt.Errorf("mqttapi: image %q: %w", ref, err)
	}
	return repo, digest, nil
}

// ValidateDigest checks "sha256:" followed by 64 lowercase hex digits.
func ValidateDigest(d string) error {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return fmt.Errorf("digest %q is not sha256:<64 hex>: %w", d, ErrBadDigest)
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("digest %q is not sha256:<64 hex>: %w", d, ErrBadDigest)
		}
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}

func validText(what, s string, max int, required bool) error {
	if s == "" && required {
		return fmt.Errorf("mqttapi: %s missing: %w", what, ErrInvalid)
	}
	if len(s) > max || !printable(s) {
		return fmt.Errorf("mqttapi: %s %q: more than %d bytes or not printable: %w", what, s, max, ErrInvalid)
	}
	return nil
}

func validTarget(drone, fleet string) error {
	switch {
	case drone != "" && fleet != "":
		return fmt.Errorf("mqttapi: both drone %q and fleet %q: %w", drone, fleet, ErrInvalid)
	case drone != "":
		return ValidateID(drone)
	case fleet != "":
		return ValidateID(fleet)
	}
	return fmt.Errorf("mqttapi: neither drone nor fleet: %w", ErrInvalid)
}

func validTimes(issued, expires time.Time) error {
	if issued.IsZero() || expires.IsZero() {
		return fmt.Errorf("mqttapi: issued_at and expires_at are required: %w", ErrInvalid)
	}
	if !expires.After(issued) {
		return fmt.Errorf("mqttapi: expires_at %s not after issued_at %s: %w", expires.Format(time.RFC3339), issued.Format(time.RFC3339), ErrInvalid)
	}
	return nil
}

// Validate checks the manifest's own consistency (not its signature, target,
// serial history or validity window: see Verify).
func (m *Manifest) Validate() error {
	if m.V != Version {
		return fmt.Errorf("mqttapi: manifest v=%d: %w", m.V, ErrUnsupportedVersion)
	}
	if m.Kind != KindUpdate {
		return fmt.Errorf("mqttapi: manifest kind %q, want %q: %w", m.Kind, KindUpdate, ErrInvalid)
	}
	if err := validTarget(m.Drone, m.Fleet); err != nil {
		return err
	}
	if m.Serial == 0 {
		return fmt.Errorf("mqttapi: manifest serial 0: %w", ErrInvalid)
	}
	if err := validText("version", m.Version, 128, true); err != nil {
		return err
	}
	if _, _, err := ParseImageRef(m.Image.Ref); err != nil {
		return err
	}
	switch m.Image.Transfer {
	case "", TransferRegistry:
	case TransferMQTT:
		a := m.Image.Archive
		if a == nil {
			return fmt.Errorf("mqttapi: mqtt transfer without archive: %w", ErrInvalid)
		}
		if err := ValidateDigest(a.Digest); err != nil {
			return fmt.Errorf("mqttapi: archive: %w", err)
		}
		if a.Size <= 0 {
			return fmt.Errorf("mqttapi: archive size %d: %w", a.Size, ErrInvalid)
		}
		switch a.Format {
		case "", "docker-archive", "oci-archive":
		default:
			return fmt.Errorf("mqttapi: archive format %q: %w", a.Format, ErrInvalid)
		}
	default:
		return fmt.Errorf("mqttapi: transfer %q, want registry or mqtt: %w", m.Image.Transfer, ErrInvalid)
	}
	if len(m.Arch) > 16 {
		return fmt.Errorf("mqttapi: %d architectures: %w", len(m.Arch), ErrInvalid)
	}
	for _, a := range m.Arch {
		if err := validText("arch", a, 64, true); err != nil {
			return err
		}
	}
	if h := m.Handoff; h != nil && (h.Protocol < 0 || h.StateSchema < 0) {
		return fmt.Errorf("mqttapi: negative handoff version: %w", ErrInvalid)
	}
	if err := validTimes(m.IssuedAt, m.ExpiresAt); err != nil {
		return err
	}
	o := m.Options
	if o.Probation < 0 || o.SwitchDeadline < 0 || o.BatteryFloorPct < 0 || o.BatteryFloorPct > 100 {
		return fmt.Errorf("mqttapi: options out of range: %w", ErrInvalid)
	}
	return nil
}

// Marshal validates the manifest (setting V) and returns the JSON bytes to
// sign.
func (m *Manifest) Marshal() ([]byte, error) {
	m.V = Version
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("mqttapi: manifest: %w", err)
	}
	return b, nil
}

// DecodeManifest parses and validates signed payload bytes. It does not
// check a signature: use Verify on the envelope.
func DecodeManifest(payload []byte) (*Manifest, error) {
	var m Manifest
	if err := decode("manifest", payload, MaxSignedSize, &m, true); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Request asks one drone to roll back or to cancel an update. It is signed
// like a manifest and published, not retained, on the drone's requests
// topic. Requests have their own serial sequence, separate from manifests.
type Request struct {
	V      int    `json:"v"`
	Kind   string `json:"kind"` // KindRollback or KindCancel
	Drone  string `json:"drone"`
	Serial uint64 `json:"serial"`
	// UpdateSerial names the manifest the request is about; 0 means the
	// current or most recent update.
	UpdateSerial uint64    `json:"update_serial,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	IssuedAt     time.Time `json:"issued_at"`
	ExpiresAt    time.Time `json:"expires_at"`
}

// Validate checks the request's own consistency.
func (r *Request) Validate() error {
	if r.V != Version {
		return fmt.Errorf("mqttapi: request v=%d: %w", r.V, ErrUnsupportedVersion)
	}
	if r.Kind != KindRollback && r.Kind != KindCancel {
		return fmt.Errorf("mqttapi: request kind %q, want rollback or cancel: %w", r.Kind, ErrInvalid)
	}
	if err := ValidateID(r.Drone); err != nil {
		return fmt.Errorf("mqttapi: request drone: %w", err)
	}
	if r.Serial == 0 {
		return fmt.Errorf("mqttapi: request serial 0: %w", ErrInvalid)
	}
	if err := validText("reason", r.Reason, 512, false); err != nil {
		return err
	}
	return validTimes(r.IssuedAt, r.ExpiresAt)
}

// Marshal validates the request (setting V) and returns the bytes to sign.
func (r *Request) Marshal() ([]byte, error) {
	r.V = Version
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("mqttapi: request: %w", err)
	}
	return b, nil
}

// DecodeRequest parses and validates signed request bytes.
func DecodeRequest(payload []byte) (*Request, error) {
	var r Request
	if err := decode("request", payload, MaxSignedSize, &r, true); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}
