package mqttapi

import (
	"bytes"
	"os"
	"regexp"
	"testing"
	"time"
)

// TestDocExamples keeps docs/mqtt.md true: every block marked
// <!-- example: NAME --> is decoded by the real decoder, and the signed ones
// are verified with the documented test key.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../docs/mqtt.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- example: ([a-z-]+) -->\n```[a-z]*\n(.*?)\n```")
	blocks := re.FindAllSubmatch(doc, -1)
	var keyring *Keyring
	for _, b := range blocks {
		if string(b[1]) == "pubkey" {
			keys, err := ParsePublicKeys(b[2])
			if err != nil {
				t.Fatalf("documented public key: %v", err)
			}
			keyring = NewKeyring(keys...)
		}
	}
	if keyring == nil {
		t.Fatal("docs/mqtt.md has no pubkey example")
	}
	now := time.Date(2026, 5, 1, 12, 6, 0, 0, time.UTC)
	seen := map[string]int{}
	for _, b := range blocks {
		name, body := string(b[1]), b[2]
		seen[name]++
		var err error
		switch name {
		case "pubkey":
		case "envelope":
			_, err = Verify(body, keyring, now, Expect{Drone: "drone-1", Fleets: []string{"alpha"}, Arch: "linux/arm64"})
		case "request-envelope":
			_, err = VerifyRequest(body, keyring, now, Expect{Drone: "drone-1"})
		case "manifest":
			_, err = DecodeManifest(body)
		case "request":
			_, err = DecodeRequest(body)
		case "reported":
			_, err = DecodeReported(body)
		case "event":
			_, err = DecodeEvent(body)
		case "telemetry":
			_, err = DecodeTelemetry(body)
		case "status":
			_, err = DecodeStatus(body)
		case "have":
			_, err = DecodeHave(body)
		case "chunk-head":
			// The documented head with data of the stated length: only the
			// per-chunk sha256 cannot match made-up bytes.
			raw := append(append(bytes.Clone(body), '\n'), make([]byte, 65536)...)
			_, err = DecodeChunk(raw)
			if Reason(err) == "chunk_corrupt" {
				err = nil
			}
		default:
			t.Errorf("unknown example kind %q", name)
		}
		if err != nil {
			t.Errorf("docs/mqtt.md example %q: %v\n%s", name, err, body)
		}
	}
	for _, want := range []string{"envelope", "request-envelope", "manifest", "request", "reported", "event", "telemetry", "status", "have", "chunk-head"} {
		if seen[want] == 0 {
			t.Errorf("docs/mqtt.md has no %q example", want)
		}
	}
}
