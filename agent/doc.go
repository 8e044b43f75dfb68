// Package agent is the on-device update agent: it reconciles the signed
// desired state it hears over MQTT against what the drone runs, and applies
// an update as a journaled state machine — verify, fetch the image by
// digest, check its platform and handoff label, start v2 as a standby beside
// v1, drive the handoff through v1's control socket when the flight policy
// allows it (or swap plainly when disarmed on the ground), watch probation,
// then commit, roll back or abort. It relays the active controller's
// telemetry, reports its state retained, and on start-up adopts the
// controllers it finds and finishes or undoes what its journal says was in
// progress. docs/agent.md documents the configuration, the phases and their
// timeouts, the journal and the recovery rules.
//
// What it must never do: run anything unsigned, replayed, expired, meant for
// another drone or of the wrong platform; stop v1 while it is flying before a
// handoff finished; touch hardware (it sees controllers only through their
// control socket and the container runtime); or wait on anything without a
// timeout.
package agent
