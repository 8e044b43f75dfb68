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

// BenchmarkProcess gives the process runtime's figures:
//
//	go test -run '^$' -bench Process -benchtime 20x ./agent/runtime/process
func BenchmarkProcess(b *testing.B) {
	dir := b.TempDir()
	runtimetest.Benchmark(b, runtimetest.Harness{
		New: func(t testing.TB) runtime.Runtime {
			r, err := process.New(process.Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			return r
		},
	})
}
