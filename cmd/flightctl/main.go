// Command flightctl is the flight controller: it flies the drone on the I2C
// bus (or the bench's socket bus), serves its control socket and takes part
// in in-air handoffs. See docs/flightctl.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/inflight-ota/inflight/flightctl"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	var o flightctl.Options
	var level slog.Level
	role := flag.String("role", env("INFLIGHT_ROLE", "cold"), "cold (on the ground: initialise the chips, take the PWM authority), active or standby (env INFLIGHT_ROLE)")
	flag.StringVar(&o.Bus, "bus", "1", `I2C bus: "1" or /dev/i2c-1 on a Pi, unix:///path/bus.sock for the bench drone`)
	flag.StringVar(&o.RunDir, "run-dir", env("INFLIGHT_RUN_DIR", "/run/inflight"), "directory of the PWM lock, the control and handoff sockets (env INFLIGHT_RUN_DIR)")
	flag.Float64Var(&o.RateHz, "rate", 400, "control rate, Hz (250..2000)")
	flag.StringVar(&o.Mission, "mission", "", `mission to fly at once, e.g. "takeoff:2m,hover:30s,land", or @file`)
	flag.BoolVar(&o.RT, "rt", false, "ask for SCHED_FIFO and locked memory (runs on without them)")
	flag.StringVar(&o.Name, "name", os.Getenv("INFLIGHT_NAME"), "controller name: control.<name>.sock, handoff.<name>.sock, the bus client name (env INFLIGHT_NAME); default flightctl-<pid> with control.sock")
	flag.DurationVar(&o.Spin, "spin", 0, "busy-wait this long before each tick deadline (0: none)")
	flag.BoolVar(&o.GoSleep, "go-sleep", false, "sleep with Go timers instead of clock_nanosleep (for comparison)")
	flag.StringVar(&o.Version, "version-label", "", "program version shown in status and the handoff HELLO (default: the build's version)")
	schema := flightctl.SchemaVersion
	if v, err := strconv.Atoi(os.Getenv("INFLIGHT_STATE_SCHEMA")); err == nil {
		schema = v // the image's default (images/build --env), so that v1 and v2 take the same arguments
	}
	flag.IntVar(&o.StateSchema, "state-schema", schema, "state schema run natively: 1 (Euler attitude) or 2 (quaternion attitude, camera stream); others are only declared (test of refusal) (env INFLIGHT_STATE_SCHEMA)")
	flag.Float64Var(&o.CameraFPS, "camera-fps", 30, "simulated camera frame rate in schema 2 (negative: off)")
	flag.DurationVar(&o.Handoff.Probation, "handoff-probation", 0, "default probation when handoff_start gives none (default 5s)")
	flag.DurationVar(&o.Handoff.Shadow, "handoff-shadow", 0, "v1: how long v2 may take to become ready in shadow (default 10s)")
	flag.DurationVar(&o.Handoff.Ack, "handoff-ack", 0, "v1: how long to wait for SWITCH_ACK before retaking the authority (default 10ms)")
	flag.IntVar(&o.Handoff.Warmup, "handoff-warmup", 0, "v2: shadow ticks within tolerance before ready (default 40)")
	flag.Float64Var(&o.Handoff.Tolerance, "handoff-tolerance-us", 0, "v2: shadow divergence tolerance, µs of ESC pulse (default 1)")
	flag.Float64Var(&o.GainScale, "gain-scale", 0, "debug: multiply every control gain (a v2 that diverges in shadow)")
	flag.StringVar(&o.Handoff.DieIn, "debug-die-in", "", "debug: SIGKILL itself in this handoff phase, e.g. shadow or probation:200 (ticks into it); as PID 1, exit 137 at once")
	flag.StringVar(&o.Handoff.StallIn, "debug-stall-in", "", "debug: SIGSTOP itself in this handoff phase, e.g. active:400; as PID 1, freeze the tick thread and the control socket")
	var corrupt uint
	flag.UintVar(&corrupt, "debug-corrupt-frame", 0, "debug: send the handoff frame with this sequence number corrupted")
	flag.TextVar(&level, "log-level", slog.LevelInfo, "debug, info, warn or error")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: flightctl [flags]\n\nFlies the drone: arms, takes off, hovers and lands on --mission or on commands\nfrom its control socket (docs/flightctl.md); hands the flight over to a standby\nin the air (docs/handoff.md). SIGINT/SIGTERM: on the ground, disarm and exit;\nin the air with the PWM authority, land first.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	r, err := flightctl.ParseRole(*role)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flightctl:", err)
		os.Exit(2)
	}
	o.Role = r
	o.Handoff.CorruptFrame = uint32(corrupt)
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := flightctl.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "flightctl:", err)
		os.Exit(1)
	}
}
