package simbus

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the wire format version carried in the first byte of every message.
const Version = 1

// Message kinds of a request.
const (
	// KindHello names the client (its payload is a UTF-8 name of at most
	// MaxName bytes). It is optional; the server answers it with StatusOK.
	KindHello = 1
	// KindTx is one I2C transaction: write the payload to Addr, then read
	// ReadLen bytes (a repeated start between the two, as i2c.Bus.Tx does).
	KindTx = 2
)

// Statuses of a response.
const (
	StatusOK        = 0 // the transaction completed
	StatusNACK      = 1 // no device answered at the address (as on a real bus)
	StatusMalformed = 2 // the request could not be decoded; the server drops the client after sending it
	StatusDevice    = 3 // the device refused the transaction (for example an out of range register)
)

// Sizes.
const (
	ReqHeaderLen  = 12
	RespHeaderLen = 8
	// MaxPayload bounds the bytes written or read in one transaction.
	MaxPayload = 512
	// MaxName bounds the client name in a hello.
	MaxName = 64
	// MaxPacket is the largest packet either side ever sends.
	MaxPacket = ReqHeaderLen + MaxPayload
)

// ErrMalformed is returned by the decoders for any message that does not
// follow the format.
var ErrMalformed = errors.New("simbus: malformed message")

// Request is the header of a request. The write payload follows the header.
//
//	offset size field
//	0      1    version (1)
//	1      1    kind (1 hello, 2 tx)
//	2      2    addr, little endian (7-bit I2C address; 0 for hello)
//	4      2    read length, little endian (0 for hello)
//	6      2    write length, little endian
//	8      4    sequence number, little endian, chosen by the client, echoed
//	12     n    write payload (or the client name for a hello)
type Request struct {
	Kind    uint8
	Addr    uint16
	ReadLen uint16
	Seq     uint32
	Write   []byte
}

// AppendRequest appends the encoding of r to b and returns it.
func AppendRequest(b []byte, r *Request) ([]byte, error) {
	if len(r.Write) > MaxPayload || int(r.ReadLen) > MaxPayload {
		return b, fmt.Errorf("simbus: transaction of %d written and %d read bytes exceeds %d: %w", len(r.Write), r.ReadLen, MaxPayload, ErrMalformed)
	}
	// Refuse what DecodeRequest would refuse, so that every encoded request
	// decodes (the fuzz test checks the round trip).
	switch r.Kind {
	case KindHello:
		if len(r.Write) > MaxName {
			return b, fmt.Errorf("simbus: client name of %d bytes exceeds %d: %w", len(r.Write), MaxName, ErrMalformed)
		}
		if r.Addr != 0 || r.ReadLen != 0 {
			return b, fmt.Errorf("simbus: hello with an address or a read length: %w", ErrMalformed)
		}
	case KindTx:
		if r.Addr > 0x7f {
			return b, fmt.Errorf("simbus: address %#x is not a 7-bit address: %w", r.Addr, ErrMalformed)
		}
	default:
		return b, fmt.Errorf("simbus: unknown request kind %d: %w", r.Kind, ErrMalformed)
	}
	var h [ReqHeaderLen]byte
	h[0] = Version
	h[1] = r.Kind
	binary.LittleEndian.PutUint16(h[2:], r.Addr)
	binary.LittleEndian.PutUint16(h[4:], r.ReadLen)
	binary.LittleEndian.PutUint16(h[6:], uint16(len(r.Write)))
	binary.LittleEndian.PutUint32(h[8:], r.Seq)
	b = append(b, h[:]...)
	return append(b, r.Write...), nil
}

// DecodeRequest decodes one request packet. r.Write aliases p.
func DecodeRequest(p []byte, r *Request) error {
	if len(p) < ReqHeaderLen {
		return fmt.Errorf("simbus: request of %d bytes is shorter than its header: %w", len(p), ErrMalformed)
	}
	if p[0] != Version {
		return fmt.Errorf("simbus: request version %d, want %d: %w", p[0], Version, ErrMalformed)
	}
	r.Kind = p[1]
	r.Addr = binary.LittleEndian.Uint16(p[2:])
	r.ReadLen = binary.LittleEndian.Uint16(p[4:])
	wl := int(binary.LittleEndian.Uint16(p[6:]))
	r.Seq = binary.LittleEndian.Uint32(p[8:])
	switch r.Kind {
	case KindHello:
		if wl > MaxName || r.ReadLen != 0 || r.Addr != 0 {
			return fmt.Errorf("simbus: bad hello: %w", ErrMalformed)
		}
	case KindTx:
		if r.Addr > 0x7f {
			return fmt.Errorf("simbus: address %#x is not a 7-bit address: %w", r.Addr, ErrMalformed)
		}
	default:
		return fmt.Errorf("simbus: unknown request kind %d: %w", r.Kind, ErrMalformed)
	}
	if wl > MaxPayload || int(r.ReadLen) > MaxPayload {
		return fmt.Errorf("simbus: transaction exceeds %d bytes: %w", MaxPayload, ErrMalformed)
	}
	if len(p) != ReqHeaderLen+wl {
		return fmt.Errorf("simbus: request carries %d payload bytes, header says %d: %w", len(p)-ReqHeaderLen, wl, ErrMalformed)
	}
	r.Write = p[ReqHeaderLen:]
	return nil
}

// Response is the header of a response. The read payload follows the header
// and is present only with StatusOK.
//
//	offset size field
//	0      1    version (1)
//	1      1    status (0 ok, 1 nack, 2 malformed, 3 device error)
//	2      2    read length, little endian (equals the request's on StatusOK, else 0)
//	4      4    sequence number of the request, little endian
//	8      n    bytes read
type Response struct {
	Status uint8
	Seq    uint32
	Read   []byte
}

// AppendResponse appends the encoding of r to b and returns it. The caller
// keeps len(r.Read) <= MaxPayload (DecodeResponse refuses longer ones).
func AppendResponse(b []byte, r *Response) []byte {
	var h [RespHeaderLen]byte
	h[0] = Version
	h[1] = r.Status
	binary.LittleEndian.PutUint16(h[2:], uint16(len(r.Read)))
	binary.LittleEndian.PutUint32(h[4:], r.Seq)
	b = append(b, h[:]...)
	return append(b, r.Read...)
}

// DecodeResponse decodes one response packet. r.Read aliases p.
func DecodeResponse(p []byte, r *Response) error {
	if len(p) < RespHeaderLen {
		return fmt.Errorf("simbus: response of %d bytes is shorter than its header: %w", len(p), ErrMalformed)
	}
	if p[0] != Version {
		return fmt.Errorf("simbus: response version %d, want %d: %w", p[0], Version, ErrMalformed)
	}
	r.Status = p[1]
	n := int(binary.LittleEndian.Uint16(p[2:]))
	r.Seq = binary.LittleEndian.Uint32(p[4:])
	if n > MaxPayload || len(p) != RespHeaderLen+n {
		return fmt.Errorf("simbus: response carries %d bytes, header says %d: %w", len(p)-RespHeaderLen, n, ErrMalformed)
	}
	r.Read = p[RespHeaderLen:]
	return nil
}
