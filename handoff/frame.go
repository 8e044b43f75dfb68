package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// ProtocolVersion is the frame format version carried in every header. A
// decoder refuses any other version: an incompatible change bumps it.
const ProtocolVersion = 1

// Magic is the first four bytes of every frame: "IFHO".
var Magic = [4]byte{'I', 'F', 'H', 'O'}

// Sizes of the format.
const (
	// HeaderLen is the size of the frame header.
	HeaderLen = 28
	// MaxPacket is the largest frame (header and payload) either side sends
	// or accepts: one SOCK_SEQPACKET packet.
	MaxPacket = 8192
	// MaxPayload is the largest payload of one frame.
	MaxPayload = MaxPacket - HeaderLen
	// snapshotHeaderLen is the chunk header inside a SNAPSHOT payload.
	snapshotHeaderLen = 12
	// MaxChunk is the largest piece of state one SNAPSHOT frame carries.
	MaxChunk = MaxPayload - snapshotHeaderLen
	// MaxSnapshotTotal bounds the declared size of a whole snapshot in the
	// format; a receiver's own limit (IncomingConfig.MaxSnapshot) is lower.
	MaxSnapshotTotal = 64 << 20
	// MaxVersionLen bounds the program version string in a HELLO.
	MaxVersionLen = 255
	// MaxText bounds the reason text of a REFUSE, ABORT or ROLLBACK.
	MaxText = 1024
)

// Type is a frame type.
type Type uint8

// Frame types. The payload of each is described on Frame and in
// docs/handoff.md.
const (
	TypeHello        Type = 1  // each side: who it is and what it needs
	TypeHelloAck     Type = 2  // v1: the handshake succeeded, a snapshot follows
	TypeRefuse       Type = 3  // either side: incompatible, with a reason
	TypeSnapshot     Type = 4  // v1: one chunk of the state snapshot
	TypeTick         Type = 5  // the active side: one tick's inputs and outputs
	TypeShadowReport Type = 6  // v2 in shadow: ticks shadowed, divergence, ready
	TypeSwitch       Type = 7  // v1: "I wrote tick T-1 and release the authority; you write T"
	TypeSwitchAck    Type = 8  // v2: "I hold the authority and wrote tick T"
	TypeAbort        Type = 9  // either side: the handoff ends, with a reason
	TypeCommit       Type = 10 // v1: probation passed (PROBATION_END); v2 is the controller now
	TypeRollback     Type = 11 // v1: it took the authority back, with a reason
	TypeHeartbeat    Type = 12 // either side: alive, nothing else to say
	TypeBye          Type = 13 // either side: closing the connection on purpose
	typeMax               = TypeBye
)

var typeNames = [...]string{
	TypeHello:        "HELLO",
	TypeHelloAck:     "HELLO_ACK",
	TypeRefuse:       "REFUSE",
	TypeSnapshot:     "SNAPSHOT",
	TypeTick:         "TICK",
	TypeShadowReport: "SHADOW_REPORT",
	TypeSwitch:       "SWITCH",
	TypeSwitchAck:    "SWITCH_ACK",
	TypeAbort:        "ABORT",
	TypeCommit:       "PROBATION_END",
	TypeRollback:     "ROLLBACK",
	TypeHeartbeat:    "HEARTBEAT",
	TypeBye:          "BYE",
}

