// Package simbus is the wire format of the bench drone's socket bus, and its
// client: an i2c.BusCloser that carries each I2C transaction to the simulator
// over a unix SOCK_SEQPACKET socket, one packet per message.
//
// The simulator (package sim) speaks the same format as the server side; both
// import this package, so the format has exactly one definition. The format is
// documented in docs/bench.md ("Socket bus wire format").
//
// This package must never interpret register contents: it moves bytes, as a
// real bus does.
package simbus
