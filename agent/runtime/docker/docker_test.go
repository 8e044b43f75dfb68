package docker_test

import (
	"context"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/docker"
	"github.com/inflight-ota/inflight/agent/runtime/runtimetest"
	"github.com/inflight-ota/inflight/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

func harness(t testing.TB, run string) runtimetest.Harness {
	return runtimetest.Harness{
		Isolated: true,
		Run:      run,
		New: func(t testing.TB) runtime.Runtime {
			r, err := docker.New(&docker.Options{Client: testsvc.Docker(t)})
			if err != nil {
				t.Fatal(err)
			}
			return r
		},
	}
}

func TestConformance(t *testing.T) {
	cli := testsvc.Docker(t)
	run := runtimetest.NewRunID()
	t.Cleanup(func() { sweep(t, cli, run) })
	runtimetest.Run(t, harness(t, run))
}

// sweep removes, with the bare client, whatever the suite's own cleanup left
// of this run (containers and images labelled LabelTestRun=run) and fails
// the test if there was any: the safety net should Remove or Prune be broken.
func sweep(t testing.TB, cli *client.Client, run string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := filters.NewArgs(filters.Arg("label", runtimetest.LabelTestRun+"="+run))
	cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	imgs, _ := cli.ImageList(ctx, image.ListOptions{Filters: f})
	for _, c := range cs {
		cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		t.Errorf("container %s was left behind", c.Names)
	}
	for _, i := range imgs {
		cli.ImageRemove(ctx, i.ID, image.RemoveOptions{Force: true, PruneChildren: true})
		t.Errorf("image %s was left behind", i.RepoTags)
	}
}

// BenchmarkDocker gives the Docker runtime's figures:
//
//	go test -run '^$' -bench Docker -benchtime 20x ./agent/runtime/docker
func BenchmarkDocker(b *testing.B) {
	cli := testsvc.Docker(b)
	run := runtimetest.NewRunID()
	b.Cleanup(func() { sweep(b, cli, run) })
	runtimetest.Benchmark(b, harness(b, run))
}
