package mqttapi_test

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
)

// The ground signs a manifest; the drone verifies it, applies it, and
// later sees the same retained message again.
func ExampleVerify() {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	// Ground.
	m := &mqttapi.Manifest{
		Kind: mqttapi.KindUpdate, Drone: "drone-1", Serial: mqttapi.NextSerial(0, now), Version: "2.0.0",
		Image:    mqttapi.Image{Ref: "flightctl@sha256:fb04dcb6970e4c3d1873de51fd5a50d7bb46b3383113602665c350ec40b5f990"},
		IssuedAt: now, ExpiresAt: now.Add(time.Hour),
	}
	payload, _ := m.Marshal()
	env, _ := mqttapi.Sign(priv, payload)
	raw, _ := env.Marshal()
	topics, _ := mqttapi.Topics{}.Drone("drone-1")
	fmt.Println("publish retained to", topics.Desired, "key", env.KeyID)

	// Drone.
	kr := mqttapi.NewKeyring(priv.Public().(ed25519.PublicKey))
	got, err := mqttapi.Verify(raw, kr, now, mqttapi.Expect{Drone: "drone-1"})
	fmt.Println("apply", got.Version, err)
	_, err = mqttapi.Verify(raw, kr, now, mqttapi.Expect{Drone: "drone-1", LastSerial: got.Serial})
	fmt.Println("again:", mqttapi.Reason(err), "no-op:", mqttapi.IsNoop(err))
	_, err = mqttapi.Verify(raw, kr, now, mqttapi.Expect{Drone: "drone-2"})
	fmt.Println("drone-2:", mqttapi.Reason(err))
	// Output:
	// publish retained to inflight/drones/drone-1/desired key 3097e2dee2cb4a34
	// apply 2.0.0 <nil>
	// again: already_applied no-op: true
	// drone-2: wrong_target
}
