package process_test

import (
	"testing"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/process"
	"github.com/inflight-ota/inflight/agent/runtime/runtimetest"
)

func TestConformance(t *testing.T) {
	dir := t.TempDir()
	runtimetest.Run(t, runtimetest.Harness{
		New: func(t testing.TB) runtime.Runtime {
			r, err := process.New(process.Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			return r
		},
	})
}
