package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/transfer"
)

// mqttArchives receives an image archive in chunks over the agent's own
// MQTT connection (package transfer), resuming from its spool in
// <state_dir>/transfers after a restart.
type mqttArchives struct{ a *Agent }

func (m mqttArchives) Fetch(ctx context.Context, man *mqttapi.Manifest, progress func(done, total int64)) (io.ReadCloser, error) {
	a := m.a
	if man.Image.Archive == nil {
		return nil, fmt.Errorf("agent: manifest %d: no archive", man.Serial)
	}
	a.mu.Lock()
	var conn transfer.Conn
	if c, ok := a.mq.(transfer.Conn); ok {
		conn = c
	}
	a.mu.Unlock()
	if conn == nil {
		return nil, fmt.Errorf("agent: MQTT transfer: not connected")
	}
	r, err := transfer.NewReceiver(transfer.ReceiverOptions{
		Conn: conn, Drone: a.topics, Archive: *man.Image.Archive,
		Dir:        filepath.Join(a.cfg.Paths.StateDir, "transfers"),
		OnProgress: func(p transfer.Progress) { progress(p.Bytes, p.Size) },
		Logger:     a.log, Now: a.clock.Now,
	})
	if err != nil {
		return nil, err
	}
	path, err := r.Run(ctx)
	if err != nil {
		return nil, err // the spool stays for a resume
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return &spooled{File: f, r: r}, nil
}

// spooled removes the spool once the archive was read (loaded).
type spooled struct {
	*os.File
	r *transfer.Receiver
}

func (s *spooled) Close() error {
	err := s.File.Close()
	s.r.Remove(context.Background())
	return err
}
