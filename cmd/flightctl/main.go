// Command flightctl is the flight controller: it flies the drone on the I2C
// bus (or the bench's socket bus) and serves <run-dir>/control.sock. See
// docs/flightctl.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/inflight-ota/inflight/flightctl"
)

func main() {
	var o flightctl.Options
	var level slog.Level
	role := flag.String("role", "cold", "cold (on the ground: initialise the chips, take the PWM authority), active or standby")
	flag.StringVar(&o.Bus, "bus", "1", `I2C bus: "1" or /dev/i2c-1 on a Pi, unix:///path/bus.sock for the bench drone`)
	flag.StringVar(&o.RunDir, "run-dir", "/run/inflight", "directory of the PWM lock and the control socket")
	flag.Float64Var(&o.RateHz, "rate", 400, "control rate, Hz (250..2000)")
	flag.StringVar(&o.Mission, "mission", "", `mission to fly at once, e.g. "takeoff:2m,hover:30s,land", or @file`)
	flag.BoolVar(&o.RT, "rt", false, "ask for SCHED_FIFO and locked memory (runs on without them)")
	flag.StringVar(&o.Name, "name", "", "name shown to the bus (the bench trace says which controller wrote PWM); default flightctl-<pid>")
	flag.DurationVar(&o.Spin, "spin", 0, "busy-wait this long before each tick deadline (0: none)")
	flag.BoolVar(&o.GoSleep, "go-sleep", false, "sleep with Go timers instead of clock_nanosleep (for comparison)")
	flag.TextVar(&level, "log-level", slog.LevelInfo, "debug, info, warn or error")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: flightctl [flags]\n\nFlies the drone: arms, takes off, hovers and lands on --mission or on commands\nfrom <run-dir>/control.sock (docs/flightctl.md). SIGINT/SIGTERM: on the ground,\ndisarm and exit; in the air, land first.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	r, err := flightctl.ParseRole(*role)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flightctl:", err)
		os.Exit(2)
	}
	o.Role = r
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := flightctl.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "flightctl:", err)
		os.Exit(1)
	}
}
