package handoff

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"
)

// sampleFrames is one valid frame of every type.
func sampleFrames() []Frame {
	return []Frame{
		{Type: TypeHello, Seq: 1, Hello: Hello{Role: RoleActive, Schema: 1, ControlHz: 400, Version: []byte("1.0.0"), Fields: MustNames("att", "alt")}},
		{Type: TypeHello, Seq: 1, Hello: Hello{Role: RoleStandby, Schema: 2, Warmup: 50, ControlHz: 400, Version: []byte("2.0.0"), Fields: MustNames("att")}},
		{Type: TypeHelloAck, Seq: 2},
		{Type: TypeRefuse, Seq: 2, Reason: Reason{Code: CodeIncompatible, Text: []byte("no migration from state schema 3 to 1")}},
		{Type: TypeSnapshot, Seq: 3, Tick: 1000, Flags: FlagLastChunk, Snapshot: Snapshot{Schema: 1, Total: 4, Data: []byte{1, 2, 3, 4}}},
		{Type: TypeSnapshot, Seq: 3, Tick: 1000, Snapshot: Snapshot{Schema: 1, Total: 9000, Offset: 0, Data: bytes.Repeat([]byte{7}, 8)}},
		{Type: TypeTick, Seq: 4, Tick: 1001, Inputs: []byte{0xaa, 0xbb}, Outputs: []byte{0x10, 0x20, 0x30}},
		{Type: TypeShadowReport, Seq: 2, Tick: 1001, Shadow: ShadowReport{Ticks: 1, Divergence: 0.5, MaxDivergence: 1.25, Ready: true}},
		{Type: TypeSwitch, Seq: 5, Tick: 1050},
		{Type: TypeSwitchAck, Seq: 3, Tick: 1050},
		{Type: TypeAbort, Seq: 6, Tick: 1051, Reason: Reason{Code: CodeNoAck, Text: []byte("no SWITCH_ACK")}},
		{Type: TypeCommit, Seq: 7, Tick: 3050},
		{Type: TypeRollback, Seq: 7, Tick: 1060, Reason: Reason{Code: CodeEnvelope, Text: []byte("tilt 31 deg")}},
		{Type: TypeHeartbeat, Seq: 8, Tick: 1100},
		{Type: TypeBye, Seq: 9, Tick: 3050},
	}
}

// normalise makes a frame comparable with its decoding: nil and empty slices
// alike, and the raw payload dropped.
func normalise(f Frame) Frame {
	f.Payload = nil
	nz := func(b []byte) []byte {
		if len(b) == 0 {
			return nil
		}
		return b
	}
	f.Hello.Version = nz(f.Hello.Version)
	f.Hello.Fields = Names(nz(f.Hello.Fields))
	f.Reason.Text = nz(f.Reason.Text)
	f.Snapshot.Data = nz(f.Snapshot.Data)
	f.Inputs = nz(f.Inputs)
	f.Outputs = nz(f.Outputs)
	return f
}

func TestFrameRoundTrip(t *testing.T) {
	seen := map[Type]bool{}
	for _, f := range sampleFrames() {
		seen[f.Type] = true
		p := AppendFrame(nil, &f)
		var g Frame
		if err := DecodeFrame(p, &g); err != nil {
			t.Fatalf("%v: decode: %v", f.Type, err)
		}
		if !reflect.DeepEqual(normalise(f), normalise(g)) {
			t.Errorf("%v: round trip\n got %+v\nwant %+v", f.Type, normalise(g), normalise(f))
		}
		if len(g.Payload) != len(p)-HeaderLen {
			t.Errorf("%v: payload %d bytes, packet %d", f.Type, len(g.Payload), len(p))
		}
	}
	for ty := Type(1); ty <= typeMax; ty++ {
		if !seen[ty] {
			t.Errorf("no sample frame of type %v", ty)
		}
	}
}

func TestFrameAppendsToBuffer(t *testing.T) {
	f := sampleFrames()[6]
	prefix := []byte("xyz")
	p := AppendFrame(append([]byte(nil), prefix...), &f)
	if !bytes.Equal(p[:3], prefix) {
		t.Fatal("AppendFrame overwrote the buffer's contents")
	}
	var g Frame
	if err := DecodeFrame(p[3:], &g); err != nil {
		t.Fatal(err)
	}
}

