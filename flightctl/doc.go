// Package flightctl is the flight controller that runs inside the container
// image: an attitude and altitude estimator, cascaded PID control, a quad-X
// mixer, the flight modes (disarmed, armed, takeoff, hover, land), the
// failsafes, a mission runner, and the real-time tick loop with its control
// socket.
//
// The core is Step(state, params, inputs, outputs): a deterministic, pure,
// allocation-free function. Everything the controller remembers from one tick
// to the next lives in State, a single value with a schema version and a
// fixed binary encoding (AppendState, DecodeState), so that another process
// can take it over in flight and continue on the very next tick. Everything a
// tick consumes from outside — sensor samples, the tick's dt, operator
// commands — is in Inputs, so a standby controller fed the same Inputs
// computes the same Outputs.
//
// The loop around Step (Loop, Run) reads the sensors through an InputSource,
// writes the motors through an OutputSink, and shows every tick to an optional
// TickObserver; the handoff plugs its standby role and its per-tick stream in
// there.
//
// This package must never: keep flight-relevant state outside State, allocate
// or log inside Step or the tick loop body, write the PWM chip without holding
// the PWM authority, or re-initialise a chip outside the cold (on the ground)
// role.
package flightctl
