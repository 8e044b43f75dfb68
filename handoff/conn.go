package handoff

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SocketName is the handoff socket's name inside the run directory.
const SocketName = "handoff.sock"

// SocketPath is the default handoff socket of a run directory.
func SocketPath(runDir string) string { return filepath.Join(runDir, SocketName) }

// RingSlots is the number of preallocated packet buffers between a Conn's
// reader goroutine and its Poll. When they are all full the reader stops
// reading, the socket fills, and the peer's Send times out: frames are never
// dropped silently.
const RingSlots = 64

// DefaultWriteTimeout bounds how long Send may block the tick loop on a full
// socket.
const DefaultWriteTimeout = time.Millisecond

// Transport errors.
var (
	// ErrClosed: the peer closed the connection (or crashed) after the
	// frames already received.
	ErrClosed = errors.New("handoff: connection closed by the peer")
	// ErrSequence: a frame's sequence number is not the previous one plus one
	// (a gap or a repeat).
	ErrSequence = errors.New("handoff: sequence number out of order")
	// ErrTooLarge: a frame (sent or received) exceeds MaxPacket.
	ErrTooLarge = errors.New("handoff: frame exceeds the maximum packet size")
	// ErrSendTimeout: the socket stayed full for the whole write timeout.
	ErrSendTimeout = errors.New("handoff: socket full: send timed out")
)

// Conn is one end of a handoff connection: a connected unix SOCK_SEQPACKET
// socket carrying one frame per packet.
//
// Send and Poll are for the tick loop: each must be called from one goroutine
// at a time, and neither allocates. Received packets go through a ring of
// RingSlots preallocated buffers, filled from two sides under one mutex: Poll
// itself, when the ring is empty, takes the next packet off the socket with a
// non-blocking recvfrom(MSG_DONTWAIT) — so a frame the peer sent before this
// tick is seen at this tick, whatever the Go scheduler is doing — and a
// reader goroutine owned by the Conn, which drains bursts (a snapshot larger
// than the socket's buffer, ~200 KiB by default) while the tick loop sleeps. Poll decodes the oldest slot into the caller's Frame.
// Close stops the reader.
type Conn struct {
	uc           *net.UnixConn
	writeTimeout atomic.Int64

	// send side (tick loop)
	rc       syscall.RawConn
	rawWrite func(fd uintptr) bool // c.sendPacket, bound once so that Send does not allocate
	rawRecv  func(fd uintptr)      // c.recvDirect, bound once so that Poll does not allocate
	rawWait  func(fd uintptr) bool // c.recvWait, the reader goroutine's
	wbuf     []byte
	wpending []byte
	wwait    bool // rawWrite: on EAGAIN, wait (true) or report it (false)
	werr     error
	wseq     uint32
	sent     atomic.Uint64
	wfail    atomic.Uint64
	corrupt  atomic.Uint32 // debug: flip a byte of the frame with this sequence number

	// receive ring: whoever holds rmu (the reader goroutine, or Poll when
	// the ring is empty) reads a packet into slot head%RingSlots and then
	// advances head; Poll decodes slot tail%RingSlots, and frees it (advances
	// tail) on the next Poll, since the returned Frame aliases it. rmu makes
	// a packet's read and its publication one step, so that the two readers
	// never reorder packets.
	rmu    sync.Mutex
	rn     int           // the last recv's result, under rmu
	rerrno error         // the last recv's error (nil, EAGAIN, …), under rmu
	direct atomic.Uint64 // packets Poll took off the socket itself
	slots  [RingSlots][]byte
	lens   [RingSlots]int
	head   atomic.Uint64
	tail   atomic.Uint64
	held   bool
	space  chan struct{}
	rseq   uint32
	recv   atomic.Uint64
	rerr   error       // set by the reader before rdone
	rdone  atomic.Bool // the reader has stopped
	perr   error       // sticky Poll error

	closeOnce sync.Once
	closed    chan struct{}
	readerWG  sync.WaitGroup
}

func newConn(uc *net.UnixConn) *Conn { return newConnReader(uc, true) }

