// Package keys manages the ground station's ed25519 signing keys: it
// generates a key pair for "groundctl keygen", writes the private key as
// PEM PKCS#8 (mode 0600, never overwritten unless asked) and the public key
// as PEM PKIX, loads them back, and signs manifests and requests into the
// envelope of package mqttapi.
//
// The public key file is what a drone trusts: copy it into the agent's
// trusted-keys directory (mqttapi.LoadKeyring reads *.pub files). A private
// key file readable by group or others is refused, as ssh does.
package keys
