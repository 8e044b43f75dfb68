// Package mqttapi is the MQTT wire format of inflight: the topic layout, the
// signed envelope, and every payload the drone agent and the ground station
// exchange (update manifests, rollback and cancel requests, reported state,
// events, telemetry, status and the chunked image transfer). Both the agent
// and groundctl import it; neither imports the other. docs/mqtt.md is its
// written specification, with an example of every payload.
//
// Every payload is JSON carrying "v": 1. Manifests and requests travel inside
// an Envelope whose signature covers the exact payload bytes, never a
// re-serialisation; Verify and VerifyRequest check it against a Keyring of
// trusted ed25519 keys and reject anything unsigned, badly signed, signed by
// an unknown key, replayed, expired, meant for another drone, oversized or
// unparsable, each with its own sentinel error (see Reason for the short
// code an agent reports in its rejection event).
//
// This package must never import an MQTT client, the agent or the ground
// station: it only defines bytes and checks them. The paho helpers live in
// the subpackage mqttc. Decoders bound their input size before parsing and
// are fuzzed.
package mqttapi
