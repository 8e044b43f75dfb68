package runtimetest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/imagebuild"
	"github.com/inflight-ota/inflight/internal/testsvc"
)

// Benchmark measures a runtime: Load of a docker-archive, Pull by digest from
// an in-process registry, Start to the controller's first output line, and
// a graceful Stop. Each iteration uses a new image (a distinct label), so
// nothing is cached by the engine except identical layers.
func Benchmark(b *testing.B, h Harness) {
	rt := h.New(b)
	run := h.Run
	if run == "" {
		run = NewRunID()
	}
	b.Cleanup(func() { Cleanup(b, rt, run) })
	bin := BuildCtlProg(b, b.TempDir())
	st, _ := os.Stat(bin)
	b.Logf("runtime %s, image of a %.1f MiB static binary", rt.Name(), float64(st.Size())/(1<<20))
	n := 0
	config := func() imagebuild.Config {
		n++
		return imagebuild.Config{Binary: bin, Labels: withLabels(Labels(run, "1.0.0"), "n", fmt.Sprint(n))}
	}
	ctx := context.Background()

	b.Run("Load", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			_, tar := Tarball(b, config(), fmt.Sprintf("inflight-bench/ctl-%s:%d", run, n))
			b.SetBytes(int64(len(tar)))
			b.StartTimer()
			if _, err := rt.Load(ctx, bytes.NewReader(tar), nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("PullByDigest", func(b *testing.B) {
		reg := testsvc.Registry(b)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			img, err := imagebuild.Build(config())
			if err != nil {
				b.Fatal(err)
			}
			ref, err := imagebuild.Push(ctx, img, fmt.Sprintf("%s/inflight-bench/ctl-%s:%d", reg, run, n))
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := rt.Pull(ctx, ref, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	_, tar := Tarball(b, config(), "inflight-bench/ctl-"+run+":run")
	img, err := rt.Load(ctx, bytes.NewReader(tar), nil)
	if err != nil {
		b.Fatal(err)
	}
	runDir := b.TempDir()
	os.Chmod(runDir, 0o777)
	spec := func(i int) runtime.Spec {
		return runtime.Spec{Name: fmt.Sprintf("inflight-bench-%s-%d", run, i), Image: img.ID, Role: runtime.RoleStandby,
			Args: []string{"-name", "x"}, RunDir: runDir, Labels: map[string]string{LabelTestRun: run}}
	}
	b.Run("StartToFirstOutput", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c, err := rt.Start(ctx, spec(i))
			if err != nil {
				b.Fatal(err)
			}
			waitFirstLine(b, rt, c.ID)
			b.StopTimer()
			if err := rt.Remove(ctx, c.ID); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("Stop", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			c, err := rt.Start(ctx, spec(i))
			if err != nil {
				b.Fatal(err)
			}
			waitFirstLine(b, rt, c.ID)
			b.StartTimer()
			if err := rt.Stop(ctx, c.ID, 5*time.Second); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := rt.Remove(ctx, c.ID); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

// waitFirstLine follows the log until the controller's first line.
func waitFirstLine(b testing.TB, rt runtime.Runtime, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := rt.Logs(ctx, id, runtime.LogOptions{Follow: true})
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			return
		}
	}
	b.Fatalf("no output from %s: %v", id, sc.Err())
}
