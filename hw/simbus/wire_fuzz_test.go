package simbus

import (
	"bytes"
	"testing"
)

// Every packet DecodeRequest accepts re-encodes to exactly the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	for _, r := range []Request{
		{Kind: KindHello, Seq: 1, Write: []byte("flightctl-v1")},
		{Kind: KindTx, Addr: 0x68, ReadLen: 14, Seq: 2, Write: []byte{0x3b}},
		{Kind: KindTx, Addr: 0x40, Seq: 0xffffffff, Write: []byte{0x06, 0, 0, 0x9a, 0x06}},
	} {
		p, err := AppendRequest(nil, &r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte{Version, KindTx, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		var r Request
		if err := DecodeRequest(p, &r); err != nil {
			return
		}
		q, err := AppendRequest(nil, &r)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		if !bytes.Equal(p, q) {
			t.Fatalf("round trip changed % x into % x", p, q)
		}
	})
}

// Every request AppendRequest encodes decodes to the same fields.
func FuzzEncodeRequest(f *testing.F) {
	f.Add(uint8(KindTx), uint16(0x68), uint16(14), uint32(7), []byte{0x3b})
	f.Add(uint8(KindHello), uint16(0), uint16(0), uint32(1), []byte("x"))
	f.Fuzz(func(t *testing.T, kind uint8, addr, readLen uint16, seq uint32, w []byte) {
		in := Request{Kind: kind, Addr: addr, ReadLen: readLen, Seq: seq, Write: w}
		p, err := AppendRequest(nil, &in)
		if err != nil {
			return
		}
		var out Request
		if err := DecodeRequest(p, &out); err != nil {
			t.Fatalf("encoded %+v does not decode: %v", in, err)
		}
		if out.Kind != in.Kind || out.Addr != in.Addr || out.ReadLen != in.ReadLen || out.Seq != in.Seq || !bytes.Equal(out.Write, in.Write) {
			t.Fatalf("round trip changed %+v into %+v", in, out)
		}
	})
}

// Every packet DecodeResponse accepts re-encodes to exactly the same bytes,
// and every response of a valid size survives encode then decode.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(AppendResponse(nil, &Response{Status: StatusOK, Seq: 3, Read: make([]byte, 14)}))
	f.Add(AppendResponse(nil, &Response{Status: StatusNACK, Seq: 4}))
	f.Add([]byte{Version, 0, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		var r Response
		if err := DecodeResponse(p, &r); err == nil {
			if q := AppendResponse(nil, &r); !bytes.Equal(p, q) {
				t.Fatalf("round trip changed % x into % x", p, q)
			}
		}
		if len(p) < 5 || len(p)-5 > MaxPayload {
			return
		}
		in := Response{Status: p[0], Seq: uint32(p[1]) | uint32(p[2])<<8 | uint32(p[3])<<16 | uint32(p[4])<<24, Read: p[5:]}
		var out Response
		if err := DecodeResponse(AppendResponse(nil, &in), &out); err != nil {
			t.Fatalf("encoded %+v does not decode: %v", in, err)
		}
		if out.Status != in.Status || out.Seq != in.Seq || !bytes.Equal(out.Read, in.Read) {
			t.Fatalf("round trip changed %+v into %+v", in, out)
		}
	})
}