func TestFrameDecodeErrors(t *testing.T) {
	valid := func() []byte { f := sampleFrames()[6]; return AppendFrame(nil, &f) }
	recrc := func(p []byte) []byte {
		// Fix the checksum after a deliberate change, so that the check
		// under test (not the CRC) fails.
		crc := crc32.Update(crc32.Update(0, castagnoli, p[:24]), castagnoli, p[HeaderLen:])
		binary.LittleEndian.PutUint32(p[24:], crc)
		return p
	}
	cases := []struct {
		name string
		p    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"short", valid()[:HeaderLen-1], ErrShort},
		{"magic", func() []byte { p := valid(); p[0] = 'X'; return p }(), ErrMagic},
		{"version", func() []byte { p := valid(); p[4] = 2; return recrc(p) }(), ErrVersion},
		{"type 0", func() []byte { p := valid(); p[5] = 0; return recrc(p) }(), ErrType},
		{"type 99", func() []byte { p := valid(); p[5] = 99; return recrc(p) }(), ErrType},
		{"truncated payload", valid()[:len(valid())-1], ErrLength},
		{"extra byte", append(valid(), 0), ErrLength},
		{"over MaxPacket", func() []byte {
			f := Frame{Type: TypeTick, Seq: 1, Outputs: make([]byte, MaxPayload+1)}
			return AppendFrame(nil, &f)
		}(), ErrLength},
		{"crc header bit", func() []byte { p := valid(); p[17] ^= 1; return p }(), ErrChecksum},
		{"crc payload bit", func() []byte { p := valid(); p[len(p)-1] ^= 0x80; return p }(), ErrChecksum},
		{"crc field", func() []byte { p := valid(); p[24] ^= 1; return p }(), ErrChecksum},
		{"unknown flag", func() []byte { p := valid(); p[6] = 0x80; return recrc(p) }(), ErrFlags},
		{"last-chunk flag on TICK", func() []byte { p := valid(); p[6] = 1; return recrc(p) }(), ErrFlags},
		{"tick inputs overrun", func() []byte { p := valid(); binary.LittleEndian.PutUint32(p[HeaderLen:], 1000); return recrc(p) }(), ErrBody},
		{"snapshot past total", func() []byte {
			f := Frame{Type: TypeSnapshot, Flags: FlagLastChunk, Seq: 1, Snapshot: Snapshot{Total: 2, Data: []byte{1, 2, 3}}}
			return AppendFrame(nil, &f)
		}(), ErrBody},
		{"snapshot last flag missing", func() []byte {
			f := Frame{Type: TypeSnapshot, Seq: 1, Snapshot: Snapshot{Total: 3, Data: []byte{1, 2, 3}}}
			return AppendFrame(nil, &f)
		}(), ErrFlags},
		{"snapshot last flag early", func() []byte {
			f := Frame{Type: TypeSnapshot, Flags: FlagLastChunk, Seq: 1, Snapshot: Snapshot{Total: 4, Data: []byte{1, 2, 3}}}
			return AppendFrame(nil, &f)
		}(), ErrFlags},
		{"hello bad role", func() []byte {
			f := Frame{Type: TypeHello, Seq: 1, Hello: Hello{Role: 9}}
			return AppendFrame(nil, &f)
		}(), ErrBody},
		{"hello bad names", func() []byte {
			f := Frame{Type: TypeHello, Seq: 1, Hello: Hello{Role: RoleActive, Fields: Names{3, 'a'}}}
			return AppendFrame(nil, &f)
		}(), ErrBody},
		{"hello empty name", func() []byte {
			f := Frame{Type: TypeHello, Seq: 1, Hello: Hello{Role: RoleActive, Fields: Names{0}}}
			return AppendFrame(nil, &f)
		}(), ErrBody},
		{"payload on SWITCH", func() []byte {
			f := Frame{Type: TypeTick, Seq: 1, Outputs: []byte{1}}
			p := AppendFrame(nil, &f)
			p[5] = byte(TypeSwitch)
			return recrc(p)
		}(), ErrBody},
		{"report ready byte", func() []byte {
			f := Frame{Type: TypeShadowReport, Seq: 1}
			p := AppendFrame(nil, &f)
			p[len(p)-1] = 2
			return recrc(p)
		}(), ErrBody},
		{"reason text length", func() []byte {
			f := Frame{Type: TypeAbort, Seq: 1, Reason: Reason{Text: []byte("abc")}}
			p := AppendFrame(nil, &f)
			binary.LittleEndian.PutUint16(p[HeaderLen+2:], 4)
			return recrc(p)
		}(), ErrBody},
	}
	for _, c := range cases {
		var f Frame
		err := DecodeFrame(c.p, &f)
		if !errors.Is(err, c.want) || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestFrameTruncatesOverlongFields(t *testing.T) {
	f := Frame{Type: TypeAbort, Seq: 1, Reason: Reason{Code: CodeProtocol, Text: bytes.Repeat([]byte("x"), MaxText+10)}}
	var g Frame
	if err := DecodeFrame(AppendFrame(nil, &f), &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Reason.Text) != MaxText {
		t.Errorf("text of %d bytes, want it truncated to %d", len(g.Reason.Text), MaxText)
	}
	f = Frame{Type: TypeHello, Seq: 1, Hello: Hello{Role: RoleActive, Version: bytes.Repeat([]byte("v"), 300)}}
	if err := DecodeFrame(AppendFrame(nil, &f), &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Hello.Version) != MaxVersionLen {
		t.Errorf("version of %d bytes, want %d", len(g.Hello.Version), MaxVersionLen)
	}
}

func TestFrameCodecAllocs(t *testing.T) {
	f := Frame{Type: TypeTick, Seq: 9, Tick: 77, Inputs: make([]byte, 64), Outputs: make([]byte, 16)}
	buf := make([]byte, 0, MaxPacket)
	var g Frame
	allocs := testing.AllocsPerRun(1000, func() {
		p := AppendFrame(buf[:0], &f)
		if err := DecodeFrame(p, &g); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per encode+decode, want 0", allocs)
	}
	h := sampleFrames()[1]
	allocs = testing.AllocsPerRun(1000, func() {
		p := AppendFrame(buf[:0], &h)
		if err := DecodeFrame(p, &g); err != nil || !g.Hello.Fields.Contains("att") {
			t.Fatal("hello did not decode", err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per HELLO encode+decode+lookup, want 0", allocs)
	}
}

func TestNames(t *testing.T) {
	n := MustNames("estimator", "integrators", "mode")
	if n.Len() != 3 || !n.Contains("mode") || n.Contains("mod") || n.Contains("missions") {
		t.Errorf("Len/Contains wrong on %q", n.Strings())
	}
	if name, missing := n.Missing(MustNames("mode", "mission")); !missing || name != "mission" {
		t.Errorf("Missing = %q, %v; want mission, true", name, missing)
	}
	if _, missing := n.Missing(MustNames("mode", "estimator")); missing {
		t.Error("Missing reported a name the list has")
	}
	if _, missing := n.Missing(nil); missing {
		t.Error("Missing of nothing reported a name")
	}
	if got := n.Strings(); !reflect.DeepEqual(got, []string{"estimator", "integrators", "mode"}) {
		t.Errorf("Strings = %q", got)
	}
	if _, err := AppendNames(nil, ""); err == nil {
		t.Error("an empty name was accepted")
	}
	if _, err := AppendNames(nil, string(bytes.Repeat([]byte("n"), 256))); err == nil {
		t.Error("a 256-byte name was accepted")
	}
}

// FuzzDecodeFrame: no input panics; whatever decodes re-encodes to the same
// bytes (the format has one encoding per frame).
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(AppendFrame(nil, &fr))
	}
	f.Add([]byte{})
	f.Add([]byte("IFHO"))
	f.Fuzz(func(t *testing.T, p []byte) {
		var fr Frame
		if err := DecodeFrame(p, &fr); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		q := AppendFrame(nil, &fr)
		if !bytes.Equal(p, q) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", p, q)
		}
	})
}

// FuzzDecodePayload fuzzes what lies behind the checksum: the fuzzer picks
// the type, flags and payload, and the header and CRC are made valid, so the
// payload decoders are exercised rather than the CRC check.
func FuzzDecodePayload(f *testing.F) {
	for _, fr := range sampleFrames() {
		p := AppendFrame(nil, &fr)
		f.Add(uint8(fr.Type), uint16(fr.Flags), p[HeaderLen:])
	}
	f.Fuzz(func(t *testing.T, typ uint8, flags uint16, payload []byte) {
		p := make([]byte, HeaderLen, HeaderLen+len(payload))
		copy(p, Magic[:])
		p[4] = ProtocolVersion
		p[5] = typ
		binary.LittleEndian.PutUint16(p[6:], flags)
		binary.LittleEndian.PutUint32(p[8:], 1)
		binary.LittleEndian.PutUint32(p[12:], uint32(len(payload)))
		p = append(p, payload...)
		binary.LittleEndian.PutUint32(p[24:], crc32.Update(crc32.Update(0, castagnoli, p[:24]), castagnoli, p[HeaderLen:]))
		var fr Frame
		if err := DecodeFrame(p, &fr); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if q := AppendFrame(nil, &fr); !bytes.Equal(p, q) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", p, q)
		}
	})
}