func (t Type) String() string {
	if t >= 1 && t <= typeMax {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Flags are the header flags.
type Flags uint16

// FlagLastChunk marks the final chunk of a snapshot; it is set on a SNAPSHOT
// frame exactly when offset+len(data) equals the total, and on no other frame.
const FlagLastChunk Flags = 1

const knownFlags = FlagLastChunk

// Role says which side of a handoff sent a HELLO.
type Role uint8

// Roles.
const (
	RoleActive  Role = 1 // v1, the controller flying now
	RoleStandby Role = 2 // v2, the controller taking over
)

func (r Role) String() string {
	switch r {
	case RoleActive:
		return "active"
	case RoleStandby:
		return "standby"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Hello is the payload of a HELLO frame.
type Hello struct {
	Role      Role
	Schema    uint32 // the sender's state schema version
	Warmup    uint32 // ticks of warm-up the sender needs in shadow (v2), 0 from v1
	ControlHz uint32 // the sender's control rate
	Version   []byte // the sender's program version (at most MaxVersionLen bytes)
	// Fields are the state fields v1's snapshot provides, or the fields v2
	// needs from it.
	Fields Names
}

// Reason is the payload of a REFUSE, ABORT or ROLLBACK frame.
type Reason struct {
	Code Code
	Text []byte // at most MaxText bytes; AppendFrame truncates longer text
}

// Snapshot is the payload of a SNAPSHOT frame: one chunk of an opaque state
// of a given schema. The header's tick is the last tick the state includes.
type Snapshot struct {
	Schema uint32
	Total  uint32 // size of the whole snapshot
	Offset uint32 // where Data starts within it
	Data   []byte // at most MaxChunk bytes
}

// ShadowReport is the payload of a SHADOW_REPORT frame. The header's tick is
// the last tick shadowed.
type ShadowReport struct {
	Ticks         uint64  // ticks shadowed since the snapshot was installed
	Divergence    float64 // on the last tick
	MaxDivergence float64 // since the snapshot was installed
	Ready         bool    // within tolerance for the declared warm-up
}

// Frame is one decoded (or to be encoded) frame. Only the fields of its Type
// are used: Hello for HELLO; Reason for REFUSE, ABORT and ROLLBACK; Snapshot
// for SNAPSHOT; Inputs and Outputs for TICK; Shadow for SHADOW_REPORT. HELLO_ACK,
// SWITCH, SWITCH_ACK, PROBATION_END, HEARTBEAT and BYE carry nothing but the
// header: SWITCH and SWITCH_ACK name the tick T in Tick.
//
// After DecodeFrame every slice aliases the packet: copy what must outlive it.
type Frame struct {
	Type  Type
	Flags Flags
	Seq   uint32 // per direction, from 1, strictly increasing by one (set by Conn.Send)
	Tick  uint64

	Hello    Hello
	Reason   Reason
	Snapshot Snapshot
	Inputs   []byte // TICK: opaque record of the sensor samples the tick used
	Outputs  []byte // TICK: opaque record of the outputs it wrote
	Shadow   ShadowReport

	// Payload is the raw payload after DecodeFrame (AppendFrame ignores it).
	Payload []byte
}

// Decoding errors. All wrap ErrMalformed.
var (
	// ErrMalformed is wrapped by every error DecodeFrame returns.
	ErrMalformed = errors.New("handoff: malformed frame")
	ErrShort     = fmt.Errorf("handoff: frame shorter than its header: %w", ErrMalformed)
	ErrMagic     = fmt.Errorf("handoff: bad magic: %w", ErrMalformed)
	ErrVersion   = fmt.Errorf("handoff: unsupported protocol version: %w", ErrMalformed)
	ErrType      = fmt.Errorf("handoff: unknown frame type: %w", ErrMalformed)
	ErrFlags     = fmt.Errorf("handoff: unknown or misplaced flags: %w", ErrMalformed)
	ErrLength    = fmt.Errorf("handoff: payload length does not match the packet: %w", ErrMalformed)
	ErrChecksum  = fmt.Errorf("handoff: CRC-32C mismatch: %w", ErrMalformed)
	ErrBody      = fmt.Errorf("handoff: malformed payload: %w", ErrMalformed)
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendFrame appends the encoding of f to b and returns it. It does not
// allocate when b has room for the frame. Over-long variable fields are
// truncated to their format limits (the version to MaxVersionLen bytes, a
// reason text to MaxText, snapshot data to MaxChunk); the caller keeps the
// whole frame within MaxPacket (Conn.Send refuses larger ones).
func AppendFrame(b []byte, f *Frame) []byte {
	start := len(b)
	var h [HeaderLen]byte
	copy(h[0:4], Magic[:])
	h[4] = ProtocolVersion
	h[5] = byte(f.Type)
	binary.LittleEndian.PutUint16(h[6:], uint16(f.Flags))
	binary.LittleEndian.PutUint32(h[8:], f.Seq)
	binary.LittleEndian.PutUint64(h[16:], f.Tick)
	b = append(b, h[:]...)
	switch f.Type {
	case TypeHello:
		v := f.Hello.Version
		if len(v) > MaxVersionLen {
			v = v[:MaxVersionLen]
		}
		b = append(b, byte(f.Hello.Role), byte(len(v)))
		b = binary.LittleEndian.AppendUint32(b, f.Hello.Schema)
		b = binary.LittleEndian.AppendUint32(b, f.Hello.Warmup)
		b = binary.LittleEndian.AppendUint32(b, f.Hello.ControlHz)
		b = append(b, v...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f.Hello.Fields)))
		b = append(b, f.Hello.Fields...)
	case TypeRefuse, TypeAbort, TypeRollback:
		t := f.Reason.Text
		if len(t) > MaxText {
			t = t[:MaxText]
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(f.Reason.Code))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(t)))
		b = append(b, t...)
	case TypeSnapshot:
		d := f.Snapshot.Data
		if len(d) > MaxChunk {
			d = d[:MaxChunk]
		}
		b = binary.LittleEndian.AppendUint32(b, f.Snapshot.Schema)
		b = binary.LittleEndian.AppendUint32(b, f.Snapshot.Total)
		b = binary.LittleEndian.AppendUint32(b, f.Snapshot.Offset)
		b = append(b, d...)
	case TypeTick:
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f.Inputs)))
		b = append(b, f.Inputs...)
		b = append(b, f.Outputs...)
	case TypeShadowReport:
		b = binary.LittleEndian.AppendUint64(b, f.Shadow.Ticks)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f.Shadow.Divergence))
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f.Shadow.MaxDivergence))
		var r byte
		if f.Shadow.Ready {
			r = 1
		}
		b = append(b, r)
	}
	fr := b[start:]
	binary.LittleEndian.PutUint32(fr[12:], uint32(len(fr)-HeaderLen))
	crc := crc32.Update(0, castagnoli, fr[:24])
	crc = crc32.Update(crc, castagnoli, fr[HeaderLen:])
	binary.LittleEndian.PutUint32(fr[24:], crc)
	return b
}

