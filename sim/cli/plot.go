package cli

import (
	"context"
	"fmt"

	"github.com/inflight-ota/inflight/sim/plot"
	"github.com/inflight-ota/inflight/sim/trace"
)

func init() {
	Register(&Command{Name: "plot", Summary: "draw a flight trace: altitude, attitude and motor pulses, events marked", Run: plotCmd})
}

const plotAbout = `
Reads a trace written by 'benchsim serve --trace' and draws three stacked
panels over time — altitude, attitude (roll, pitch, yaw) and the four ESC
pulse widths — with events (crash, two_writers, reinit, writer switches,
client connects and drops) as vertical lines. The output's extension picks
the format: .svg or .png.

Example:
  benchsim plot flight.jsonl -o flight.png`

func plotCmd(_ context.Context, env *Env, args []string) error {
	fs := newFlags(env, "plot", "FILE.jsonl -o FILE.svg|FILE.png", plotAbout)
	out := fs.String("o", "", "output file, .svg or .png (required)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *out == "" {
		fs.Usage()
		return ErrUsage
	}
	tr, err := trace.ReadFile(pos[0])
	if err != nil {
		return err
	}
	if err := plot.File(tr, *out); err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "benchsim plot: %d samples, %d events → %s\n", len(tr.Samples), len(tr.Events), *out)
	return nil
}
