package mqttapi

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them with a message saying what was wrong; callers branch with errors.Is
// and report Reason(err) in their rejection event.
var (
	ErrOversized          = errors.New("message too large")
	ErrUnparsable         = errors.New("unparsable message")
	ErrUnsigned           = errors.New("unsigned message")
	ErrUnsupportedAlg     = errors.New("unsupported signature algorithm")
	ErrUnknownKey         = errors.New("unknown signing key")
	ErrBadSignature       = errors.New("bad signature")
	ErrUnsupportedVersion = errors.New("unsupported message version")
	ErrExpired            = errors.New("expired")
	ErrNotYetValid        = errors.New("not yet valid")
	ErrWrongTarget        = errors.New("meant for another drone or fleet")
	ErrReplayed           = errors.New("replayed or older serial")
	ErrBadDigest          = errors.New("image not pinned by a valid sha256 digest")
	ErrWrongArch          = errors.New("architecture not supported by the update")
	ErrInvalid            = errors.New("invalid message")
	ErrInvalidID          = errors.New("invalid id")
	ErrInvalidTopic       = errors.New("invalid topic")
	ErrChunkCorrupt       = errors.New("chunk corrupt")
	// ErrCleared is returned for an empty message: a retained topic being
	// cleared. It means "no desired state" and is a no-op, not a rejection.
	ErrCleared = errors.New("empty message: retained state cleared")

	// ErrAlreadyApplied is returned for a manifest or request whose serial
	// equals the last one applied: the retained desired state seen again
	// after a reconnect. It wraps ErrReplayed, but a caller should treat it
	// as a silent no-op rather than a rejection.
	ErrAlreadyApplied = fmt.Errorf("serial already applied, a no-op (%w)", ErrReplayed)
)

// reasons maps each sentinel to the short code used in events ("reason").
// ErrAlreadyApplied comes first: it also matches ErrReplayed.
var reasons = []struct {
	err  error
	code string
}{
	{ErrAlreadyApplied, "already_applied"},
	{ErrCleared, "cleared"},
	{ErrOversized, "oversized"},
	{ErrUnparsable, "unparsable"},
	{ErrUnsigned, "unsigned"},
	{ErrUnsupportedAlg, "unsupported_alg"},
	{ErrUnknownKey, "unknown_key"},
	{ErrBadSignature, "bad_signature"},
	{ErrUnsupportedVersion, "unsupported_version"},
	{ErrExpired, "expired"},
	{ErrNotYetValid, "not_yet_valid"},
	{ErrWrongTarget, "wrong_target"},
	{ErrReplayed, "replayed"},
	{ErrBadDigest, "bad_digest"},
	{ErrWrongArch, "wrong_arch"},
	{ErrInvalidID, "invalid"},
	{ErrInvalid, "invalid"},
	{ErrInvalidTopic, "invalid_topic"},
	{ErrChunkCorrupt, "chunk_corrupt"},
}

// Reason returns the short, stable code of err for the "reason" field of a
// rejection event: "oversized", "unparsable", "unsigned", "unknown_key",
// "bad_signature", "unsupported_version", "expired", "not_yet_valid",
// "wrong_target", "replayed", "already_applied", "bad_digest", ... and
// "error" for anything this package did not produce. nil gives "".
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.code
		}
	}
	return "error"
}
