package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/inflight-ota/inflight/bench"
)

func init() {
	Register(&Command{Name: "fly", Summary: "fly a mission: the bench drone plus flightctl as a separate process; prints the figures as JSON", Run: fly})
}

const flyAbout = `
Starts the bench drone on a socket bus in a fresh run directory, starts
flightctl as a separate process against it, takes off to --alt, hovers for
--duration, lands, and prints the flight's figures. With --json the last line
of the output is one JSON object (docs/bench.md, "benchsim fly"):
{"crashed":…,"landed":…,"hover_alt_rmse_m":…,"hover_att_rms_deg":…,"max_att_deg":…,
 "tick_hz":…,"tick_p99_jitter_us":…,"missed_ticks":…,"two_writer_events":…,"reinit_events":…,…}

With --repeat N it flies N times in a row, prints each flight's line, and
ends with one line that sums them up ("scenario":"summary").
The exit code is 0 when every flight landed without a crash, 1 otherwise.

flightctl is taken from --flightctl, else from beside benchsim, else built
with 'go build' (run inside the module then).

With --scenario handoff it hovers and hands the flight over to a new
flightctl process --handoffs times in a row (schemas 1 and 2 alternating),
then lands; --fault injects a fault into the first handoff. The last line is
one JSON object (docs/bench.md, "The handoff scenario"):
{"handoffs_ok":…,"handoffs_aborted":…,"rollbacks":…,"crashed":…,"switch_gap_max_ms":…,
 "switch_gap_p50_ms":…,"missed_ticks":…,"baseline_missed_ticks":…,"max_att_dev_deg":…,…}

Examples:
  benchsim fly --scenario hover --duration 30s --json
  benchsim fly --scenario handoff --handoffs 20 --json
  benchsim fly --scenario handoff --fault v2-stall --json
  benchsim fly --gusts --trace flight.jsonl --plot flight.png
  benchsim fly --repeat 10 --json`

