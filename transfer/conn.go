package transfer

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// Conn is the MQTT connection a transfer runs over. *mqttc.Client
// implements it.
type Conn interface {
	Publish(ctx context.Context, m mqttc.Message) error
	Subscribe(ctx context.Context, filter string, qos byte, h func(mqttc.Message)) error
	Unsubscribe(ctx context.Context, filter string) error
}

var _ Conn = (*mqttc.Client)(nil)

// Sentinel errors.
var (
	// ErrStalled: the other side reported no progress for the stall timeout.
	ErrStalled = errors.New("transfer stalled")
	// ErrDigestMismatch: every chunk arrived but the whole archive does not
	// match the signed digest.
	ErrDigestMismatch = errors.New("archive digest mismatch")
	// ErrMismatch: a message belongs to another transfer or plan.
	ErrMismatch = errors.New("transfer mismatch")
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