// newConnReader: without the reader goroutine (tests only), Poll alone reads
// the socket.
func newConnReader(uc *net.UnixConn, startReader bool) *Conn {
	c := &Conn{
		uc:     uc,
		wbuf:   make([]byte, 0, MaxPacket),
		space:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	c.writeTimeout.Store(int64(DefaultWriteTimeout))
	c.rc, _ = uc.SyscallConn() // cannot fail on a *net.UnixConn that is open
	c.rawWrite = c.sendPacket
	c.rawRecv = c.recvDirect
	c.rawWait = c.recvWait
	for i := range c.slots {
		// One byte more than MaxPacket: a packet that fills it was longer
		// than MaxPacket (and truncated by the kernel).
		c.slots[i] = make([]byte, MaxPacket+1)
	}
	if startReader {
		c.readerWG.Add(1)
		go c.reader()
	}
	return c
}

// CorruptFrame is a fault injection for tests and the bench: the frame this
// Conn sends with sequence number seq (counting from 1) goes out with one
// byte flipped, so that the peer's decoder refuses it (a CRC mismatch).
// Zero turns it off. Safe from any goroutine.
func (c *Conn) CorruptFrame(seq uint32) { c.corrupt.Store(seq) }

// Dial connects to the handoff socket at path.
func Dial(path string) (*Conn, error) {
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("handoff: dial %s: %w", path, err)
	}
	return newConn(uc), nil
}

// Pair returns two connected Conns over a socketpair, for tests and for
// running both sides in one process.
func Pair() (*Conn, *Conn, error) { return socketPair(true) }

func socketPair(reader bool) (*Conn, *Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: socketpair: %w", err)
	}
	var ucs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "handoff-pair")
		fc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 1 {
				ucs[0].Close()
			} else {
				unix.Close(fds[1])
			}
			return nil, nil, fmt.Errorf("handoff: socketpair: %w", err)
		}
		ucs[i] = fc.(*net.UnixConn)
	}
	return newConnReader(ucs[0], reader), newConnReader(ucs[1], reader), nil
}

// Listener accepts handoff connections on a unix SOCK_SEQPACKET socket.
type Listener struct {
	ul *net.UnixListener
}

// Listen listens on path. An existing socket file there (left by a dead
// process) is replaced: the run directory has one standby at a time, and the
// agent sees to that. The file is removed again on Close.
func Listen(path string) (*Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ul, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("handoff: listen %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(true)
	return &Listener{ul: ul}, nil
}

// Accept waits for the next connection (or the deadline set with SetDeadline).
func (l *Listener) Accept() (*Conn, error) {
	uc, err := l.ul.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("handoff: accept: %w", err)
	}
	return newConn(uc), nil
}

// SetDeadline bounds Accept.
func (l *Listener) SetDeadline(t time.Time) error { return l.ul.SetDeadline(t) }

// Addr is the socket path.
func (l *Listener) Addr() string { return l.ul.Addr().String() }

// Close stops listening and removes the socket file.
func (l *Listener) Close() error { return l.ul.Close() }

// SetWriteTimeout sets how long Send may block on a full socket (default
// DefaultWriteTimeout). It is safe to call at any time.
func (c *Conn) SetWriteTimeout(d time.Duration) { c.writeTimeout.Store(int64(d)) }

