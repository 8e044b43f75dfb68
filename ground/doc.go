// Package ground is the ground-station library behind groundctl: it signs
// and publishes update manifests, watches their progress, shows the fleet's
// status, requests rollbacks, manages the signing keys (package
// ground/keys) and embeds an MQTT broker for the bench.
//
// It speaks to drones only through the wire format of package mqttapi and
// must never import the agent: the ground and the drone share bytes, not
// code paths. It never holds a drone's secrets, and its private signing key
// never leaves the ground station.
package ground
