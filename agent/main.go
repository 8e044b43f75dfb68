package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/inflight-ota/inflight/agent/runtime/docker"
	"github.com/inflight-ota/inflight/agent/runtime/process"
)

// Main builds the configured runtime and runs the agent until ctx ends.
func Main(ctx context.Context, cfg *Config, log *slog.Logger) error {
	var rt Runtime
	switch cfg.Runtime.Kind {
	case "process":
		p, err := process.New(process.Options{Dir: cfg.Runtime.ProcessDir, Logger: log})
		if err != nil {
			return err
		}
		rt = p
	default:
		d, err := docker.New(&docker.Options{Logger: log})
		if err != nil {
			return err
		}
		defer d.Close()
		rt = d
	}
	a, err := New(Options{Config: cfg, Runtime: rt, Logger: log})
	if err != nil {
		return err
	}
	log.Info("inflight-agent starting", "drone", cfg.Drone, "runtime", rt.Name(), "broker", cfg.MQTT.Broker, "state_dir", cfg.Paths.StateDir)
	if err := a.Run(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
