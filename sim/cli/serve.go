package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/chips"
)

func init() {
	Register(&Command{Name: "serve", Summary: "fly the simulated drone and serve its I2C bus on a unix socket", Run: serve})
}

const serveAbout = `
Runs the drone's physics in real time (1 kHz) and serves its I2C bus — the
MPU-6050 at 0x68, the BMP280 at 0x76 and the PCA9685 at 0x40 — to any number
of clients on a unix SOCK_SEQPACKET socket (mode 0666, so it works bind-mounted
into a container). Open it with hw.OpenBus("unix:///PATH") or simbus.Dial.
The drone starts resting on the ground with its chips as at power-up.

Stops on SIGINT/SIGTERM or after --duration, then prints one JSON line:
{"crashed":…,"two_writer_events":…,"reinit_events":…,"max_pwm_gap_ms":…,"clients":…,…}

Example:
  benchsim serve --bus unix:///run/inflight/simbus.sock --trace flight.jsonl --gusts`

func serve(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "serve", "--bus unix:///PATH [flags]", serveAbout)
	bus := fs.String("bus", "", "where to serve the bus: unix:///path/to/socket (required)")
	tracePath := fs.String("trace", "", "write the flight trace (JSON Lines, docs/bench.md) to this file")
	gusts := fs.Bool("gusts", false, "enable the seeded wind-gust model")
	seed := fs.Uint64("seed", 1, "seed for gusts and sensor noise")
	noise := fs.String("noise", "default", "sensor noise and bias: default or none")
	duration := fs.Duration("duration", 0, "stop after this long (0: run until interrupted)")
	rate := fs.Float64("rate", 1000, "physics steps per second")
	sampleHz := fs.Float64("sample-hz", 200, "trace samples per second (at least 100)")
	verbose := fs.Bool("v", false, "log clients and events to stderr")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.Stderr, "benchsim serve: unexpected argument %q\n", pos[0])
		return ErrUsage
	}
	path, ok := strings.CutPrefix(*bus, "unix://")
	if !ok || path == "" {
		fmt.Fprintf(env.Stderr, "benchsim serve: --bus unix:///PATH is required (got %q)\n", *bus)
		return ErrUsage
	}
	opts := sim.Options{Gusts: *gusts, Seed: *seed, PhysicsHz: *rate, SampleHz: *sampleHz}
	switch *noise {
	case "default":
	case "none":
		opts.Noise = &chips.Noise{}
	default:
		fmt.Fprintf(env.Stderr, "benchsim serve: --noise %q: want default or none\n", *noise)
		return ErrUsage
	}
	if *sampleHz < 100 {
		fmt.Fprintf(env.Stderr, "benchsim serve: --sample-hz %g: at least 100\n", *sampleHz)
		return ErrUsage
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: level}))
	opts.Logger = log
	var tf *os.File
	if *tracePath != "" {
		if tf, err = os.Create(*tracePath); err != nil {
			return err
		}
		defer tf.Close()
		opts.Trace = tf
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	d := sim.New(&opts)
	l, err := sim.Listen(path)
	if err != nil {
		return err
	}
	log.Info("benchsim: serving", "bus", *bus, "trace", *tracePath)
	// Stop serving first so the clients' drops reach the trace, then stop
	// the physics, which ends the trace with the summary.
	serveCtx, stopServe := context.WithCancel(context.Background())
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopServe()
	defer stopRun()
	var wg sync.WaitGroup
	var serveErr, runErr error
	wg.Go(func() { serveErr = sim.ServeListener(serveCtx, l, d, log) })
	wg.Go(func() { runErr = d.Run(runCtx) })
	<-ctx.Done()
	stopServe()
	stopRun()
	wg.Wait()
	if tf != nil {
		if err := tf.Close(); err != nil && runErr == nil {
			runErr = err
		}
	}
	sum := d.Summary()
	b, _ := json.Marshal(&sum)
	fmt.Fprintln(env.Stdout, string(b))
	if serveErr != nil {
		return serveErr
	}
	return runErr
}
