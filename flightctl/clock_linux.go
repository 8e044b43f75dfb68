package flightctl

import (
	"time"

	"golang.org/x/sys/unix"
)

// NanoClock is CLOCK_MONOTONIC with an absolute clock_nanosleep: the tick
// goroutine, locked to its OS thread, blocks in the kernel until the
// deadline and wakes on a high-resolution timer, instead of waiting for the
// Go scheduler's timers. A short Spin before the deadline is optional.
type NanoClock struct {
	Spin time.Duration
}

// Now implements Clock.
func (c *NanoClock) Now() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// SleepUntil implements Clock.
func (c *NanoClock) SleepUntil(t time.Duration) {
	if wake := t - c.Spin; wake > c.Now() {
		ts := unix.NsecToTimespec(int64(wake))
		for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil) == unix.EINTR {
		}
	}
	for c.Now() < t {
	}
}
