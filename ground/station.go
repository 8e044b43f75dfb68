package ground

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// Sentinel errors callers branch on.
var (
	// ErrUpdateFailed: the update ended, but not committed (rolled back,
	// aborted, rejected or failed).
	ErrUpdateFailed = errors.New("update did not commit")
	// ErrTimeout: the drone did not finish within the time allowed.
	ErrTimeout = errors.New("timed out")
	// ErrNoDrone: nothing is known of the drone (no retained reported
	// state or status).
	ErrNoDrone = errors.New("drone not seen")
)

// Conn is the MQTT connection the station uses; *mqttc.Client implements
// it.
type Conn interface {
	Publish(ctx context.Context, m mqttc.Message) error
	Subscribe(ctx context.Context, filter string, qos byte, h func(mqttc.Message)) error
	Unsubscribe(ctx context.Context, filter string) error
}

var _ Conn = (*mqttc.Client)(nil)

// Options configure a Station. Conn is required.
type Options struct {
	Conn   Conn
	Topics mqttapi.Topics // zero: the default root "inflight"
	// RetainedWait is how long to wait for retained messages after a
	// subscription is acknowledged (default 300ms): brokers send them right
	// after the SUBACK, so this only bounds the "there is none" case.
	RetainedWait time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// Station is the ground station: it pushes signed updates and requests,
// and reads what drones report. It holds no state between calls but its
// connection.
type Station struct {
	o   Options
	log *slog.Logger
}

// New returns a station over o.Conn.
func New(o Options) (*Station, error) {
	if o.Conn == nil {
		return nil, fmt.Errorf("ground: no MQTT connection")
	}
	if o.RetainedWait <= 0 {
		o.RetainedWait = 300 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Station{o: o, log: o.Logger}, nil
}

// Topics returns the station's topic layout.
func (s *Station) Topics() mqttapi.Topics { return s.o.Topics }

// Drone returns the topics of drone id.
func (s *Station) Drone(id string) (mqttapi.DroneTopics, error) { return s.o.Topics.Drone(id) }

// retained collects the retained messages on filter: it subscribes, waits
// RetainedWait after the last one, and unsubscribes.
func (s *Station) retained(ctx context.Context, filter string) ([]mqttc.Message, error) {
	var (
		mu   sync.Mutex
		msgs []mqttc.Message
	)
	got := make(chan struct{}, 1)
	if err := s.o.Conn.Subscribe(ctx, filter, 1, func(m mqttc.Message) {
		if !m.Retain {
			return
		}
		mu.Lock()
		msgs = append(msgs, m)
		mu.Unlock()
		select {
		case got <- struct{}{}:
		default:
		}
	}); err != nil {
		return nil, fmt.Errorf("ground: %w", err)
	}
	defer s.o.Conn.Unsubscribe(context.WithoutCancel(ctx), filter)
	t := time.NewTimer(s.o.RetainedWait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-got:
			t.Reset(s.o.RetainedWait)
		case <-t.C:
			mu.Lock()
			defer mu.Unlock()
			return append([]mqttc.Message(nil), msgs...), nil
		}
	}
}

// one returns the retained message on topic, or nil.
func (s *Station) one(ctx context.Context, topic string) (*mqttc.Message, error) {
	ms, err := s.retained(ctx, topic)
	if err != nil || len(ms) == 0 {
		return nil, err
	}
	m := ms[len(ms)-1]
	if len(m.Payload) == 0 {
		return nil, nil
	}
	return &m, nil
}

// Desired returns the manifest retained on a desired topic, or nil. The
// signature is not checked: the ground reads back what it signed.
func (s *Station) Desired(ctx context.Context, topic string) (*mqttapi.Manifest, error) {
	m, err := s.one(ctx, topic)
	if err != nil || m == nil {
		return nil, err
	}
	env, err := mqttapi.DecodeEnvelope(m.Payload)
	if err != nil {
		return nil, fmt.Errorf("ground: desired state on %s: %w", topic, err)
	}
	man, err := mqttapi.DecodeManifest(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("ground: desired state on %s: %w", topic, err)
	}
	return man, nil
}

// Reported returns the drone's retained reported state, or nil.
func (s *Station) Reported(ctx context.Context, id string) (*mqttapi.Reported, error) {
	d, err := s.Drone(id)
	if err != nil {
		return nil, err
	}
	m, err := s.one(ctx, d.Reported)
	if err != nil || m == nil {
		return nil, err
	}
	r, err := mqttapi.DecodeReported(m.Payload)
	if err != nil {
		return nil, fmt.Errorf("ground: reported state of %s: %w", id, err)
	}
	return r, nil
}
