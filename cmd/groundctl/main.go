// Command groundctl is the inflight ground station: it signs and pushes
// in-air updates to drones over MQTT, watches them, shows the fleet, asks
// for rollbacks and runs an embedded broker. See docs/groundctl.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/inflight-ota/inflight/ground/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