func fly(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "fly", "[flags]", flyAbout)
	scenario := fs.String("scenario", "hover", "what to fly: hover, or handoff (hand the flight over --handoffs times while hovering)")
	handoffs := fs.Int("handoffs", 1, "handoff scenario: handoffs in a row")
	fault := fs.String("fault", "", "handoff scenario: inject a fault into the first handoff: "+strings.Join(bench.Faults, ", "))
	faultPhase := fs.String("fault-phase", "", "handoff scenario: phase[:ticks] for v1-die/v2-die/v2-stall (default v1 shadow:10, v2 active:200)")
	probation := fs.Duration("probation", time.Second, "handoff scenario: probation of each handoff")
	duration := fs.Duration("duration", 30*time.Second, "how long to hover")
	alt := fs.Float64("alt", 2, "take-off altitude, m")
	gusts := fs.Bool("gusts", false, "enable the seeded wind-gust model")
	noise := fs.String("noise", "default", "sensor noise and bias: default or none")
	seed := fs.Uint64("seed", 1, "seed for gusts and sensor noise (flight i of --repeat uses seed+i)")
	rate := fs.Float64("rate", 400, "flightctl control rate, Hz (at least 250)")
	noRT := fs.Bool("no-rt", false, "do not ask flightctl for SCHED_FIFO and locked memory (--rt)")
	tracePath := fs.String("trace", "", "keep the drone's trace (JSON Lines) in this file")
	plotPath := fs.String("plot", "", "draw the flight into this file (.png or .svg)")
	flightctl := fs.String("flightctl", "", "the flightctl binary to fly")
	repeat := fs.Int("repeat", 1, "fly this many times in a row")
	asJSON := fs.Bool("json", false, "print JSON lines instead of text")
	verbose := fs.Bool("v", false, "log progress to stderr")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.Stderr, "benchsim fly: unexpected argument %q\n", pos[0])
		return ErrUsage
	}
	if *scenario == "handoff" {
		if *fault != "" && !slices.Contains(bench.Faults, *fault) {
			fmt.Fprintf(env.Stderr, "benchsim fly: unknown fault %q (%s)\n", *fault, strings.Join(bench.Faults, ", "))
			return ErrUsage
		}
		log := slog.New(slog.DiscardHandler)
		if *verbose {
			log = slog.New(slog.NewTextHandler(env.Stderr, nil))
		}
		res, err := bench.FlyHandoffs(ctx, bench.HandoffOptions{
			Handoffs: *handoffs, AltM: *alt, Gusts: *gusts, NoNoise: *noise == "none", Seed: *seed, RateHz: *rate,
			NoRT: *noRT, Fault: *fault, FaultPhase: *faultPhase, Probation: *probation, TracePath: *tracePath,
			Flightctl: *flightctl, Logger: log, FlightctlLog: flightctlLog(env, *verbose),
		})
		if err != nil {
			return err
		}
		if *fault != "" && len(res.Each) > 0 {
			e := res.Each[0]
			res.FaultResult = e.Result
			if e.Code != "" && e.Code != "none" {
				res.FaultResult += " (" + e.Code + ": " + e.Detail + ")"
			}
		}
		printHandoff(env, res, *asJSON, true)
		if res.Crashed || res.TwoWriterEvents > 0 {
			return errFlightFailed
		}
		return nil
	}
	if *scenario != "hover" {
		fmt.Fprintf(env.Stderr, "benchsim fly: unknown scenario %q (hover, handoff)\n", *scenario)
		return ErrUsage
	}
	if *noise != "default" && *noise != "none" {
		fmt.Fprintf(env.Stderr, "benchsim fly: --noise must be default or none (got %q)\n", *noise)
		return ErrUsage
	}
	if *repeat < 1 || *rate < 250 || *duration <= 0 || *alt <= 0 {
		fmt.Fprintf(env.Stderr, "benchsim fly: need --repeat ≥ 1, --rate ≥ 250, --duration > 0 and --alt > 0\n")
		return ErrUsage
	}
	if *repeat > 1 && (*tracePath != "" || *plotPath != "") {
		fmt.Fprintf(env.Stderr, "benchsim fly: --trace and --plot keep one flight; use them without --repeat\n")
		return ErrUsage
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(env.Stderr, nil))
	}

	sum := flySummary{Scenario: "summary"}
	for i := 0; i < *repeat; i++ {
		res, err := bench.Fly(ctx, bench.FlyOptions{
			Hover: *duration, AltM: *alt, Gusts: *gusts, NoNoise: *noise == "none",
			Seed: *seed + uint64(i), RateHz: *rate, NoRT: *noRT,
			TracePath: *tracePath, PlotPath: *plotPath, Flightctl: *flightctl, Logger: log,
		})
		if err != nil {
			return err
		}
		sum.add(res)
		if *asJSON {
			b, _ := json.Marshal(res)
			fmt.Fprintln(env.Stdout, string(b))
		} else {
			fmt.Fprintf(env.Stdout, "flight %d: crashed=%v landed=%v hover alt RMSE %.3f m, att RMS %.2f°, max att %.1f°, %.1f Hz, p99 jitter %.0f µs, missed %d/%d (%.3f %%), two writers %d, reinit %d\n",
				i+1, res.Crashed, res.Landed, res.HoverAltRMSEM, res.HoverAttRMSDeg, res.MaxAttDeg, res.TickHz,
				res.TickP99JitterUS, res.MissedTicks, res.Ticks, res.MissedTicksPct, res.TwoWriterEvents, res.ReinitEvents)
			if res.TracePath != "" {
				fmt.Fprintf(env.Stdout, "trace: %s\n", res.TracePath)
			}
			if res.PlotPath != "" {
				fmt.Fprintf(env.Stdout, "plot: %s\n", res.PlotPath)
			}
		}
	}
	if *repeat > 1 {
		if *asJSON {
			b, _ := json.Marshal(sum)
			fmt.Fprintln(env.Stdout, string(b))
		} else {
			fmt.Fprintf(env.Stdout, "%d flights: %d crashed, %d landed; worst hover alt RMSE %.3f m, worst att RMS %.2f°, missed ticks %.3f %% overall\n",
				sum.Flights, sum.Crashed, sum.Landed, sum.WorstAltRMSEM, sum.WorstAttRMSDeg, sum.MissedTicksPct)
		}
	}
	if sum.Crashed > 0 || sum.Landed < sum.Flights {
		return errFlightFailed
	}
	return nil
}

