// Package sim is the bench drone: it ties the quadcopter physics
// (sim/physics) to the three emulated chips (sim/chips) on one I2C bus,
// steps them in real time on a monotonic clock, and serves the bus to any
// number of clients over a unix SOCK_SEQPACKET socket in the wire format of
// hw/simbus.
//
// It watches for what must never happen and counts it: two clients writing
// PWM interleaved (two_writers), a chip re-initialised while the motors spin
// (reinit), and a crash. It records every PWM write's writer and time, the
// gaps between writes and the handover gaps, and writes a flight trace
// (sim/trace).
//
// The simulator never interprets what a client means: it sees only register
// reads and writes, as the real chips would. It never blocks its physics on a
// client or on the trace file.
package sim
