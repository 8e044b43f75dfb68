// Package demo is the README's main command (make demo, benchsim demo): one
// in-air update of the bench drone, end to end, on one machine. It builds the
// v1 and v2 flightctl images (images/build), starts the embedded MQTT broker,
// an in-process registry on 127.0.0.1 (or sends the image over MQTT), the
// bench drone, and the update agent with v1; takes off, pushes v2 signed with
// groundctl and shows its progress, lets the agent hand over in the air and
// commit, lands, and sums the flight up: versions, time per phase, the
// control gap at the PWM chip, the deviations against the hover baseline,
// what v2 visibly changed, and a plot with the update window shaded.
//
// It drives the real pieces only through their public faces: the agent
// through MQTT and its runtime, the controllers through their control
// sockets, the drone through its trace and summary. It must never leave
// anything behind: every container, image, process, socket and temporary
// directory it made is removed when it ends, fails or is interrupted, and it
// talks only to 127.0.0.1, unix sockets and containers without a network.
package demo
