// Package pwmlock is the PWM authority: the one kernel lock whose holder may
// write motor pulses. At any instant at most one controller holds it.
//
// The lock is flock(LOCK_EX|LOCK_NB) on <runDir>/pwm.lock (runDir is
// /run/inflight, bind-mounted into both controller containers; flock excludes
// across containers sharing the file). The kernel drops a flock when the last
// descriptor of its open file description closes, so a holder that crashes,
// is SIGKILLed or has its container stopped loses the authority at once,
// without any cooperation. flock is per open file description: two Locks in
// one process exclude each other just as two processes do.
//
// # Seize: fencing a stalled holder
//
// flock cannot be broken: a holder that is alive but stalled (stopped,
// starved, stuck in a syscall) keeps it. The handoff's rollback must still be
// able to take the authority back, so Seize fences instead: it creates a fresh
// file beside pwm.lock, flocks it, and renames it over pwm.lock. From then on
// the path names the seizer's inode. Held is true only while the Lock holds
// flock on its descriptor AND that descriptor's inode is still the inode at
// the path (fstat against stat), so the stalled holder, when it wakes, finds
// Held()==false and its PWM write path refuses. TryAcquire re-checks the path
// after its flock and retries, so nobody ever "acquires" the orphaned inode.
//
// # The residual window, honestly
//
// Held and the I2C write that follows it are two steps. A holder that checks
// Held, is then stalled, and resumes after a Seize still completes the one
// write it had already decided on: one stale burst of pulse widths can reach
// the PCA9685 after the seizer's. It cannot write a second one (its next Held
// is false), and the seizer's next tick overwrites it; the chip latches new
// widths at the next PWM period (~2.5 ms at 400 Hz), so the stale pulses last
// at most until the seizer's next write. No lock can close this window
// without the chip's help; a crash (the common failure) has no window at all
// because the kernel drops the flock with the process.
//
// Held costs two system calls (fstat and fstatat) and allocates nothing on
// linux/amd64, arm64, riscv64, arm and 386, so it can be called every control
// tick. On other platforms it falls back to unix.Stat, which allocates.
//
// This package must never write to hardware and never decide who should hold
// the authority; that is the handoff protocol's job.
package pwmlock
