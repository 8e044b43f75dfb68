// Package ctlsock is the agent's client for a flight controller's control
// socket: a unix stream socket in the shared run directory carrying one JSON
// request per line and one JSON response per line, each with "v": 1. It is
// the only way the agent sees a controller's flight (status: mode, attitude,
// altitude, motors, tick figures, role, authority) and drives a handoff
// (handoff_start, handoff_progress, handoff_abort).
//
// docs/flightctl.md specifies the socket and its flight commands;
// docs/agent.md ("What the agent expects of a controller") specifies the
// socket name per controller and the handoff commands, whose request and
// response shapes are the types of this package.
//
// Every call is bounded by a timeout. This package must never import the
// controller or the handoff package: it speaks only the JSON on the socket.
package ctlsock
