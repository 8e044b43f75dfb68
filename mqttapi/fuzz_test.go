package mqttapi

import (
	"crypto/ed25519"
	"errors"
	"testing"
)

// Every decoder is fuzzed: it must never panic, must return exactly one of
// a value or an error wrapping a sentinel, and what it accepts must survive
// a re-encode.

func mustOneSentinel(t *testing.T, err error) {
	t.Helper()
	if err != nil && Reason(err) == "error" {
		t.Fatalf("error without a sentinel: %v", err)
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	priv := testKey(1)
	kr := NewKeyring(priv.Public().(ed25519.PublicKey))
	f.Add(seal(f, priv, testManifest()))
	f.Add([]byte(`{"v":1,"key_id":"x","alg":"ed25519","payload":"e30=","sig":"AA=="}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{"v":2,"payload":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := DecodeEnvelope(raw)
		mustOneSentinel(t, err)
		if (e == nil) == (err == nil) {
			t.Fatalf("envelope %v, err %v", e, err)
		}
		p, id, err := kr.Open(raw)
		mustOneSentinel(t, err)
		if err == nil && (id != KeyID(priv.Public().(ed25519.PublicKey)) || !ed25519.Verify(priv.Public().(ed25519.PublicKey), p, e.Sig)) {
			t.Fatalf("Open accepted a bad envelope")
		}
		m, err := Verify(raw, kr, t0, expect())
		mustOneSentinel(t, err)
		if err == nil && m == nil {
			t.Fatal("nil manifest without error")
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	p, _ := testManifest().Marshal()
	f.Add(p)
	m := testManifest()
	m.Image.Transfer, m.Image.Archive = TransferMQTT, &Archive{Digest: testDigest, Size: 1 << 20}
	p, _ = m.Marshal()
	f.Add(p)
	f.Add([]byte(`{"v":1,"kind":"update"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := DecodeManifest(raw)
		mustOneSentinel(t, err)
		if err != nil {
			return
		}
		again, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest does not re-encode: %v", err)
		}
		if _, err := DecodeManifest(again); err != nil {
			t.Fatalf("re-encoded manifest rejected: %v\n%s", err, again)
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	p, _ := testRequest().Marshal()
	f.Add(p)
	f.Add([]byte(`{"v":1,"kind":"cancel","drone":"d","serial":1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := DecodeRequest(raw)
		mustOneSentinel(t, err)
		if err != nil {
			return
		}
		again, err := r.Marshal()
		if err != nil {
			t.Fatalf("accepted request does not re-encode: %v", err)
		}
		if _, err := DecodeRequest(again); err != nil {
			t.Fatalf("re-encoded request rejected: %v", err)
		}
	})
}

func FuzzDecodeReported(f *testing.F) {
	raw, _ := Reported{Drone: "d1", AgentVersion: "0.1.0", Active: &Running{Version: "1", Image: "x@" + testDigest},
		Update: &UpdateState{Serial: 2, Phase: PhaseSync}, LastResult: &Result{Result: ResultCommitted}, LastSerial: 1, UpdatedAt: t0}.Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := DecodeReported(raw)
		mustOneSentinel(t, err)
		if err == nil {
			if _, err := r.Marshal(); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	raw, _ := Event{Drone: "d1", Seq: 1, Serial: 2, Phase: PhaseCommitted, At: t0, Result: ResultCommitted,
		Figures: &Figures{ControlGapMS: 2.5, PhaseMS: map[string]float64{"sync": 1}}}.Marshal()
	f.Add(raw)
	f.Add([]byte(`{"v":1,"drone":"d1","phase":"rejected","reason":"expired"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := DecodeEvent(raw)
		mustOneSentinel(t, err)
		if err == nil {
			if _, err := e.Marshal(); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}

func FuzzDecodeTelemetry(f *testing.F) {
	raw, _ := Telemetry{Drone: "d1", At: t0, Mode: "hover", Armed: true, Motors: []float64{0.5, 0.5, 0.5, 0.5}, ControllerVersion: "1"}.Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		tel, err := DecodeTelemetry(raw)
		mustOneSentinel(t, err)
		if err == nil {
			if _, err := tel.Marshal(); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add(OfflineWill())
	f.Add([]byte(`{"v":1,"online":true,"at":"2026-05-01T12:00:00Z"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, err := DecodeStatus(raw)
		mustOneSentinel(t, err)
	})
}

func FuzzDecodeChunk(f *testing.F) {
	archive, digest := testArchive(2*MinChunkSize + 7)
	p, _ := NewPlan(digest, int64(len(archive)), MinChunkSize)
	for i := 0; i < p.Count(); i++ {
		off, n := p.Bounds(i)
		c, _ := p.NewChunk(i, archive[off:off+int64(n)])
		raw, _ := c.Marshal()
		f.Add(raw)
	}
	f.Add([]byte("{\"v\":1}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := DecodeChunk(raw)
		mustOneSentinel(t, err)
		if err != nil {
			return
		}
		if len(c.Data) != c.Len || c.Offset+int64(c.Len) > c.Size {
			t.Fatalf("accepted inconsistent chunk %+v", c.ChunkHeader)
		}
		again, err := c.Plan().NewChunk(c.Index, c.Data)
		if err != nil || again.SHA256 != c.SHA256 {
			t.Fatalf("accepted chunk does not rebuild: %v", err)
		}
	})
}

func FuzzDecodeHave(f *testing.F) {
	_, digest := testArchive(1)
	p, _ := NewPlan(digest, 100*MinChunkSize, MinChunkSize)
	raw, _ := Have{Drone: "d1", Transfer: p.Transfer, Digest: p.Digest, Size: p.Size, ChunkSize: p.ChunkSize,
		Count: p.Count(), Ranges: [][2]int{{0, 10}, {20, 30}}, At: t0}.Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, err := DecodeHave(raw)
		mustOneSentinel(t, err)
		if err != nil {
			return
		}
		s, err := h.Set()
		if err != nil {
			t.Fatal(err)
		}
		if s.Held()+len(s.Missing()) != h.Count {
			t.Fatalf("held %d + missing %d != count %d", s.Held(), len(s.Missing()), h.Count)
		}
	})
}

func FuzzParseTopic(f *testing.F) {
	f.Add("inflight/drones/d1/desired")
	f.Add("inflight/fleets/alpha/desired")
	f.Add("inflight/drones/d1/transfer/abc/chunk")
	f.Fuzz(func(t *testing.T, topic string) {
		tp := Topics{}
		got, err := tp.Parse(topic)
		if err != nil {
			if !errors.Is(err, ErrInvalidTopic) {
				t.Fatalf("error without ErrInvalidTopic: %v", err)
			}
			return
		}
		// Whatever parses must rebuild to the same topic.
		var again string
		switch {
		case got.Fleet != "":
			again, err = tp.FleetDesired(got.Fleet)
		case got.Transfer != "":
			d, _ := tp.Drone(got.Drone)
			again, err = d.transfer(got.Transfer, got.Kind)
		default:
			again = tp.Root + DefaultRoot + "/drones/" + got.Drone + "/" + string(got.Kind)
		}
		if err != nil || again != topic {
			t.Fatalf("Parse(%q) = %+v rebuilds to %q (%v)", topic, got, again, err)
		}
	})
}
