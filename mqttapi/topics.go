package mqttapi

import (
	"fmt"
	"strings"
)

// DefaultRoot is the first topic level of every inflight topic unless
// configured otherwise.
const DefaultRoot = "inflight"

// MaxIDLen bounds drone ids, fleet names and transfer ids.
const MaxIDLen = 64

// Kind names the kind of an inflight topic.
type Kind string

// Topic kinds. The string is the last topic level.
const (
	KindDesired   Kind = "desired"   // retained signed manifest, drone or fleet
	KindReported  Kind = "reported"  // retained state reported by the drone
	KindEvents    Kind = "events"    // phase changes and results
	KindTelemetry Kind = "telemetry" // flight telemetry at a few Hz
	KindRequests  Kind = "requests"  // signed rollback and cancel requests
	KindStatus    Kind = "status"    // retained online/offline; the last will
	KindChunk     Kind = "chunk"     // ground→drone image chunk
	KindHave      Kind = "have"      // drone→ground transfer progress, retained
)

// ValidateID reports whether s may be used as a drone id, fleet name or
// transfer id: 1 to MaxIDLen characters of [A-Za-z0-9._-], starting with a
// letter or digit. That excludes the MQTT wildcards, the level separator,
// '$' and anything a shell or file name would trip on.
func ValidateID(s string) error {
	if s == "" {
		return fmt.Errorf("mqttapi: empty id: %w", ErrInvalidID)
	}
	if len(s) > MaxIDLen {
		return fmt.Errorf("mqttapi: id of %d bytes, at most %d: %w", len(s), MaxIDLen, ErrInvalidID)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return fmt.Errorf("mqttapi: id %q: character %q at %d: %w", s, c, i, ErrInvalidID)
		}
	}
	return nil
}

// validateRoot checks a topic root: one or more levels, each a valid id.
func validateRoot(root string) error {
	for _, lvl := range strings.Split(root, "/") {
		if err := ValidateID(lvl); err != nil {
			return fmt.Errorf("mqttapi: topic root %q: %w", root, ErrInvalidID)
		}
	}
	return nil
}

// Topics builds and parses topics under one root. The zero value uses
// DefaultRoot.
type Topics struct {
	// Root is the first level(s), e.g. "inflight" or "site1/inflight".
	Root string
}

// NewTopics returns Topics for root ("" means DefaultRoot) after checking it.
func NewTopics(root string) (Topics, error) {
	if root == "" {
		root = DefaultRoot
	}
	if err := validateRoot(root); err != nil {
		return Topics{}, err
	}
	return Topics{Root: root}, nil
}

func (t Topics) root() string {
	if t.Root == "" {
		return DefaultRoot
	}
	return t.Root
}

// DroneTopics are the topics of one drone, built once after its id was
// checked.
type DroneTopics struct {
	Root      string
	ID        string
	Desired   string
	Reported  string
	Events    string
	Telemetry string
	Requests  string
	Status    string
}

// Drone returns the topics of drone id, or an error wrapping ErrInvalidID.
func (t Topics) Drone(id string) (DroneTopics, error) {
	if err := validateRoot(t.root()); err != nil {
		return DroneTopics{}, err
	}
	if err := ValidateID(id); err != nil {
		return DroneTopics{}, fmt.Errorf("mqttapi: drone id: %w", err)
	}
	base := t.root() + "/drones/" + id + "/"
	return DroneTopics{
		Root:      t.root(),
		ID:        id,
		Desired:   base + string(KindDesired),
		Reported:  base + string(KindReported),
		Events:    base + string(KindEvents),
		Telemetry: base + string(KindTelemetry),
		Requests:  base + string(KindRequests),
		Status:    base + string(KindStatus),
	}, nil
}

// TransferChunk is the topic the ground publishes the chunks of transfer tid
// to.
func (d DroneTopics) TransferChunk(tid string) (string, error) {
	return d.transfer(tid, KindChunk)
}

// TransferHave is the retained topic on which the drone reports which chunks
// of transfer tid it holds.
func (d DroneTopics) TransferHave(tid string) (string, error) {
	return d.transfer(tid, KindHave)
}

// TransferFilter subscribes to every message of every transfer of the drone.
func (d DroneTopics) TransferFilter() string {
	return d.Root + "/drones/" + d.ID + "/transfer/+/+"
}

func (d DroneTopics) transfer(tid string, k Kind) (string, error) {
	if err := ValidateID(tid); err != nil {
		return "", fmt.Errorf("mqttapi: transfer id: %w", err)
	}
	return d.Root + "/drones/" + d.ID + "/transfer/" + tid + "/" + string(k), nil
}

// FleetDesired is the retained desired-state topic of fleet name.
func (t Topics) FleetDesired(name string) (string, error) {
	if err := validateRoot(t.root()); err != nil {
		return "", err
	}
	if err := ValidateID(name); err != nil {
		return "", fmt.Errorf("mqttapi: fleet name: %w", err)
	}
	return t.root() + "/fleets/" + name + "/" + string(KindDesired), nil
}

// AllDrones is the subscription filter for topic kind k of every drone, e.g.
// "inflight/drones/+/reported". k must be one of the per-drone kinds.
func (t Topics) AllDrones(k Kind) string {
	return t.root() + "/drones/+/" + string(k)
}

// Topic is a parsed inflight topic.
type Topic struct {
	Kind     Kind
	Drone    string // set for drone topics
	Fleet    string // set for fleet desired
	Transfer string // set for chunk and have
}

// Parse splits an inflight topic under t's root. It rejects topics outside
// the root, unknown kinds, wildcards and invalid ids with an error wrapping
// ErrInvalidTopic.
func (t Topics) Parse(topic string) (Topic, error) {
	bad := func(why string) (Topic, error) {
		return Topic{}, fmt.Errorf("mqttapi: topic %q: %s: %w", topic, why, ErrInvalidTopic)
	}
	prefix := t.root() + "/"
	if !strings.HasPrefix(topic, prefix) {
		return bad("not under root " + t.root())
	}
	lv := strings.Split(topic[len(prefix):], "/")
	if len(lv) < 3 {
		return bad("too few levels")
	}
	if ValidateID(lv[1]) != nil {
		return bad("invalid id")
	}
	switch lv[0] {
	case "fleets":
		if len(lv) == 3 && Kind(lv[2]) == KindDesired {
			return Topic{Kind: KindDesired, Fleet: lv[1]}, nil
		}
		return bad("unknown fleet topic")
	case "drones":
	default:
		return bad("unknown level " + lv[0])
	}
	if len(lv) == 3 {
		switch k := Kind(lv[2]); k {
		case KindDesired, KindReported, KindEvents, KindTelemetry, KindRequests, KindStatus:
			return Topic{Kind: k, Drone: lv[1]}, nil
		}
		return bad("unknown kind")
	}
	if len(lv) == 5 && lv[2] == "transfer" {
		if ValidateID(lv[3]) != nil {
			return bad("invalid transfer id")
		}
		switch k := Kind(lv[4]); k {
		case KindChunk, KindHave:
			return Topic{Kind: k, Drone: lv[1], Transfer: lv[3]}, nil
		}
	}
	return bad("unknown drone topic")
}
