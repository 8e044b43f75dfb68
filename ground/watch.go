package ground

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// Phases is the normal path of an update, in order; a progress display
// places each phase by its index here.
var Phases = []mqttapi.Phase{
	mqttapi.PhaseReceived, mqttapi.PhaseVerified, mqttapi.PhaseFetching, mqttapi.PhaseFetched,
	mqttapi.PhaseStarting, mqttapi.PhaseHello, mqttapi.PhaseSync, mqttapi.PhaseShadow,
	mqttapi.PhaseWaiting, mqttapi.PhaseSwitching, mqttapi.PhaseProbation, mqttapi.PhaseCommitted,
}

// PhaseIndex is the position of p in Phases, or -1 (rolling back and the
// other terminal phases are off the normal path).
func PhaseIndex(p mqttapi.Phase) int {
	for i, q := range Phases {
		if q == p {
			return i
		}
	}
	return -1
}

// Outcome is how a watched update (or request) ended.
type Outcome struct {
	Drone   string           `json:"drone"`
	Serial  uint64           `json:"serial"`
	Kind    string           `json:"kind,omitempty"`
	Version string           `json:"version,omitempty"`
	Result  string           `json:"result"`
	Reason  string           `json:"reason,omitempty"`
	Error   string           `json:"error,omitempty"`
	At      time.Time        `json:"at"`
	Figures *mqttapi.Figures `json:"figures,omitempty"`
	// Phases lists the phases seen, in order, with when they began.
	Phases []PhaseSeen `json:"phases,omitempty"`
}

// Committed reports whether the update committed.
func (o Outcome) Committed() bool { return o.Result == mqttapi.ResultCommitted }

// PhaseSeen is one phase change the watcher saw.
type PhaseSeen struct {
	Phase     mqttapi.Phase `json:"phase"`
	At        time.Time     `json:"at"`
	ElapsedMS float64       `json:"elapsed_ms,omitempty"`
}

// Watcher follows one drone's events and reported state. Start it before
// publishing, so that no event is missed.
type Watcher struct {
	s     *Station
	d     mqttapi.DroneTopics
	ch    chan mqttapi.Event
	repCh chan mqttapi.Reported

	mu  sync.Mutex
	rep *mqttapi.Reported
}

// Watch subscribes to drone id's events and reported state.
func (s *Station) Watch(ctx context.Context, id string) (*Watcher, error) {
	d, err := s.Drone(id)
	if err != nil {
		return nil, err
	}
	w := &Watcher{s: s, d: d, ch: make(chan mqttapi.Event, 256), repCh: make(chan mqttapi.Reported, 16)}
	if err := s.o.Conn.Subscribe(ctx, d.Events, 1, func(m mqttc.Message) {
		ev, err := mqttapi.DecodeEvent(m.Payload)
		if err != nil || ev.Drone != id {
			s.log.Warn("event ignored", "topic", m.Topic, "err", err)
			return
		}
		select {
		case w.ch <- *ev:
		default:
			s.log.Warn("event dropped: watcher behind", "seq", ev.Seq)
		}
	}); err != nil {
		return nil, fmt.Errorf("ground: %w", err)
	}
	if err := s.o.Conn.Subscribe(ctx, d.Reported, 1, func(m mqttc.Message) {
		r, err := mqttapi.DecodeReported(m.Payload)
		if err != nil || r.Drone != id {
			return
		}
		w.mu.Lock()
		w.rep = r
		w.mu.Unlock()
		select {
		case w.repCh <- *r:
		default:
		}
	}); err != nil {
		w.Close()
		return nil, fmt.Errorf("ground: %w", err)
	}
	return w, nil
}

// Close drops the subscriptions.
func (w *Watcher) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	w.s.o.Conn.Unsubscribe(ctx, w.d.Events)
	w.s.o.Conn.Unsubscribe(ctx, w.d.Reported)
}

// Reported is the last reported state seen, or nil.
func (w *Watcher) Reported() *mqttapi.Reported {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rep
}

