// Package testsvc finds or starts the real services tests need — a Docker
// Engine, a mosquitto broker, an OCI registry — on this machine, on
// 127.0.0.1 only. Where a service cannot be had, the test is skipped with one
// clear line, or fails instead when INFLIGHT_REQUIRE_SERVICES=1 (CI sets it).
//
// It never stops, prunes or reconfigures a service it did not start, and it
// never listens on anything but loopback.
package testsvc

import (
	"fmt"
	"os"
	"testing"
)

// EnvRequire names the variable that turns skips into failures.
const EnvRequire = "INFLIGHT_REQUIRE_SERVICES"

// Required reports whether missing services fail tests instead of skipping them.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Unavailable ends the test because a service is missing: t.Skip with one
// line, or t.Fatal when INFLIGHT_REQUIRE_SERVICES=1.
func Unavailable(t testing.TB, format string, a ...any) {
	t.Helper()
	msg := "testsvc: " + fmt.Sprintf(format, a...)
	if Required() {
		t.Fatalf("%s (%s=1)", msg, EnvRequire)
	}
	t.Skipf("%s; skipping (set %s=1 to fail instead)", msg, EnvRequire)
}

// Main runs the tests and then stops what this package started for the whole
// test binary (a dockerd, when no other test binary still uses it). Call it
// from TestMain:
//
//	func TestMain(m *testing.M) { testsvc.Main(m) }
//
// Without it a dockerd started by Docker is left running for later runs.
// The cleanups run after the tests, before the daemon is released (e.g. to
// remove files the whole binary shared).
func Main(m *testing.M, cleanups ...func()) {
	code := m.Run()
	for _, c := range cleanups {
		c()
	}
	if err := stopDocker(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}