// Send sets f.Seq to the next sequence number, encodes f into the Conn's
// preallocated buffer and writes it as one packet. The first attempt never
// blocks; only when the socket is full does Send wait for room, at most the
// write timeout, and then return ErrSendTimeout. A failed send does not
// consume a sequence number. Send does not allocate on success.
func (c *Conn) Send(f *Frame) error {
	f.Seq = c.wseq + 1
	b := AppendFrame(c.wbuf[:0], f)
	if len(b) > MaxPacket {
		c.wfail.Add(1)
		return fmt.Errorf("handoff: send %v of %d bytes: %w", f.Type, len(b), ErrTooLarge)
	}
	if n := c.corrupt.Load(); n != 0 && n == f.Seq {
		b[len(b)-1] ^= 0x5a // the CRC (or the payload's last byte) no longer matches
	}
	c.wpending, c.wwait, c.werr = b, false, nil
	err := c.rc.Write(c.rawWrite)
	if err == nil && c.werr == unix.EAGAIN {
		// Full: wait for room, with a deadline set only now, so that a
		// preempted tick loop never fails a send that had room.
		c.wwait, c.werr = true, nil
		if d := time.Duration(c.writeTimeout.Load()); d > 0 {
			c.uc.SetWriteDeadline(time.Now().Add(d))
		}
		err = c.rc.Write(c.rawWrite)
		c.uc.SetWriteDeadline(time.Time{})
	}
	if err == nil {
		err = c.werr
	}
	c.wpending = nil
	if err != nil {
		c.wfail.Add(1)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("handoff: send %v: %w", f.Type, ErrSendTimeout)
		}
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN) {
			return fmt.Errorf("handoff: send %v: %w (%v)", f.Type, ErrClosed, err)
		}
		return fmt.Errorf("handoff: send %v: %w", f.Type, err)
	}
	c.wseq++
	c.sent.Add(1)
	return nil
}

// sendPacket is the raw write under c.rc.Write: one non-blocking send of the
// pending packet, without SIGPIPE. It returns false (wait for room) only when
// waiting is asked for.
func (c *Conn) sendPacket(fd uintptr) bool {
	for {
		err := unix.Sendto(int(fd), c.wpending, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, nil)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			c.werr = err
			return !c.wwait
		}
		c.werr = err
		return true
	}
}

// recvPacket is one non-blocking recvfrom(MSG_DONTWAIT) of the next packet into
// slot head%RingSlots, under rmu; on a packet it publishes it (advances head).
// It records the result in c.rn / c.rerrno: n > 0 a packet, 0 the end of the
// connection (a handoff frame is never empty), or an errno (EAGAIN: none).
func (c *Conn) recvPacket(fd uintptr) {
	h := c.head.Load()
	b := c.slots[h%RingSlots]
	for {
		n, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			c.rn, c.rerrno = -1, e
			return
		}
		c.rn, c.rerrno = int(n), nil
		if n > 0 {
			c.lens[h%RingSlots] = int(n)
			c.head.Store(h + 1)
		}
		return
	}
}

// recvDirect is Poll's read (under c.rc.Control, which neither blocks nor
// takes the fd's read lock that the reader goroutine holds while it waits).
func (c *Conn) recvDirect(fd uintptr) { c.recvPacket(fd) }

// recvWait is the reader goroutine's read under c.rc.Read: false (wait until
// the socket is readable) when there is nothing to read.
func (c *Conn) recvWait(fd uintptr) bool {
	c.rmu.Lock()
	if c.head.Load()-c.tail.Load() >= RingSlots {
		c.rmu.Unlock()
		return true // full: back to waiting for room
	}
	c.recvPacket(fd)
	again := c.rerrno == unix.EAGAIN
	if !again && c.rn <= 0 {
		if c.rn == 0 {
			c.rerr = io.EOF
		} else {
			c.rerr = c.rerrno
		}
	}
	c.rmu.Unlock()
	return !again
}

func (c *Conn) reader() {
	defer c.readerWG.Done()
	for {
		if c.head.Load()-c.tail.Load() >= RingSlots {
			select {
			case <-c.space:
				continue
			case <-c.closed:
				c.rerr = net.ErrClosed
				c.rdone.Store(true)
				return
			}
		}
		err := c.rc.Read(c.rawWait)
		if err == nil && c.rerr == nil {
			continue
		}
		if err != nil {
			c.rerr = err
		}
		c.rdone.Store(true)
		return
	}
}

