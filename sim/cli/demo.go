package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/inflight-ota/inflight/demo"
)

func init() {
	Register(&Command{Name: "demo", Summary: "the in-air update demo: v1 flies, groundctl pushes v2, the agent hands over in the air (make demo)", Run: runDemo})
}

const demoAbout = `
Builds the v1 and v2 flightctl images (images/build), starts the embedded MQTT
broker, an in-process registry on 127.0.0.1 (or the MQTT transfer with --via
mqtt), the bench drone and the update agent with v1; takes off, pushes v2 with
groundctl (signed) showing its progress, hands over in the air, commits, lands,
and prints a summary with the path of a plot of the whole flight. The last
line is the summary as one JSON object (docs/demo.md).

--runtime auto uses Docker when an engine answers, or when it can install
docker.io and start dockerd (root on Debian/Ubuntu), and otherwise runs the
controllers as local processes; it says which.

Exit code 0 only when the update committed, nothing crashed, the drone landed
and the PWM chip saw the switch within two control periods.

Run it inside the repository (images/build compiles flightctl from source).`

func runDemo(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "demo", "[flags]", demoAbout)
	var o demo.Options
	fs.StringVar(&o.Runtime, "runtime", "auto", "auto, docker or process")
	fs.StringVar(&o.Via, "via", "registry", "how v2 reaches the drone: registry or mqtt")
	fs.StringVar(&o.V1Version, "v1", "1.0.0", "version of the image the drone starts with")
	fs.StringVar(&o.V2Version, "v2", "2.0.0", "version of the image pushed in the air")
	v1args := fs.String("v1-build-args", "", "extra images/build flags for v1, space separated")
	v2args := fs.String("v2-build-args", "", "extra images/build flags for v2, space separated (default: the v2 demo feature)")
	fs.Float64Var(&o.AltM, "alt", 2, "hover altitude, m")
	fs.DurationVar(&o.Baseline, "baseline", 2*time.Second, "hover with v1 before the push")
	fs.DurationVar(&o.After, "after", 3*time.Second, "hover with v2 after the commit, before landing")
	fs.DurationVar(&o.Probation, "probation", 4*time.Second, "hot-standby window after the switch")
	fs.BoolVar(&o.NoRT, "no-rt", false, "do not ask flightctl for SCHED_FIFO and locked memory")
	fs.StringVar(&o.PlotPath, "plot", "inflight-demo.png", "plot of the whole flight (.png or .svg)")
	fs.StringVar(&o.TracePath, "trace", "", "keep the drone's trace (JSON Lines) here")
	fs.StringVar(&o.SourceDir, "source", "", "a directory inside the inflight repository (default: the working directory)")
	fs.DurationVar(&o.Timeout, "timeout", 3*time.Minute, "give up after this long")
	verbose := fs.Bool("v", false, "log the agent, runtime and drone to stderr")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.Stderr, "benchsim demo: unexpected argument %q\n", pos[0])
		return ErrUsage
	}
	o.V1BuildArgs = strings.Fields(*v1args)
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "v2-build-args" {
			o.V2BuildArgs = strings.Fields(*v2args)
		}
	})
	if o.V2BuildArgs == nil {
		o.V2BuildArgs = demo.DefaultV2BuildArgs
	}
	o.Stdout, o.Stderr = env.Stdout, env.Stderr
	if *verbose {
		o.Logger = slog.New(slog.NewTextHandler(env.Stderr, nil))
	}
	sum, err := demo.Run(ctx, o)
	fmt.Fprintln(env.Stdout, sum.JSON())
	if err != nil {
		return err
	}
	if !sum.OK() {
		return errDemoFailed
	}
	return nil
}

var errDemoFailed = errors.New("the in-air update did not succeed (see the summary)")
