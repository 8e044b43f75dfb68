// Package transfer moves an image archive from the ground to a drone in
// chunks over MQTT, resumably: the Sender (groundctl push --via mqtt) cuts
// the archive into the chunks of an mqttapi.Plan and publishes only those the
// drone's retained "have" report does not list; the Receiver (the agent)
// checks each chunk's sha256, writes it into a spool directory, persists
// which chunks it holds so that a restart of either side resumes where it
// stopped, checks the whole archive against the signed digest, and reports
// what it holds.
//
// The wire format is package mqttapi (ChunkHeader, Chunk, Have); the
// connection is anything with the Publish/Subscribe of mqttapi/mqttc. It
// must never import the agent or the ground station, which both import it,
// and it must never report a chunk as held before it is on disk.
package transfer
