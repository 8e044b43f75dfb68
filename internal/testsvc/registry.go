package testsvc

import (
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Registry starts an in-process OCI registry on 127.0.0.1 for the test and
// returns its host:port. Docker accepts plain HTTP from loopback registries,
// and go-containerregistry uses plain HTTP for them by itself.
func Registry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}
