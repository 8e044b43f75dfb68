package journal

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func sample(serial uint64) *Journal {
	return &Journal{
		Drone:      "d1",
		Active:     &Instance{Name: "ctl-s0", ID: "abc", Image: Image{Ref: "r@sha256:00", ID: "sha256:11", Version: "1.0.0"}},
		LastSerial: serial,
		Update: &Update{Serial: serial + 1, Kind: "update", Version: "2.0.0", Phase: mqttapi.PhaseStarting, Attempt: 1,
			V1: &Instance{Name: "ctl-s0"}, V2: &Instance{Name: "ctl-s2"}},
	}
}

func TestFirstStartHasNoJournal(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	j, err := s.Load()
	if j != nil || err != nil {
		t.Fatalf("Load of an empty dir = %v, %v; want nil, nil", j, err)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	s, _ := NewStore(t.TempDir())
	j := sample(7)
	j.AddResult(mqttapi.Result{Serial: 7, Result: mqttapi.ResultCommitted, At: t0})
	if err := s.Save(j, t0); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.V != Version || got.LastSerial != 7 || got.Update.V2.Name != "ctl-s2" || got.Writes != 1 || !got.UpdatedAt.Equal(t0) || len(got.History) != 1 {
		t.Errorf("loaded %+v", got)
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("journal mode %v, want 0600", fi.Mode().Perm())
	}
}

// A crash at any step of Save leaves the previous journal intact, and the
// next Load cleans up the torn temporary file.
func TestTornWriteNeverCorrupts(t *testing.T) {
	for _, step := range []string{"written-half", "synced"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := NewStore(dir)
			if err := s.Save(sample(1), t0); err != nil {
				t.Fatal(err)
			}
			crash := errors.New("power cut")
			s.hook = func(at string) error {
				if at == step {
					return crash
				}
				return nil
			}
			if err := s.Save(sample(2), t0.Add(time.Second)); !errors.Is(err, crash) {
				t.Fatalf("Save = %v, want the crash", err)
			}
			if step == "written-half" {
				ents, _ := os.ReadDir(dir)
				torn := 0
				for _, e := range ents {
					if strings.Contains(e.Name(), ".tmp-") {
						torn++
					}
				}
				if torn != 1 {
					t.Fatalf("%d torn temporary files left, want 1 (the crash leaves it)", torn)
				}
			}
			s2, _ := NewStore(dir)
			got, err := s2.Load()
			if err != nil {
				t.Fatal(err)
			}
			if got.LastSerial != 1 {
				t.Errorf("after a torn write LastSerial = %d, want the previous 1", got.LastSerial)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != FileName {
					t.Errorf("left over: %s", e.Name())
				}
			}
			if err := s2.Save(sample(3), t0); err != nil {
				t.Fatal(err)
			}
			if got, _ := s2.Load(); got.LastSerial != 3 {
				t.Errorf("after recovery LastSerial = %d, want 3", got.LastSerial)
			}
		})
	}
}

func TestCorruptJournal(t *testing.T) {
	for name, content := range map[string]string{
		"truncated": `{"v":1,"drone":"d1","last_ser`,
		"version 2": `{"v":2,"drone":"d1"}`,
		"empty":     ``,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := NewStore(dir)
			if err := os.WriteFile(s.Path(), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Load(); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load = %v, want ErrCorrupt", err)
			}
			to, err := s.MoveAside(t0)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Dir(to) != dir {
				t.Errorf("moved to %s", to)
			}
			if j, err := s.Load(); j != nil || err != nil {
				t.Errorf("after MoveAside: %v, %v; want a fresh start", j, err)
			}
		})
	}
}

func TestHistoryBounded(t *testing.T) {
	j := &Journal{}
	for i := 1; i <= MaxHistory+5; i++ {
		j.AddResult(mqttapi.Result{Serial: uint64(i)})
	}
	if len(j.History) != MaxHistory || j.History[0].Serial != 6 || j.History[MaxHistory-1].Serial != MaxHistory+5 {
		t.Errorf("history %d entries from %d", len(j.History), j.History[0].Serial)
	}
}

func TestCloneIsDeep(t *testing.T) {
	j := sample(1)
	c := j.Clone()
	c.Update.V2.Name = "other"
	if j.Update.V2.Name != "ctl-s2" {
		t.Error("Clone shares the update")
	}
}
