// Command benchsim is the bench drone: a simulated quadcopter whose chips
// answer at register level over a unix socket bus, and tools for its flight
// traces. See 'benchsim --help' and docs/bench.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/inflight-ota/inflight/sim/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, &cli.Env{Stdout: os.Stdout, Stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}
