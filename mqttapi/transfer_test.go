package mqttapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

func testArchive(n int) ([]byte, string) {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	sum := sha256.Sum256(b)
	return b, "sha256:" + hex.EncodeToString(sum[:])
}

// TestTransferResume cuts an archive into chunks, delivers part of them,
// "drops the link", resumes from the drone's have report, and checks the
// reassembled archive against the whole digest.
func TestTransferResume(t *testing.T) {
	archive, digest := testArchive(10*MinChunkSize + 123)
	p, err := NewPlan(digest, int64(len(archive)), MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if p.Count() != 11 || p.Transfer != digest[7:23] {
		t.Fatalf("plan %+v count %d", p, p.Count())
	}
	send := func(i int) []byte {
		off, n := p.Bounds(i)
		c, err := p.NewChunk(i, archive[off:off+int64(n)])
		if err != nil {
			t.Fatal(err)
		}
		raw, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}

	// Drone side.
	got := make([]byte, p.Size)
	held := NewChunkSet(p.Count())
	receive := func(raw []byte) {
		c, err := DecodeChunk(raw)
		if err != nil {
			t.Fatalf("DecodeChunk: %v", err)
		}
		copy(got[c.Offset:], c.Data)
		held.Add(c.Index)
	}
	for _, i := range []int{0, 1, 2, 5, 6} {
		receive(send(i))
	}
	have := Have{Drone: "drone-1", Transfer: p.Transfer, Digest: p.Digest, Size: p.Size, ChunkSize: p.ChunkSize,
		Count: p.Count(), Ranges: held.Ranges(), Bytes: int64(held.Held() * p.ChunkSize), At: t0}
	raw, err := have.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Ground side, after the cut: what does the drone still need?
	h, err := DecodeHave(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h.Ranges, [][2]int{{0, 3}, {5, 7}}) {
		t.Fatalf("ranges %v", h.Ranges)
	}
	set, err := h.Set()
	if err != nil {
		t.Fatal(err)
	}
	missing := set.Missing()
	if !reflect.DeepEqual(missing, []int{3, 4, 7, 8, 9, 10}) {
		t.Fatalf("missing %v", missing)
	}
	for _, i := range missing {
		receive(send(i))
	}
	if !held.Complete() {
		t.Fatalf("not complete: %v", held.Ranges())
	}
	sum := sha256.Sum256(got)
	if "sha256:"+hex.EncodeToString(sum[:]) != digest || !bytes.Equal(got, archive) {
		t.Fatal("reassembled archive differs")
	}
}

func TestChunkRejects(t *testing.T) {
	archive, digest := testArchive(3 * MinChunkSize)
	p, _ := NewPlan(digest, int64(len(archive)), MinChunkSize)
	c, err := p.NewChunk(1, archive[MinChunkSize:2*MinChunkSize])
	if err != nil {
		t.Fatal(err)
	}
	good, _ := c.Marshal()
	if _, err := DecodeChunk(good); err != nil {
		t.Fatal(err)
	}
	flip := bytes.Clone(good)
	flip[len(flip)-1] ^= 0xff
	short := good[:len(good)-1]
	badIndex := bytes.Replace(good, []byte(`"index":1`), []byte(`"index":2`), 1)
	badTransfer := bytes.Replace(good, []byte(`"transfer":"`+p.Transfer), []byte(`"transfer":"0000000000000000`), 1)
	v2 := bytes.Replace(good, []byte(`"v":1`), []byte(`"v":2`), 1)
	cases := map[string]struct {
		raw  []byte
		want error
	}{
		"flipped byte": {flip, ErrChunkCorrupt},
		"short":        {short, ErrChunkCorrupt},
		"moved index":  {badIndex, ErrInvalid},
		"transfer id":  {badTransfer, ErrInvalid},
		"version":      {v2, ErrUnsupportedVersion},
		"no header":    {[]byte("just bytes"), ErrUnparsable},
		"oversized":    {make([]byte, MaxChunkHeader+MaxChunkSize+2), ErrOversized},
		"json garbage": {[]byte("{\n"), ErrUnparsable},
	}
	for name, c := range cases {
		if _, err := DecodeChunk(c.raw); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	if _, err := p.NewChunk(3, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("chunk past the end: %v", err)
	}
	if _, err := p.NewChunk(0, archive[:10]); !errors.Is(err, ErrInvalid) {
		t.Errorf("chunk of the wrong length: %v", err)
	}
	if n := (Plan{Size: 10}).Count(); n != 0 {
		t.Errorf("plan without chunk size has %d chunks", n)
	}
	if _, err := NewPlan(digest, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty archive: %v", err)
	}
	if _, err := NewPlan(digest, 100, MaxChunkSize+1); !errors.Is(err, ErrInvalid) {
		t.Errorf("huge chunk: %v", err)
	}
	if _, err := NewPlan("sha256:00", 100, 0); !errors.Is(err, ErrBadDigest) {
		t.Errorf("bad digest: %v", err)
	}
}

func TestHaveRejects(t *testing.T) {
	_, digest := testArchive(10)
	p, _ := NewPlan(digest, 10*MinChunkSize, MinChunkSize)
	base := Have{Drone: "d1", Transfer: p.Transfer, Digest: p.Digest, Size: p.Size, ChunkSize: p.ChunkSize, Count: p.Count(), At: t0}
	for name, rs := range map[string][][2]int{
		"overlap":  {{0, 3}, {2, 4}},
		"unsorted": {{5, 6}, {0, 1}},
		"empty":    {{3, 3}},
		"past end": {{8, 11}},
		"negative": {{-1, 2}},
	} {
		h := base
		h.Ranges = rs
		raw, _ := h.Marshal()
		if _, err := DecodeHave(raw); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	h := base
	h.Count = 99
	raw, _ := h.Marshal()
	if _, err := DecodeHave(raw); !errors.Is(err, ErrInvalid) {
		t.Errorf("count: %v", err)
	}
}

func TestStateRoundTrips(t *testing.T) {
	figs := &Figures{SyncMS: 12.5, SwitchTick: 4242, ControlGapMS: 2.5, ControlPeriodMS: 2.5, MaxAttDevDeg: 0.4, PhaseMS: map[string]float64{"sync": 12.5}}
	rep := Reported{Drone: "drone-1", AgentVersion: "0.1.0", Online: true,
		Active:     &Running{Version: "1.0.0", Image: "flightctl@" + testDigest, Since: t0},
		Update:     &UpdateState{Serial: 1000, Version: "2.0.0", Phase: PhaseShadow, Started: t0, Changed: t0},
		LastResult: &Result{Serial: 900, Result: ResultCommitted, At: t0, Figures: figs}, LastSerial: 900, UpdatedAt: t0}
	raw, err := rep.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	gotRep, err := DecodeReported(raw)
	if err != nil {
		t.Fatal(err)
	}
	rep.V = Version
	if !reflect.DeepEqual(*gotRep, rep) {
		t.Errorf("reported:\n got %+v\nwant %+v", *gotRep, rep)
	}

	ev := Event{Drone: "drone-1", Seq: 3, Serial: 1000, Kind: KindUpdate, Phase: PhaseCommitted, Prev: PhaseProbation, At: t0, Figures: figs, Result: ResultCommitted}
	raw, _ = ev.Marshal()
	gotEv, err := DecodeEvent(raw)
	if err != nil {
		t.Fatal(err)
	}
	ev.V = Version
	if !reflect.DeepEqual(*gotEv, ev) {
		t.Errorf("event:\n got %+v\nwant %+v", *gotEv, ev)
	}

	tel := Telemetry{Drone: "drone-1", At: t0, Tick: 99, Mode: "hover", Armed: true, RollDeg: 0.5, AltM: 2, Motors: []float64{0.5, 0.5, 0.5, 0.5}, ControllerVersion: "1.0.0"}
	raw, _ = tel.Marshal()
	gotTel, err := DecodeTelemetry(raw)
	if err != nil {
		t.Fatal(err)
	}
	tel.V = Version
	if !reflect.DeepEqual(*gotTel, tel) {
		t.Errorf("telemetry:\n got %+v\nwant %+v", *gotTel, tel)
	}

	st, err := DecodeStatus(OfflineWill())
	if err != nil || st.Online {
		t.Errorf("will: %+v %v", st, err)
	}
	raw, _ = Status{Online: true, AgentVersion: "0.1.0", At: t0}.Marshal()
	if st, err := DecodeStatus(raw); err != nil || !st.Online || !st.At.Equal(t0) {
		t.Errorf("status: %+v %v", st, err)
	}

	// Lenient decoders still check version and drone id.
	if _, err := DecodeEvent([]byte(`{"v":2,"drone":"d1","phase":"x"}`)); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("event v2: %v", err)
	}
	if _, err := DecodeEvent([]byte(`{"v":1,"drone":"d/1","phase":"x"}`)); !errors.Is(err, ErrInvalidID) {
		t.Errorf("event bad drone: %v", err)
	}
	if _, err := DecodeReported([]byte(`{"v":1,"drone":"d1","new_field":true}`)); err != nil {
		t.Errorf("reported with an added field: %v", err)
	}
}

func TestRejectionEvent(t *testing.T) {
	_, err := Verify([]byte("nope"), NewKeyring(), t0, Expect{Drone: "d1"})
	ev := RejectionEvent("d1", 5, "inflight/drones/d1/desired", err, t0.Add(time.Second))
	raw, mErr := ev.Marshal()
	if mErr != nil {
		t.Fatal(mErr)
	}
	got, dErr := DecodeEvent(raw)
	if dErr != nil {
		t.Fatal(dErr)
	}
	if got.Phase != PhaseRejected || got.Result != ResultRejected || got.Reason != "unparsable" || got.Error == "" || !got.Phase.Terminal() {
		t.Errorf("rejection event %+v", got)
	}
}
