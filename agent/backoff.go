package agent

import "time"

// backoff gives the delays between retries: min, doubling, capped at max.
type backoff struct {
	min, max time.Duration
	cur      time.Duration // the last delay given; 0 before the first
}

// peek returns the delay next would give.
func (b *backoff) peek() time.Duration {
	if b.cur == 0 {
		return b.min
	}
	return min(2*b.cur, b.max)
}

// next returns the next delay and moves on.
func (b *backoff) next() time.Duration {
	b.cur = b.peek()
	return b.cur
}

// reset starts again from min.
func (b *backoff) reset() { b.cur = 0 }
