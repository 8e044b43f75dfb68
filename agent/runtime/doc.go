// Package runtime is the agent's view of the controllers it runs: how it
// acquires and checks controller images and how it starts, finds, stops and
// removes controller instances. The interfaces live here; the Docker Engine
// implementation is in runtime/docker and the bench's local-process one in
// runtime/process. One conformance suite (runtime/runtimetest) runs against
// both.
//
// What this package must never do: start a controller from an image whose
// platform or handoff protocol was not checked by the caller (see
// CheckImage), give a controller a network, the Docker socket, the agent's
// own environment (broker credentials) or capabilities it did not ask for,
// or touch containers and images that do not carry the inflight labels.
package runtime
