// Command build makes the flightctl container image for one or more
// platforms without `docker build` (which needs BuildKit pieces that may be
// absent), through agent/runtime/imagebuild. The image is the one
// images/flightctl/Dockerfile describes: FROM scratch, /flightctl as the
// entrypoint with --run-dir /run/inflight, user 65534, and the inflight labels.
//
//	go run ./images/build --version 1.0.0 --platform linux/arm/v6 --out bin/images/flightctl-1.0.0-{arch}.tar
//	go run ./images/build --version 2.0.0 --load                      # into the local Docker Engine
//	go run ./images/build --version 2.0.0 --platform all --push 127.0.0.1:5000/flightctl:2.0.0
//
// By default it compiles ./cmd/flightctl for each platform with the version
// stamped in; --bin-dir takes the binaries `make cross` left instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "images/build:", err)
		os.Exit(1)
	}
}
