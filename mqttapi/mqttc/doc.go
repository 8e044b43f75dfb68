// Package mqttc wraps the paho MQTT client with what both the drone agent
// and groundctl need: connect options with defaults filled in one place,
// TLS with client certificates from files, a last will, automatic
// reconnection that re-subscribes by itself, and publish and subscribe
// calls bounded by a context.
//
// It knows topics and payloads only as strings and bytes; the wire format
// is package mqttapi. It must never log secrets (passwords, key material).
package mqttc