// Target finds the update to watch when none was named: the one in
// progress, else the drone's retained desired manifest, else (0) the next
// one to start.
func (w *Watcher) Target(ctx context.Context) (uint64, error) {
	// The retained reported state arrives right after the subscription.
	t := time.NewTimer(w.s.o.RetainedWait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-t.C:
	}
	if r := w.Reported(); r != nil && r.Update != nil && !r.Update.Phase.Terminal() {
		return r.Update.Serial, nil
	}
	m, err := w.s.Desired(ctx, w.d.Desired)
	if err != nil {
		return 0, err
	}
	if m != nil {
		return m.Serial, nil
	}
	return 0, nil
}

// Wait follows update serial (0: the next update the drone starts) until
// it ends, calling on for every event of it (on may be nil). It returns
// the outcome; the error wraps ErrUpdateFailed when the update ended but
// did not commit, and ErrTimeout when ctx's deadline passed first.
func (w *Watcher) Wait(ctx context.Context, serial uint64, on func(mqttapi.Event)) (Outcome, error) {
	out := Outcome{Drone: w.d.ID, Serial: serial}
	var floor uint64 // with serial 0: events above the last applied serial
	if r := w.Reported(); r != nil {
		floor = r.LastSerial
	}
	isOurs := func(ev mqttapi.Event) bool {
		if ev.Phase == mqttapi.PhaseRejected && ev.Serial == 0 {
			// A rejected manifest names no serial: take one that came in on
			// a desired topic while we wait.
			return strings.HasSuffix(ev.Topic, "/"+string(mqttapi.KindDesired))
		}
		if ev.Kind != "" && ev.Kind != mqttapi.KindUpdate {
			return false
		}
		if serial == 0 {
			if ev.Serial > floor {
				serial = ev.Serial
				out.Serial = serial
				return true
			}
			return false
		}
		return ev.Serial == serial
	}
	finish := func(res, reason, errText string, at time.Time, f *mqttapi.Figures) (Outcome, error) {
		out.Result, out.Reason, out.Error, out.At, out.Figures = res, reason, errText, at, f
		if res == mqttapi.ResultCommitted {
			return out, nil
		}
		return out, fmt.Errorf("ground: drone %s update %d: %s %s: %w", w.d.ID, out.Serial, res, reason, ErrUpdateFailed)
	}
	checkReported := func(r *mqttapi.Reported) (bool, Outcome, error) {
		if r == nil || r.LastResult == nil || serial == 0 || r.LastResult.Serial != serial {
			return false, out, nil
		}
		lr := r.LastResult
		if out.Version == "" {
			out.Version = lr.Version
		}
		o, err := finish(lr.Result, lr.Reason, lr.Error, lr.At, lr.Figures)
		return true, o, err
	}
	if done, o, err := checkReported(w.Reported()); done {
		return o, err
	}
	var ro reorder
	type fallback struct {
		o   Outcome
		err error
	}
	var fb *fallback
	tick := time.NewTicker(reorderHold / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return out, fmt.Errorf("ground: drone %s update %d: last phase %s: %w", w.d.ID, out.Serial, lastPhase(out), ErrTimeout)
			}
			return out, ctx.Err()
		case r := <-w.repCh:
			if done, o, err := checkReported(&r); done {
				if len(ro.pend) == 0 {
					return o, err
				}
				// Show the events still held for ordering first.
				fb = &fallback{o, err}
			}
		case ev := <-w.ch:
			ro.add(ev, time.Now())
		case <-tick.C:
		}
		if fb != nil && len(ro.pend) == 0 {
			return fb.o, fb.err
		}
		for _, ev := range ro.ready(time.Now()) {
			if !isOurs(ev) {
				continue
			}
			if ev.Version != "" {
				out.Version = ev.Version
			}
			if ev.Kind != "" {
				out.Kind = ev.Kind
			}
			if n := len(out.Phases); n == 0 || out.Phases[n-1].Phase != ev.Phase {
				out.Phases = append(out.Phases, PhaseSeen{Phase: ev.Phase, At: ev.At, ElapsedMS: ev.ElapsedMS})
			}
			if on != nil {
				on(ev)
			}
			if ev.Phase.Terminal() {
				res := ev.Result
				if res == "" {
					res = string(ev.Phase)
				}
				return finish(res, ev.Reason, ev.Error, ev.At, ev.Figures)
			}
		}
	}
}

