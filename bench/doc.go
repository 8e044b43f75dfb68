// Package bench flies closed-loop flights on the bench: the simulated drone
// (package sim) on a socket bus in a temporary run directory, and flightctl
// as a separate process against it, and computes the flight's figures from
// the drone's trace and the controller's own tick statistics.
//
// It must never reach into the controller's internals: it sees flightctl only
// as a process, its control socket and the PWM writes on the bus.
package bench
