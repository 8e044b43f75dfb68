package flightctl

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// realtime asks for SCHED_FIFO on the calling thread (the tick loop's, locked
// to it) and locks the process's memory; it logs what it could not get and
// carries on.
func realtime(log *slog.Logger, prio int) {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(prio)}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		log.Warn("real time: SCHED_FIFO refused, running without it", "priority", prio, "err", err)
	} else {
		log.Info("real time: SCHED_FIFO", "priority", prio)
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
		log.Warn("real time: mlockall refused, running without it", "err", err)
	} else {
		log.Info("real time: memory locked")
	}
}