func lastPhase(o Outcome) mqttapi.Phase {
	if len(o.Phases) == 0 {
		return "none seen"
	}
	return o.Phases[len(o.Phases)-1].Phase
}

// WaitRequest follows a rollback or cancel request until the drone reports
// its end: events of the request's kind and serial, or a rejection of a
// message on the requests topic. A rollback succeeds with rolled_back, a
// cancel with aborted; anything else wraps ErrUpdateFailed.
func (w *Watcher) WaitRequest(ctx context.Context, req mqttapi.Request, on func(mqttapi.Event)) (Outcome, error) {
	out := Outcome{Drone: w.d.ID, Serial: req.Serial, Kind: req.Kind}
	want := mqttapi.ResultRolledBack
	if req.Kind == mqttapi.KindCancel {
		want = mqttapi.ResultAborted
	}
	var ro reorder
	tick := time.NewTicker(reorderHold / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return out, fmt.Errorf("ground: drone %s %s request %d: last phase %s: %w", w.d.ID, req.Kind, req.Serial, lastPhase(out), ErrTimeout)
			}
			return out, ctx.Err()
		case <-w.repCh:
		case ev := <-w.ch:
			ro.add(ev, time.Now())
		case <-tick.C:
		}
		for _, ev := range ro.ready(time.Now()) {
			rejected := ev.Phase == mqttapi.PhaseRejected && ev.Serial == 0 && strings.HasSuffix(ev.Topic, "/"+string(mqttapi.KindRequests))
			if !rejected && (ev.Kind != req.Kind || ev.Serial != req.Serial) {
				continue
			}
			out.Phases = append(out.Phases, PhaseSeen{Phase: ev.Phase, At: ev.At, ElapsedMS: ev.ElapsedMS})
			if ev.Version != "" {
				out.Version = ev.Version
			}
			if on != nil {
				on(ev)
			}
			if !ev.Phase.Terminal() {
				continue
			}
			out.Result, out.Reason, out.Error, out.At, out.Figures = ev.Result, ev.Reason, ev.Error, ev.At, ev.Figures
			if out.Result == "" {
				out.Result = string(ev.Phase)
			}
			if out.Result == want {
				return out, nil
			}
			return out, fmt.Errorf("ground: drone %s %s request %d: %s %s: %w", w.d.ID, req.Kind, req.Serial, out.Result, out.Reason, ErrUpdateFailed)
		}
	}
}

// reorderHold is how long an event that arrived ahead of its predecessor
// (by Seq) waits for it. The MQTT client may hand messages over out of
// order; the agent numbers its events.
const reorderHold = 40 * time.Millisecond

// reorder puts events back in Seq order.
type reorder struct {
	pend []heldEvent
	last uint64
}

type heldEvent struct {
	ev mqttapi.Event
	at time.Time
}

func (r *reorder) add(ev mqttapi.Event, now time.Time) {
	r.pend = append(r.pend, heldEvent{ev, now})
	sort.SliceStable(r.pend, func(i, j int) bool { return r.pend[i].ev.Seq < r.pend[j].ev.Seq })
}

// ready returns the events that may be handled now, in order: the next in
// sequence, one older than its predecessor (an agent restart), or any that
// waited reorderHold.
func (r *reorder) ready(now time.Time) []mqttapi.Event {
	var out []mqttapi.Event
	for len(r.pend) > 0 {
		h := r.pend[0]
		next := r.last != 0 && h.ev.Seq <= r.last+1
		if !next && now.Sub(h.at) < reorderHold {
			break
		}
		out = append(out, h.ev)
		r.last = h.ev.Seq
		r.pend = r.pend[1:]
	}
	return out
}
