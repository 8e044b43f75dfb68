package agent

import (
	"context"
	"math"
	"time"

	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// flying returns the name of the controller that flies now: v2 once the
// switch happened, else the active one.
func (a *Agent) flying() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if u := a.j.Update; u != nil && u.Switched && u.V2 != nil {
		return u.V2.Name
	}
	if a.j.Active != nil {
		return a.j.Active.Name
	}
	return ""
}

// relayTelemetry polls the flying controller's status and publishes it
// (QoS 0) until ctx ends.
func (a *Agent) relayTelemetry(ctx context.Context) {
	t := time.NewTicker(time.Duration(float64(time.Second) / a.cfg.Telemetry.RateHz))
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		name := a.flying()
		a.mu.Lock()
		m := a.mq
		a.mu.Unlock()
		if name == "" || m == nil {
			continue
		}
		st, err := a.status(ctx, name)
		if err != nil {
			if !failing {
				a.log.Warn("telemetry: controller does not answer", "controller", name, "err", err)
			}
			failing = true
			continue
		}
		failing = false
		b, err := a.telemetry(st).Marshal()
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		m.Publish(pctx, mqttc.Message{Topic: a.topics.Telemetry, Payload: b, QoS: 0})
		cancel()
	}
}

// telemetry converts a controller status; motor pulses of 1000–2000 µs
// become ESC commands in [0, 1].
func (a *Agent) telemetry(st *ctlsock.Status) mqttapi.Telemetry {
	tm := mqttapi.Telemetry{
		Drone: a.cfg.Drone, At: a.clock.Now().UTC(), Tick: st.Tick, Mode: st.Mode, Armed: st.Armed,
		RollDeg: st.RollDeg, PitchDeg: st.PitchDeg, YawDeg: st.YawDeg, AltM: st.AltM, VSpeedMS: st.VZMS,
		ControllerVersion: st.Version, Role: st.Role, Motors: make([]float64, len(st.MotorsUS)),
		Extra: map[string]float64{"rate_hz": st.Ticks.RateHz, "jitter_p99_us": st.Ticks.JitterP99US, "missed_ticks": float64(st.Ticks.Missed)},
	}
	for i, us := range st.MotorsUS {
		tm.Motors[i] = math.Max(0, math.Min(1, (us-1000)/1000))
	}
	if st.BatteryV != nil {
		tm.BatteryV = *st.BatteryV
	}
	if st.BatteryPct != nil {
		tm.BatteryPct = *st.BatteryPct
	}
	return tm
}
