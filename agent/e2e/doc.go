// Package e2e holds the end-to-end tests of the in-air update against the
// real components: mosquitto, the Docker Engine, an in-process OCI registry
// on 127.0.0.1, the bench drone, flightctl images built FROM scratch, and
// inflight-agent run as a separate process. It has no code of its own.
//
// The tests talk only to 127.0.0.1 and to containers with no network over
// unix sockets in a run directory they make; they remove exactly the
// containers, images and processes they started. Without Docker or
// mosquitto they skip with one line, or fail when
// INFLIGHT_REQUIRE_SERVICES=1.
package e2e
