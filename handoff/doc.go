// Package handoff moves a running flight controller's state to a new
// controller in the air, switches the PWM authority to it on a tick boundary,
// keeps the old one as a hot standby for a probation window and rolls back to
// it when the new one fails.
//
// It has four parts:
//
//   - the frame format (AppendFrame, DecodeFrame): a versioned, checksummed,
//     sequenced protocol, one frame per SOCK_SEQPACKET packet, documented in
//     docs/handoff.md;
//   - the transport (Listen, Dial, Pair, Conn): allocation-free sends with a
//     short write deadline and a reader goroutine that fills a fixed ring of
//     preallocated packet buffers the tick loop drains with Conn.Poll;
//   - the migration registry (Registry): chains of functions between state
//     schema versions, registered by the controller that owns the schemas;
//   - the protocol state machines (Outgoing for the active controller, v1;
//     Incoming for the standby, v2), driven by the controller's tick loop:
//     no goroutine owns their state, each tick calls Tick (and Wrote after a
//     PWM write) once, and neither call blocks or allocates.
//
// handoff is generic: it never interprets the state, the per-tick inputs or
// the outputs it carries, and it never touches hardware. The controller
// supplies the snapshot, the control step, the divergence measure, the flight
// phase and envelope predicates, and the PWM Authority as callbacks. The
// controller imports handoff; handoff must never import the controller.
//
// What it must never do: let two controllers hold the PWM authority at once
// (v2 takes it only after a SWITCH frame, v1 only releases it after writing
// the tick before the switch and retakes it only after telling v2 to stop),
// block the tick loop (every wait is counted in ticks and bounded), or end a
// flight because of a handoff failure (a bad frame, a full socket, a dead or
// hung peer end the handoff, and the side holding the authority flies on).
package handoff