// pollSocket is Poll's own read when the ring is empty: it takes the next
// packet off the socket without blocking. It returns false when there is
// none, or when the reader goroutine holds rmu (it is publishing a packet
// this very moment: the next Poll gets it; the tick loop never waits for a
// goroutine). The end of the connection seen here is made sticky at once,
// since every packet before it has been polled. With wait (a drain, see
// pollWait) it waits for the reader goroutine's publication instead, which
// takes no longer than one non-blocking recvfrom.
func (c *Conn) pollSocket(wait bool) bool {
	if c.rdone.Load() {
		return false
	}
	if wait {
		c.rmu.Lock()
	} else if !c.rmu.TryLock() {
		return false
	}
	defer c.rmu.Unlock()
	if c.tail.Load() != c.head.Load() {
		return true // the reader published one meanwhile
	}
	if err := c.rc.Control(c.rawRecv); err != nil {
		return false // closed locally: the reader reports it
	}
	switch {
	case c.rn > 0:
		c.direct.Add(1)
		return true
	case c.rn == 0:
		c.perr = ErrClosed
	case c.rerrno == unix.ECONNRESET:
		c.perr = ErrClosed
	case c.rerrno != unix.EAGAIN:
		c.perr = fmt.Errorf("handoff: receive: %w (%v)", ErrClosed, c.rerrno)
	}
	return false
}

// Poll decodes the oldest received frame into f and returns true, or returns
// false when none is waiting. It never blocks and does not allocate. The
// slices of f alias a ring buffer that stays valid until the next Poll.
//
// Errors are sticky: a malformed frame (ErrMalformed), a sequence gap or
// repeat (ErrSequence), an oversized packet (ErrTooLarge), or the end of the
// connection (ErrClosed, after every frame received before it) make this and
// every later Poll fail.
func (c *Conn) Poll(f *Frame) (bool, error) { return c.poll(f, false) }

// pollWait is Poll for a drain: false means that no packet the peer sent
// before this call is left, even one the reader goroutine was publishing at
// that instant (Poll would return false for it and leave it to the next
// Poll). It never blocks on the socket.
func (c *Conn) pollWait(f *Frame) (bool, error) { return c.poll(f, true) }

func (c *Conn) poll(f *Frame, wait bool) (bool, error) {
	if c.held {
		c.held = false
		c.tail.Add(1)
		select {
		case c.space <- struct{}{}:
		default:
		}
	}
	if c.perr != nil {
		return false, c.perr
	}
	t := c.tail.Load()
	if t == c.head.Load() && !c.pollSocket(wait) {
		if c.perr != nil {
			return false, c.perr
		}
		if !c.rdone.Load() || t != c.head.Load() {
			return false, nil
		}
		if errors.Is(c.rerr, io.EOF) || errors.Is(c.rerr, syscall.ECONNRESET) {
			c.perr = ErrClosed
		} else {
			c.perr = fmt.Errorf("handoff: receive: %w (%v)", ErrClosed, c.rerr)
		}
		return false, c.perr
	}
	i := t % RingSlots
	c.held = true
	n := c.lens[i]
	if n > MaxPacket {
		c.perr = fmt.Errorf("handoff: received packet over %d bytes: %w", MaxPacket, ErrTooLarge)
		return false, c.perr
	}
	if err := DecodeFrame(c.slots[i][:n], f); err != nil {
		c.perr = err
		return false, err
	}
	if f.Seq != c.rseq+1 {
		c.perr = fmt.Errorf("handoff: %v with sequence %d after %d: %w", f.Type, f.Seq, c.rseq, ErrSequence)
		return false, c.perr
	}
	c.rseq = f.Seq
	c.recv.Add(1)
	return true, nil
}

// ConnStats are a Conn's counters.
type ConnStats struct {
	Sent       uint64 // frames sent
	SendFailed uint64 // sends that failed
	Arrived    uint64 // packets taken off the socket (by the reader or by Poll)
	Direct     uint64 // of which Poll took off the socket itself
	Received   uint64 // frames Poll decoded
}

// Stats returns the counters; it is safe from any goroutine.
func (c *Conn) Stats() ConnStats {
	return ConnStats{Sent: c.sent.Load(), SendFailed: c.wfail.Load(), Arrived: c.head.Load(), Direct: c.direct.Load(), Received: c.recv.Load()}
}

// Close closes the socket and stops the reader goroutine; it does not wait
// for it (see Wait). Closing twice is harmless.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		err = c.uc.Close()
	})
	return err
}

// Wait waits for the reader goroutine to stop after Close.
func (c *Conn) Wait() { c.readerWG.Wait() }
