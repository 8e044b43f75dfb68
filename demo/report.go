package demo

import (
	"fmt"
	"strings"

	"github.com/inflight-ota/inflight/agent"
	"github.com/inflight-ota/inflight/ground"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/sim/trace"
)

// figures fills the summary from the drone's own record of the flight.
func (d *run) figures(tr *trace.Trace, sum *Summary, received, committed float64, v1name, v2name string) {
	if s := tr.Summary; s != nil {
		sum.Crashed, sum.CrashReason = s.Crashed, s.CrashReason
		sum.TwoWriterEvents, sum.ReinitEvents = s.TwoWriterEvents, s.ReinitEvents
		sum.MaxPWMGapMS = r3(s.MaxPWMGapMS)
		sum.Handovers = len(s.Handovers)
		for _, h := range s.Handovers {
			if h.GapMS > sum.SwitchGapMS {
				sum.SwitchGapMS = r3(h.GapMS)
			}
			if h.From == v1name { // the last one: that of the committed attempt
				sum.Timeline.Switch = r3(h.T)
			}
		}
	}
	if sum.Timeline.Landed >= 0 {
		if st, _ := d.simState(); st {
			sum.Landed = !sum.Crashed
		}
	}
	push := sum.Timeline.Push
	if push < 0 {
		return
	}
	base := window{push - d.o.Baseline.Seconds(), push}
	bs := statsOf(tr, base, d.o.AltM)
	sum.HoverAltRMSEV1 = r4(bs.altRMSE)
	sum.BaseAttDevDeg, sum.BaseAltDevM = deviation(tr, base, bs)
	sum.BaseAttDevDeg, sum.BaseAltDevM = r3(sum.BaseAttDevDeg), r4(sum.BaseAltDevM)
	end := committed
	if end < 0 {
		end = sum.Timeline.Land
	}
	if end > push {
		a, z := deviation(tr, window{push, end}, bs)
		sum.MaxAttDevDeg, sum.MaxAltDevM = r3(a), r4(z)
	}
	if committed >= 0 && sum.Timeline.Land > committed {
		v2 := statsOf(tr, window{committed, sum.Timeline.Land}, d.o.AltM)
		sum.HoverAltRMSEV2 = r4(v2.altRMSE)
		sum.V2Changes = append(sum.V2Changes, fmt.Sprintf("altitude hold: hover altitude RMSE %.3f m with v1, %.3f m with v2", sum.HoverAltRMSEV1, sum.HoverAltRMSEV2))
	}
}

// simState reports whether the drone rests on the ground, uncrashed.
func (d *run) simState() (onGround bool, crashed bool) {
	d.droneMu.Lock()
	s := d.sim
	d.droneMu.Unlock()
	if s == nil {
		return false, false
	}
	st, c := s.State()
	return st.OnGround, c
}

// report prints the summary for people; the JSON line follows it.
func (d *run) report(s *Summary) {
	w := d.o.Stdout
	verdict := "OK"
	if !s.OK() {
		verdict = "NOT OK"
	}
	fmt.Fprintf(w, "\nsummary (%s)\n", verdict)
	attempts := ""
	if s.Attempts > 1 {
		attempts = fmt.Sprintf(" at push %d of %d", s.Attempts, s.Attempts)
	}
	fmt.Fprintf(w, "  update      %s → %s: %s%s%s, runtime %s, image via %s\n", s.FromVersion, s.ToVersion, strings.ToUpper(s.Result), reasonText(s.Reason), attempts, s.Runtime, s.Via)
	for _, e := range s.Earlier {
		fmt.Fprintf(w, "  earlier     attempt %s\n", e)
	}
	if len(s.PhasesMS) > 0 {
		var order []string
		for _, p := range ground.Phases {
			order = append(order, string(p))
			if p == mqttapi.PhaseFetched {
				order = append(order, string(agent.PhaseChecking))
			}
		}
		fmt.Fprintf(w, "  phases      %s (total %.0f ms)\n", sortedPhases(s.PhasesMS, order), s.PhasesMS["total"])
	}
	t := s.Timeline
	fmt.Fprintf(w, "  timeline    takeoff %.1f s, hover %.1f s, push %.1f s, switch %.3f s, commit %.1f s, land %.1f s, landed %.1f s (drone clock)\n",
		t.Takeoff, t.Hover, t.Push, t.Switch, t.Committed, t.Land, t.Landed)
	fmt.Fprintf(w, "  switch      gap at the PWM chip %.2f ms (control period %.2f ms, limit %.2f ms); controllers measured %.2f ms, %d missed ticks\n",
		s.SwitchGapMS, s.ControlPeriodMS, 2*s.ControlPeriodMS, s.ControllerGapMS, s.MissedTicks)
	fmt.Fprintf(w, "  deviation   push → commit: attitude %.2f°, altitude %.3f m from the hover baseline (the baseline itself: %.2f°, %.3f m)\n",
		s.MaxAttDevDeg, s.MaxAltDevM, s.BaseAttDevDeg, s.BaseAltDevM)
	fmt.Fprintf(w, "  safety      crashed %v, two writers %d, chip re-inits %d, handovers %d, longest PWM gap %.2f ms, landed %v\n",
		s.Crashed, s.TwoWriterEvents, s.ReinitEvents, s.Handovers, s.MaxPWMGapMS, s.Landed)
	for i, c := range s.V2Changes {
		label := "              "
		if i == 0 {
			label = "  v2 changed  "
		}
		fmt.Fprintf(w, "%s%s\n", label, c)
	}
	fmt.Fprintf(w, "  plot        %s (update window shaded)\n", s.Plot)
	if s.Trace != "" {
		fmt.Fprintf(w, "  trace       %s\n", s.Trace)
	}
}

func reasonText(r string) string {
	if r == "" {
		return ""
	}
	return " (" + r + ")"
}
