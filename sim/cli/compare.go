package cli

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/inflight-ota/inflight/bench"
)

func init() {
	Register(&Command{Name: "compare", Summary: "replace the controller in the air three ways (stop-start, handover-nostate, inflight) and print one row each", Run: compare})
}

const compareAbout = `
Flies the bench drone three times in one run, with the same seed and a fresh
hover each time, and replaces the flight controller in the air:
  stop-start        kill v1, then start v2 cold (Watchtower, Kanto, Mender)
  handover-nostate  start v2 beside v1, then kill v1; v2 has no state (balena)
  inflight          the handoff (docs/handoff.md)
With --json it prints one JSON object per strategy (key "strategy"), with the
columns of 'benchsim fly --scenario handoff' plus alt_drop_m.`

func compare(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "compare", "[flags]", compareAbout)
	alt := fs.Float64("alt", 2, "hover altitude, m")
	seed := fs.Uint64("seed", 1, "seed for sensor noise")
	rate := fs.Float64("rate", 400, "control rate, Hz")
	noRT := fs.Bool("no-rt", false, "do not ask flightctl for SCHED_FIFO")
	flightctl := fs.String("flightctl", "", "the flightctl binary")
	asJSON := fs.Bool("json", false, "print JSON lines")
	verbose := fs.Bool("v", false, "log progress to stderr")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.Stderr, "benchsim compare: unexpected argument %q\n", pos[0])
		return ErrUsage
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(env.Stderr, nil))
	}
	rows, err := bench.Compare(ctx, bench.HandoffOptions{AltM: *alt, Seed: *seed, RateHz: *rate, NoRT: *noRT,
		Flightctl: *flightctl, Logger: log, Settle: 3 * time.Second})
	for _, r := range rows {
		printHandoff(env, r, *asJSON, false)
	}
	return err
}
