// Command inflight-agent is the on-device update agent: it hears signed
// updates over MQTT and applies them to the flight controller in the air.
// See docs/agent.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/inflight-ota/inflight/agent"
)

func main() {
	cfg, err := agent.ConfigFromArgs(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "inflight-agent:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Main(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "inflight-agent:", err)
		os.Exit(1)
	}
}
