package pwmlock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// FileName is the lock file's name inside the run directory.
const FileName = "pwm.lock"

// PollInterval is how often Acquire retries while another holder has the lock.
const PollInterval = 200 * time.Microsecond

// ErrUnstable is returned when the lock file is replaced again and again while
// TryAcquire tries to lock it (Seizes racing each other).
var ErrUnstable = errors.New("pwmlock: lock file keeps being replaced")

// Lock is one claimant of the PWM authority. Its methods are safe for
// concurrent use; Held is cheap enough for every control tick.
type Lock struct {
	dir   string
	path  string
	pathz []byte // path, NUL-terminated, for the allocation-free stat

	mu  sync.Mutex
	fd  int // -1 unless we hold flock on it
	fst unix.Stat_t
	pst unix.Stat_t
}

var seizeSeq atomic.Uint64

// New returns a Lock on <runDir>/pwm.lock. It opens nothing yet.
func New(runDir string) *Lock {
	p := filepath.Join(runDir, FileName)
	return &Lock{dir: runDir, path: p, pathz: append([]byte(p), 0), fd: -1}
}

// Path is the lock file's path.
func (l *Lock) Path() string { return l.path }

// Held reports whether this Lock holds the authority now: it holds flock on
// its descriptor and that descriptor's inode is still the one at the path (a
// Seize by someone else makes it false). It allocates nothing.
func (l *Lock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heldLocked()
}

func (l *Lock) heldLocked() bool {
	if l.fd < 0 {
		return false
	}
	if unix.Fstat(l.fd, &l.fst) != nil {
		return false
	}
	if statz(l.pathz, &l.pst) != nil {
		return false
	}
	return l.fst.Dev == l.pst.Dev && l.fst.Ino == l.pst.Ino
}

// TryAcquire takes the authority if nobody holds it, without waiting. It
// returns true if this Lock holds it afterwards (also if it already did).
func (l *Lock) TryAcquire() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.heldLocked() {
		return true, nil
	}
	l.closeLocked() // a descriptor we were fenced from, if any
	for range 16 {
		fd, err := unix.Open(l.path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return false, fmt.Errorf("pwmlock: open %s: %w", l.path, err)
		}
		if err := flockNB(fd); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EWOULDBLOCK) {
				return false, nil
			}
			return false, fmt.Errorf("pwmlock: flock %s: %w", l.path, err)
		}
		l.fd = fd
		if l.heldLocked() {
			return true, nil
		}
		// The file was replaced (Seize) or removed between our open and our
		// flock: we locked an orphan. Drop it and lock what is there now.
		l.closeLocked()
	}
	return false, fmt.Errorf("pwmlock: %s: %w", l.path, ErrUnstable)
}

// Acquire waits until it holds the authority, polling every PollInterval, or
// until ctx is done.
func (l *Lock) Acquire(ctx context.Context) error {
	t := time.NewTimer(PollInterval)
	defer t.Stop()
	for {
		ok, err := l.TryAcquire()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		t.Reset(PollInterval)
		select {
		case <-ctx.Done():
			return fmt.Errorf("pwmlock: acquire %s: %w", l.path, ctx.Err())
		case <-t.C:
		}
	}
}

// Release gives the authority up. Releasing a Lock that does not hold it (or
// was fenced by a Seize) only closes its descriptor.
func (l *Lock) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closeLocked()
}

func (l *Lock) closeLocked() error {
	if l.fd < 0 {
		return nil
	}
	// Unlock explicitly: a descriptor duplicated into a child (fork without
	// exec) would otherwise keep the flock alive after our close.
	errU := unix.Flock(l.fd, unix.LOCK_UN)
	errC := unix.Close(l.fd)
	l.fd = -1
	if err := errors.Join(errU, errC); err != nil {
		return fmt.Errorf("pwmlock: release %s: %w", l.path, err)
	}
	return nil
}

// Seize takes the authority even from a holder that is alive but stalled: it
// flocks a fresh file and renames it over pwm.lock, fencing the old holder
// (whose Held turns false). Use it only where the protocol has decided the
// old holder must lose the authority (in-air rollback). See the package doc
// for the window this leaves.
func (l *Lock) Seize() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.heldLocked() {
		return nil
	}
	l.closeLocked()
	tmp := filepath.Join(l.dir, "."+FileName+".seize."+strconv.Itoa(os.Getpid())+"."+strconv.FormatUint(seizeSeq.Add(1), 10))
	fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("pwmlock: seize: create %s: %w", tmp, err)
	}
	if err := flockNB(fd); err != nil {
		unix.Close(fd)
		unix.Unlink(tmp)
		return fmt.Errorf("pwmlock: seize: flock %s: %w", tmp, err)
	}
	if err := unix.Rename(tmp, l.path); err != nil {
		unix.Close(fd)
		unix.Unlink(tmp)
		return fmt.Errorf("pwmlock: seize: rename %s over %s: %w", tmp, l.path, err)
	}
	l.fd = fd
	if !l.heldLocked() {
		// Someone else seized between our rename and our check.
		l.closeLocked()
		return fmt.Errorf("pwmlock: seize %s: %w", l.path, ErrUnstable)
	}
	return nil
}

func flockNB(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			return err
		}
	}
}