// DecodeFrame decodes the single frame that is all of p (at most MaxPacket
// bytes) into f. It does not
// allocate: the slices of f alias p. Any malformed input is an error wrapping
// ErrMalformed, never a panic. It checks everything about one frame; the
// sequence of frames is checked by Conn.
func DecodeFrame(p []byte, f *Frame) error {
	*f = Frame{}
	if len(p) < HeaderLen {
		return ErrShort
	}
	if len(p) > MaxPacket {
		return ErrLength
	}
	if p[0] != Magic[0] || p[1] != Magic[1] || p[2] != Magic[2] || p[3] != Magic[3] {
		return ErrMagic
	}
	if p[4] != ProtocolVersion {
		return ErrVersion
	}
	f.Type = Type(p[5])
	if f.Type < 1 || f.Type > typeMax {
		return ErrType
	}
	f.Flags = Flags(binary.LittleEndian.Uint16(p[6:]))
	f.Seq = binary.LittleEndian.Uint32(p[8:])
	n := binary.LittleEndian.Uint32(p[12:])
	f.Tick = binary.LittleEndian.Uint64(p[16:])
	if uint64(n) != uint64(len(p)-HeaderLen) {
		return ErrLength
	}
	crc := crc32.Update(0, castagnoli, p[:24])
	crc = crc32.Update(crc, castagnoli, p[HeaderLen:])
	if crc != binary.LittleEndian.Uint32(p[24:]) {
		return ErrChecksum
	}
	if f.Flags&^knownFlags != 0 || (f.Flags&FlagLastChunk != 0 && f.Type != TypeSnapshot) {
		return ErrFlags
	}
	pl := p[HeaderLen:]
	f.Payload = pl
	switch f.Type {
	case TypeHello:
		if len(pl) < 14 {
			return ErrBody
		}
		h := &f.Hello
		h.Role = Role(pl[0])
		if h.Role != RoleActive && h.Role != RoleStandby {
			return ErrBody
		}
		vl := int(pl[1])
		h.Schema = binary.LittleEndian.Uint32(pl[2:])
		h.Warmup = binary.LittleEndian.Uint32(pl[6:])
		h.ControlHz = binary.LittleEndian.Uint32(pl[10:])
		rest := pl[14:]
		if len(rest) < vl+2 {
			return ErrBody
		}
		h.Version = rest[:vl:vl]
		rest = rest[vl:]
		fl := int(binary.LittleEndian.Uint16(rest))
		rest = rest[2:]
		if len(rest) != fl {
			return ErrBody
		}
		h.Fields = Names(rest)
		if !h.Fields.valid() {
			return ErrBody
		}
	case TypeRefuse, TypeAbort, TypeRollback:
		if len(pl) < 4 {
			return ErrBody
		}
		f.Reason.Code = Code(binary.LittleEndian.Uint16(pl))
		tl := int(binary.LittleEndian.Uint16(pl[2:]))
		if tl > MaxText || len(pl) != 4+tl {
			return ErrBody
		}
		f.Reason.Text = pl[4:]
	case TypeSnapshot:
		if len(pl) < snapshotHeaderLen {
			return ErrBody
		}
		s := &f.Snapshot
		s.Schema = binary.LittleEndian.Uint32(pl)
		s.Total = binary.LittleEndian.Uint32(pl[4:])
		s.Offset = binary.LittleEndian.Uint32(pl[8:])
		s.Data = pl[snapshotHeaderLen:]
		end := uint64(s.Offset) + uint64(len(s.Data))
		if s.Total > MaxSnapshotTotal || end > uint64(s.Total) {
			return ErrBody
		}
		if (end == uint64(s.Total)) != (f.Flags&FlagLastChunk != 0) {
			return ErrFlags
		}
	case TypeTick:
		if len(pl) < 4 {
			return ErrBody
		}
		il := binary.LittleEndian.Uint32(pl)
		if uint64(il) > uint64(len(pl)-4) {
			return ErrBody
		}
		f.Inputs = pl[4 : 4+il : 4+il]
		f.Outputs = pl[4+il:]
	case TypeShadowReport:
		if len(pl) != 25 || pl[24] > 1 {
			return ErrBody
		}
		f.Shadow.Ticks = binary.LittleEndian.Uint64(pl)
		f.Shadow.Divergence = math.Float64frombits(binary.LittleEndian.Uint64(pl[8:]))
		f.Shadow.MaxDivergence = math.Float64frombits(binary.LittleEndian.Uint64(pl[16:]))
		f.Shadow.Ready = pl[24] == 1
	default: // HELLO_ACK, SWITCH, SWITCH_ACK, PROBATION_END, HEARTBEAT, BYE
		if len(pl) != 0 {
			return ErrBody
		}
	}
	return nil
}

