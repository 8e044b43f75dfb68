// Package journal is the agent's memory across crashes: one JSON file in the
// state directory, rewritten atomically (temporary file, fsync, rename,
// fsync of the directory) at every step of an update, so that a restarted
// agent knows what it was doing, which controllers were involved and which
// serial it last applied. docs/agent.md documents the format.
//
// It must never leave a partly written journal where the previous one was:
// a crash at any instant leaves either the old file or the new one.
package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
)

// Version is the journal format version ("v").
const Version = 1

// FileName is the journal's name in the state directory.
const FileName = "journal.json"

// MaxHistory is how many results the journal keeps, newest last.
const MaxHistory = 20

// MaxSize bounds the file read back.
const MaxSize = 1 << 20

// ErrCorrupt is returned by Load for a journal that does not parse or has
// another version; atomic writes make this disk damage or a hand edit.
var ErrCorrupt = errors.New("journal: corrupt or unsupported")

// Image names a controller image.
type Image struct {
	Ref     string `json:"ref"`               // repo@sha256:… as in the manifest, or the configured ref
	ID      string `json:"id,omitempty"`      // local image ID (config digest)
	Version string `json:"version,omitempty"` // controller version
}

// Instance is one controller the agent started (or adopted).
type Instance struct {
	Name   string    `json:"name"`
	ID     string    `json:"id,omitempty"` // runtime's controller ID
	Image  Image     `json:"image"`
	Serial uint64    `json:"serial,omitempty"` // manifest that installed it; 0: first start
	Since  time.Time `json:"since,omitzero"`
}

// Update is the update in progress.
type Update struct {
	Serial   uint64          `json:"serial"`
	Kind     string          `json:"kind"`               // "update", or "rollback" (to Previous)
	Envelope json.RawMessage `json:"envelope,omitempty"` // the signed manifest as received
	Version  string          `json:"version"`
	Image    Image           `json:"image"`
	Phase    mqttapi.Phase   `json:"phase"`
	Started  time.Time       `json:"started"`
	Changed  time.Time       `json:"changed"`
	Attempt  int             `json:"attempt"`        // 1 for the first try; restarts before the switch retry
	Path     string          `json:"path,omitempty"` // "handoff" or "ground_swap", once decided
	V1       *Instance       `json:"v1,omitempty"`   // the controller flying when the update began
	V2       *Instance       `json:"v2,omitempty"`   // the new one, once started
	// HandoffStarted: handoff_start was accepted by v1.
	HandoffStarted bool `json:"handoff_started,omitempty"`
	// Switched: the authority moved (or may have moved) to v2; from here a
	// failure rolls back to v1 instead of aborting.
	Switched bool             `json:"switched,omitempty"`
	Figures  *mqttapi.Figures `json:"figures,omitempty"`
}

// Journal is the whole file.
type Journal struct {
	V     int    `json:"v"`
	Drone string `json:"drone"`
	// Active is the controller flying (or ready to fly) when no update
	// runs; during an update it is still v1.
	Active *Instance `json:"active,omitempty"`
	// Previous is the image Active replaced, kept for a rollback.
	Previous          *Image           `json:"previous,omitempty"`
	LastSerial        uint64           `json:"last_serial"`
	LastRequestSerial uint64           `json:"last_request_serial"`
	Update            *Update          `json:"update,omitempty"`
	History           []mqttapi.Result `json:"history,omitempty"`
	Writes            uint64           `json:"writes"`
	UpdatedAt         time.Time        `json:"updated_at"`
}

// AddResult appends r to the history, dropping the oldest beyond MaxHistory.
func (j *Journal) AddResult(r mqttapi.Result) {
	j.History = append(j.History, r)
	if n := len(j.History) - MaxHistory; n > 0 {
		j.History = append([]mqttapi.Result(nil), j.History[n:]...)
	}
}

// Clone returns a deep copy.
func (j *Journal) Clone() *Journal {
	b, err := json.Marshal(j)
	if err != nil {
		panic(err)
	}
	var c Journal
	if err := json.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return &c
}

// Store reads and writes the journal of one state directory.
type Store struct {
	dir string
	// hook, when set by tests, runs at each step of Save; an error stops
	// Save there, as a crash would.
	hook func(step string) error
}

// NewStore returns the store of dir, creating dir (0700).
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: state dir: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Path is the journal file.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Load reads the journal. A missing file gives (nil, nil): a first start.
// Leftover temporary files of an interrupted Save are removed.
func (s *Store) Load() (*Journal, error) {
	s.removeTemps()
	f, err := os.Open(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxSize+1)); err != nil {
		return nil, fmt.Errorf("journal: read: %w", err)
	}
	if buf.Len() > MaxSize {
		return nil, fmt.Errorf("journal: %s larger than %d bytes: %w", s.Path(), MaxSize, ErrCorrupt)
	}
	var j Journal
	if err := json.Unmarshal(buf.Bytes(), &j); err != nil {
		return nil, fmt.Errorf("journal: %s: %v: %w", s.Path(), err, ErrCorrupt)
	}
	if j.V != Version {
		return nil, fmt.Errorf("journal: %s: version %d, this agent reads %d: %w", s.Path(), j.V, Version, ErrCorrupt)
	}
	return &j, nil
}

// Save writes j atomically and durably, setting V and counting the write.
func (s *Store) Save(j *Journal, now time.Time) error {
	j.V = Version
	j.Writes++
	j.UpdatedAt = now.UTC()
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(s.dir, "."+FileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("journal: save: %w", err)
	}
	half := len(b) / 2
	if _, err := tmp.Write(b[:half]); err != nil {
		return fail(err)
	}
	if err := s.step("written-half"); err != nil {
		tmp.Close() // a crash leaves the torn temporary file behind
		return fmt.Errorf("journal: save: %w", err)
	}
	if _, err := tmp.Write(b[half:]); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := s.step("synced"); err != nil {
		return fmt.Errorf("journal: save: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("journal: save: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("journal: save: sync dir: %w", err)
	}
	return nil
}

// MoveAside renames a corrupt journal to journal.json.corrupt-<unix> so a
// fresh one can be started, and returns the new name.
func (s *Store) MoveAside(now time.Time) (string, error) {
	to := fmt.Sprintf("%s.corrupt-%d", s.Path(), now.Unix())
	if err := os.Rename(s.Path(), to); err != nil {
		return "", fmt.Errorf("journal: %w", err)
	}
	return to, syncDir(s.dir)
}

func (s *Store) step(name string) error {
	if s.hook == nil {
		return nil
	}
	return s.hook(name)
}

func (s *Store) removeTemps() {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+FileName+".tmp-") {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
