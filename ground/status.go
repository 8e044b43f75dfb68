package ground

import (
	"context"
	"sort"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
)

// DroneStatus is one row of the fleet status.
type DroneStatus struct {
	Drone        string    `json:"drone"`
	Online       bool      `json:"online"`
	AgentVersion string    `json:"agent_version,omitempty"`
	Version      string    `json:"version,omitempty"` // active controller version
	Image        string    `json:"image,omitempty"`   // active image, repo@sha256:...
	Phase        string    `json:"phase,omitempty"`   // of the update in progress, or "idle"
	UpdateSerial uint64    `json:"update_serial,omitempty"`
	LastResult   string    `json:"last_result,omitempty"`
	LastReason   string    `json:"last_reason,omitempty"`
	LastSerial   uint64    `json:"last_serial,omitempty"`
	LastSeen     time.Time `json:"last_seen,omitzero"`
	Fleets       []string  `json:"fleets,omitempty"`
	Runtime      string    `json:"runtime,omitempty"`
	Arch         string    `json:"arch,omitempty"`
}

// Status lists every drone with a retained reported state or status, sorted
// by id. Online comes from the status topic (the agent's last will) when
// there is one, else from the reported state.
func (s *Station) Status(ctx context.Context) ([]DroneStatus, error) {
	reps, err := s.retained(ctx, s.o.Topics.AllDrones(mqttapi.KindReported))
	if err != nil {
		return nil, err
	}
	sts, err := s.retained(ctx, s.o.Topics.AllDrones(mqttapi.KindStatus))
	if err != nil {
		return nil, err
	}
	rows := map[string]*DroneStatus{}
	row := func(id string) *DroneStatus {
		r := rows[id]
		if r == nil {
			r = &DroneStatus{Drone: id, Phase: string(mqttapi.PhaseIdle)}
			rows[id] = r
		}
		return r
	}
	seen := func(r *DroneStatus, t time.Time) {
		if t.After(r.LastSeen) {
			r.LastSeen = t
		}
	}
	for _, m := range reps {
		t, err := s.o.Topics.Parse(m.Topic)
		if err != nil || len(m.Payload) == 0 {
			continue
		}
		rep, err := mqttapi.DecodeReported(m.Payload)
		if err != nil || rep.Drone != t.Drone {
			s.log.Warn("reported state ignored", "topic", m.Topic, "err", err)
			continue
		}
		r := row(t.Drone)
		r.Online = rep.Online
		r.AgentVersion = rep.AgentVersion
		r.Fleets, r.Runtime, r.Arch = rep.Fleets, rep.Runtime, rep.Arch
		r.LastSerial = rep.LastSerial
		if rep.Active != nil {
			r.Version, r.Image = rep.Active.Version, rep.Active.Image
		}
		if u := rep.Update; u != nil && !u.Phase.Terminal() {
			r.Phase, r.UpdateSerial = string(u.Phase), u.Serial
		}
		if lr := rep.LastResult; lr != nil {
			r.LastResult, r.LastReason = lr.Result, lr.Reason
		}
		seen(r, rep.UpdatedAt)
	}
	for _, m := range sts {
		t, err := s.o.Topics.Parse(m.Topic)
		if err != nil || len(m.Payload) == 0 {
			continue
		}
		st, err := mqttapi.DecodeStatus(m.Payload)
		if err != nil {
			continue
		}
		r := row(t.Drone)
		r.Online = st.Online
		if st.AgentVersion != "" {
			r.AgentVersion = st.AgentVersion
		}
		seen(r, st.At)
	}
	out := make([]DroneStatus, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Drone < out[j].Drone })
	return out, nil
}
