package simbus

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
)

// DefaultTimeout bounds one transaction (request written and response read)
// when Dial is given no WithTimeout option. A real 400 kHz transaction of 15
// bytes takes about 0.4 ms; 50 ms is long enough for a loaded bench machine and
// short enough that a dead simulator shows up as an error within a few control
// ticks instead of a hang.
const DefaultTimeout = 50 * time.Millisecond

// Errors the client returns, wrapped; callers branch with errors.Is.
var (
	// ErrNACK: no device answered at the address. A real periph bus also
	// returns an error for an absent device (the kernel reports ENXIO/EREMOTEIO).
	ErrNACK = errors.New("simbus: no device answered (NACK)")
	// ErrDevice: the device refused the transaction.
	ErrDevice = errors.New("simbus: device refused the transaction")
	// ErrClosed: the bus was closed.
	ErrClosed = errors.New("simbus: bus closed")
	// ErrProtocol: the server answered something that does not match the
	// request (wrong sequence number, wrong length, unknown status, or it
	// reported the request as malformed).
	ErrProtocol = errors.New("simbus: protocol error")
)

// Option configures Dial.
type Option func(*Bus)

// WithTimeout sets the per-transaction deadline (DefaultTimeout if d <= 0).
func WithTimeout(d time.Duration) Option {
	return func(b *Bus) {
		if d > 0 {
			b.timeout = d
		}
	}
}

// Bus is an i2c.BusCloser whose transactions go to the bench simulator over a
// unix SOCK_SEQPACKET socket. Tx is safe for concurrent use and allocates
// nothing on success.
type Bus struct {
	conn    *net.UnixConn
	path    string
	name    string
	timeout time.Duration

	mu     sync.Mutex
	closed bool
	seq    uint32
	wbuf   [MaxPacket]byte
	// rbuf is one byte longer than the largest valid packet so that an
	// oversized (truncated by the kernel) response is detected.
	rbuf [MaxPacket + 1]byte
	resp Response
}

var _ i2c.BusCloser = (*Bus)(nil)

// Dial connects to the simulator's bus socket at path and introduces the
// client as name (at most MaxName bytes; it shows in the simulator's logs).
func Dial(path, name string, opts ...Option) (*Bus, error) {
	if len(name) > MaxName {
		return nil, fmt.Errorf("simbus: client name of %d bytes exceeds %d", len(name), MaxName)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("simbus: dial %s: %w", path, err)
	}
	b := &Bus{conn: c, path: path, name: name, timeout: DefaultTimeout}
	for _, o := range opts {
		o(b)
	}
	b.mu.Lock()
	err = b.roundTrip(KindHello, 0, []byte(name), nil)
	b.mu.Unlock()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("simbus: hello to %s: %w", path, err)
	}
	return b, nil
}

// String implements i2c.Bus.
func (b *Bus) String() string { return "simbus(" + b.path + ")" }

// SetSpeed implements i2c.Bus. The socket bus has no clock; any speed is
// accepted and ignored.
func (b *Bus) SetSpeed(physic.Frequency) error { return nil }

// Close implements io.Closer. Transactions after Close fail with ErrClosed.
func (b *Bus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if err := b.conn.Close(); err != nil {
		return fmt.Errorf("simbus: close %s: %w", b.path, err)
	}
	return nil
}

// Tx implements i2c.Bus: write w to the 7-bit address addr, then read len(r)
// bytes into r. A transaction that does not complete within the timeout
// returns an error; the connection stays usable (a late response is
// recognised by its sequence number and discarded).
func (b *Bus) Tx(addr uint16, w, r []byte) error {
	if addr > 0x7f {
		return fmt.Errorf("simbus: address %#x is not a 7-bit address", addr)
	}
	if len(w) > MaxPayload || len(r) > MaxPayload {
		return fmt.Errorf("simbus: transaction of %d written and %d read bytes exceeds %d", len(w), len(r), MaxPayload)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.roundTrip(KindTx, addr, w, r); err != nil {
		return fmt.Errorf("simbus: tx at %#x: %w", addr, err)
	}
	return nil
}

// roundTrip sends one request and waits for its response. b.mu is held.
func (b *Bus) roundTrip(kind uint8, addr uint16, w, r []byte) error {
	if b.closed {
		return ErrClosed
	}
	b.seq++
	req := Request{Kind: kind, Addr: addr, ReadLen: uint16(len(r)), Seq: b.seq, Write: w}
	pkt, err := AppendRequest(b.wbuf[:0], &req)
	if err != nil {
		return err
	}
	if err := b.conn.SetDeadline(time.Now().Add(b.timeout)); err != nil {
		return err
	}
	if _, err := b.conn.Write(pkt); err != nil {
		return timeoutOr(err)
	}
	for {
		n, err := b.conn.Read(b.rbuf[:])
		if err != nil {
			return timeoutOr(err)
		}
		if err := DecodeResponse(b.rbuf[:n], &b.resp); err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		if d := int32(b.resp.Seq - req.Seq); d < 0 {
			// A late answer to a transaction that already timed out.
			continue
		} else if d > 0 {
			return fmt.Errorf("response seq %d to request seq %d: %w", b.resp.Seq, req.Seq, ErrProtocol)
		}
		break
	}
	switch b.resp.Status {
	case StatusOK:
	case StatusNACK:
		return ErrNACK
	case StatusDevice:
		return ErrDevice
	case StatusMalformed:
		return fmt.Errorf("server says the request was malformed: %w", ErrProtocol)
	default:
		return fmt.Errorf("unknown status %d: %w", b.resp.Status, ErrProtocol)
	}
	if len(b.resp.Read) != len(r) {
		return fmt.Errorf("read %d bytes, asked %d: %w", len(b.resp.Read), len(r), ErrProtocol)
	}
	copy(r, b.resp.Read)
	return nil
}

func timeoutOr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no response within the deadline: %w", err)
	}
	if errors.Is(err, net.ErrClosed) {
		return ErrClosed
	}
	if errors.Is(err, io.EOF) {
		// SOCK_SEQPACKET: the peer closed, or sent an empty packet (which the
		// format never allows); the two cannot be told apart.
		return fmt.Errorf("server closed the connection: %w: %w", ErrProtocol, err)
	}
	return err
}