var errFlightFailed = errors.New("a flight crashed or did not land")

// flySummary sums up the flights of one --repeat run.
type flySummary struct {
	Scenario        string  `json:"scenario"`
	Flights         int     `json:"flights"`
	Crashed         int     `json:"crashed"`
	Landed          int     `json:"landed"`
	WorstAltRMSEM   float64 `json:"worst_hover_alt_rmse_m"`
	WorstAttRMSDeg  float64 `json:"worst_hover_att_rms_deg"`
	WorstMaxAttDeg  float64 `json:"worst_max_att_deg"`
	Ticks           uint64  `json:"ticks"`
	MissedTicks     uint64  `json:"missed_ticks"`
	MissedTicksPct  float64 `json:"missed_ticks_percent"`
	WorstP99US      float64 `json:"worst_tick_p99_jitter_us"`
	TwoWriterEvents int     `json:"two_writer_events"`
	ReinitEvents    int     `json:"reinit_events"`
}

func (s *flySummary) add(r bench.FlyResult) {
	s.Flights++
	if r.Crashed {
		s.Crashed++
	}
	if r.Landed {
		s.Landed++
	}
	s.WorstAltRMSEM = math.Max(s.WorstAltRMSEM, r.HoverAltRMSEM)
	s.WorstAttRMSDeg = math.Max(s.WorstAttRMSDeg, r.HoverAttRMSDeg)
	s.WorstMaxAttDeg = math.Max(s.WorstMaxAttDeg, r.MaxAttDeg)
	s.WorstP99US = math.Max(s.WorstP99US, r.TickP99JitterUS)
	s.Ticks += r.Ticks
	s.MissedTicks += r.MissedTicks
	if s.Ticks > 0 {
		s.MissedTicksPct = math.Round(1e5*float64(s.MissedTicks)/float64(s.Ticks)) / 1e3
	}
	s.TwoWriterEvents += r.TwoWriterEvents
	s.ReinitEvents += r.ReinitEvents
}

func printHandoff(env *Env, res bench.HandoffResult, asJSON, each bool) {
	for i, e := range res.Each {
		if !each {
			break
		}
		if asJSON {
			b, _ := json.Marshal(e)
			fmt.Fprintf(env.Stdout, "%s\n", b)
			continue
		}
		fmt.Fprintf(env.Stdout, "handoff %d %s→%s (schema %s): %s %s; switch gap %.3f ms (controllers %.3f ms), missed %d, att dev %.3f°, alt dev %.4f m, divergence %.3g µs\n",
			i+1, e.From, e.To, e.Schemas, e.Result, e.Detail, e.SwitchGapMS, e.CtlGapMS, e.MissedTicks, e.MaxAttDevDeg, e.MaxAltDevM, e.MaxDivergence)
	}
	if asJSON {
		each := res.Each
		res.Each = nil
		b, _ := json.Marshal(res)
		res.Each = each
		fmt.Fprintln(env.Stdout, string(b))
		return
	}
	fmt.Fprintf(env.Stdout, "%s%s: %d ok, %d aborted, %d rolled back, crashed=%v; switch gap max %.3f ms p50 %.3f ms; missed %d/%d (%.3f %%) vs baseline %d/%d (%.3f %%); two writers %d, reinit %d; max att dev %.3f°, max alt dev %.4f m\n",
		res.Scenario, map[bool]string{true: " " + res.Strategy, false: ""}[res.Strategy != ""], res.HandoffsOK, res.HandoffsAborted, res.Rollbacks, res.Crashed,
		res.SwitchGapMaxMS, res.SwitchGapP50MS, res.MissedTicks, res.WindowIntervals, res.MissedPct,
		res.BaselineMissedTicks, res.BaselineIntervals, res.BaselineMissedPct, res.TwoWriterEvents, res.ReinitEvents, res.MaxAttDevDeg, res.MaxAltDevM)
}

// flightctlLog is where the controllers' logs go: stderr with -v.
func flightctlLog(env *Env, verbose bool) io.Writer {
	if verbose {
		return env.Stderr
	}
	return nil
}