// Names is an encoded list of state field names, as a HELLO carries it: each
// name is one length byte (1 to 255) followed by that many bytes. The zero
// value is the empty list. Its methods do not allocate (except Strings).
type Names []byte

// AppendNames appends the encoding of names to b. Empty names and names
// longer than 255 bytes are an error.
func AppendNames(b []byte, names ...string) (Names, error) {
	for _, n := range names {
		if len(n) == 0 || len(n) > 255 {
			return Names(b), fmt.Errorf("handoff: state field name %q: length must be 1 to 255 bytes", n)
		}
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	return Names(b), nil
}

// MustNames is AppendNames(nil, names...) that panics on a bad name, for
// names fixed in the program.
func MustNames(names ...string) Names {
	n, err := AppendNames(nil, names...)
	if err != nil {
		panic(err)
	}
	return n
}

func (n Names) valid() bool {
	for len(n) > 0 {
		l := int(n[0])
		if l == 0 || len(n) < 1+l {
			return false
		}
		n = n[1+l:]
	}
	return true
}

// next splits off the first name; ok is false at the end or on a bad encoding.
func (n Names) next() (name []byte, rest Names, ok bool) {
	if len(n) == 0 {
		return nil, nil, false
	}
	l := int(n[0])
	if l == 0 || len(n) < 1+l {
		return nil, nil, false
	}
	return n[1 : 1+l], n[1+l:], true
}

// Len is the number of names.
func (n Names) Len() int {
	c := 0
	for {
		var ok bool
		if _, n, ok = n.next(); !ok {
			return c
		}
		c++
	}
}

// Contains reports whether name is in the list.
func (n Names) Contains(name string) bool {
	for {
		cur, rest, ok := n.next()
		if !ok {
			return false
		}
		if string(cur) == name {
			return true
		}
		n = rest
	}
}

func (n Names) containsBytes(name []byte) bool {
	for {
		cur, rest, ok := n.next()
		if !ok {
			return false
		}
		if string(cur) == string(name) {
			return true
		}
		n = rest
	}
}

// Missing returns the first name of need that n lacks, and false when n
// holds every one of them.
func (n Names) Missing(need Names) (string, bool) {
	for {
		cur, rest, ok := need.next()
		if !ok {
			return "", false
		}
		if !n.containsBytes(cur) {
			return string(cur), true
		}
		need = rest
	}
}

// Strings returns the names as strings (it allocates).
func (n Names) Strings() []string {
	var out []string
	for {
		cur, rest, ok := n.next()
		if !ok {
			return out
		}
		out = append(out, string(cur))
		n = rest
	}
}

// MarshalText names the sides in JSON reports: "v1" (active, outgoing) and
// "v2" (standby, incoming).
func (r Role) MarshalText() ([]byte, error) {
	switch r {
	case RoleActive:
		return []byte("v1"), nil
	case RoleStandby:
		return []byte("v2"), nil
	}
	return []byte(r.String()), nil
}

// UnmarshalText reads "v1" or "v2" (or "active", "standby").
func (r *Role) UnmarshalText(b []byte) error {
	switch string(b) {
	case "v1", "active":
		*r = RoleActive
	case "v2", "standby":
		*r = RoleStandby
	default:
		return fmt.Errorf("handoff: unknown role %q", b)
	}
	return nil
}
