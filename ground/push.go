package ground

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/inflight-ota/inflight/ground/keys"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
	"github.com/inflight-ota/inflight/transfer"
)

// PushOptions describe one update.
type PushOptions struct {
	Drone string // exactly one of Drone and Fleet
	Fleet string
	Image ImageInfo
	// Version defaults to the image's version label.
	Version   string
	Expires   time.Duration // default 1h
	Probation time.Duration // 0: the agent's default
	// SwitchDeadline, BatteryFloorPct, NoGroundSwap tune the agent (zero:
	// its defaults).
	SwitchDeadline  time.Duration
	BatteryFloorPct float64
	NoGroundSwap    bool
	// Archive, when set, sends the image over MQTT (Drone only); the
	// manifest then names the archive and transfer "mqtt".
	Archive  *Archive
	Transfer TransferOptions
	// OnPublished, when set, is called once the manifest is published,
	// before an MQTT transfer starts.
	OnPublished func(PushResult)
}

// TransferOptions tune an MQTT transfer.
type TransferOptions struct {
	ChunkSize  int
	Window     int
	Stall      time.Duration
	OnProgress func(transfer.SendProgress)
}

// PushResult says what was published.
type PushResult struct {
	Topic      string           `json:"topic"`
	Serial     uint64           `json:"serial"`
	PrevSerial uint64           `json:"prev_serial,omitempty"`
	KeyID      string           `json:"key_id"`
	Manifest   mqttapi.Manifest `json:"manifest"`
	Transfer   *transfer.Stats  `json:"transfer,omitempty"`
}

// Push signs the manifest of o with signer and publishes it retained (QoS
// 1) on the drone's or fleet's desired topic, with a serial above the one
// retained there and above what the drone last applied. With an archive it
// then sends the image over MQTT until the drone holds it, verified.
func (s *Station) Push(ctx context.Context, signer *keys.Signer, o PushOptions) (PushResult, error) {
	if (o.Drone == "") == (o.Fleet == "") {
		return PushResult{}, fmt.Errorf("ground: push needs exactly one of a drone and a fleet: %w", mqttapi.ErrInvalid)
	}
	if o.Archive != nil && o.Drone == "" {
		return PushResult{}, fmt.Errorf("ground: an MQTT transfer goes to one drone, not a fleet: %w", mqttapi.ErrInvalid)
	}
	if o.Expires <= 0 {
		o.Expires = time.Hour
	}
	if o.Version == "" {
		o.Version = o.Image.Version()
	}
	if o.Version == "" {
		return PushResult{}, fmt.Errorf("ground: image %s has no %s label; give the version: %w", o.Image.Ref, LabelVersion, mqttapi.ErrInvalid)
	}
	var topic string
	var last uint64
	if o.Drone != "" {
		d, err := s.Drone(o.Drone)
		if err != nil {
			return PushResult{}, err
		}
		topic = d.Desired
		if rep, err := s.Reported(ctx, o.Drone); err != nil {
			s.log.Warn("reported state unreadable", "drone", o.Drone, "err", err)
		} else if rep != nil {
			last = rep.LastSerial
		}
	} else {
		t, err := s.o.Topics.FleetDesired(o.Fleet)
		if err != nil {
			return PushResult{}, err
		}
		topic = t
	}
	prev, err := s.Desired(ctx, topic)
	if err != nil {
		s.log.Warn("retained desired state unreadable; serial from the clock", "topic", topic, "err", err)
	}
	if prev != nil && prev.Serial > last {
		last = prev.Serial
	}
	now := s.o.Now().UTC().Truncate(time.Millisecond)
	m := mqttapi.Manifest{
		Kind: mqttapi.KindUpdate, Drone: o.Drone, Fleet: o.Fleet,
		Serial: mqttapi.NextSerial(last, now), Version: o.Version,
		Image:   mqttapi.Image{Ref: o.Image.Ref},
		Arch:    o.Image.Arch,
		Handoff: o.Image.Handoff,
		// A little slack for a drone whose clock is behind.
		IssuedAt:  now,
		ExpiresAt: now.Add(o.Expires),
		Options: mqttapi.Options{
			Probation:       mqttapi.Duration(o.Probation),
			SwitchDeadline:  mqttapi.Duration(o.SwitchDeadline),
			BatteryFloorPct: o.BatteryFloorPct,
		},
	}
	if o.NoGroundSwap {
		f := false
		m.Options.AllowGroundSwap = &f
	}
	if o.Archive != nil {
		m.Image.Transfer = mqttapi.TransferMQTT
		m.Image.Archive = o.Archive.Manifest()
	}
	raw, err := signer.SignManifest(&m)
	if err != nil {
		return PushResult{}, fmt.Errorf("ground: %w", err)
	}
	if err := s.o.Conn.Publish(ctx, mqttc.Message{Topic: topic, Payload: raw, QoS: 1, Retain: true}); err != nil {
		return PushResult{}, fmt.Errorf("ground: %w", err)
	}
	res := PushResult{Topic: topic, Serial: m.Serial, PrevSerial: last, KeyID: signer.KeyID(), Manifest: m}
	s.log.Info("manifest published", "topic", topic, "serial", m.Serial, "version", m.Version, "image", m.Image.Ref)
	if o.OnPublished != nil {
		o.OnPublished(res)
	}
	if o.Archive == nil {
		return res, nil
	}
	st, err := s.SendArchive(ctx, o.Drone, o.Archive, o.Transfer)
	res.Transfer = &st
	return res, err
}

// SendArchive sends a over MQTT to drone id, resuming from what the drone
// reports it holds, and returns once the drone holds it verified.
func (s *Station) SendArchive(ctx context.Context, id string, a *Archive, o TransferOptions) (transfer.Stats, error) {
	d, err := s.Drone(id)
	if err != nil {
		return transfer.Stats{}, err
	}
	f, err := os.Open(a.Path)
	if err != nil {
		return transfer.Stats{}, fmt.Errorf("ground: %w", err)
	}
	defer f.Close()
	snd, err := transfer.NewSender(transfer.SenderOptions{
		Conn: s.o.Conn, Drone: d, Archive: f, Digest: a.Digest, Size: a.Size,
		ChunkSize: o.ChunkSize, Window: o.Window, Stall: o.Stall, OnProgress: o.OnProgress, Logger: s.log,
	})
	if err != nil {
		return transfer.Stats{}, err
	}
	return snd.Run(ctx)
}

// Request signs a rollback or cancel request for drone id and publishes it
// (QoS 1, not retained) on the drone's requests topic, with a serial above
// the last request the drone reported.
func (s *Station) Request(ctx context.Context, signer *keys.Signer, id, kind, reason string, updateSerial uint64, expires time.Duration) (mqttapi.Request, error) {
	d, err := s.Drone(id)
	if err != nil {
		return mqttapi.Request{}, err
	}
	if expires <= 0 {
		expires = 10 * time.Minute
	}
	var last uint64
	rep, err := s.Reported(ctx, id)
	if err != nil {
		s.log.Warn("reported state unreadable; request serial from the clock", "drone", id, "err", err)
	} else if rep != nil {
		last = rep.LastRequestSerial
	}
	now := s.o.Now().UTC().Truncate(time.Millisecond)
	r := mqttapi.Request{Kind: kind, Drone: id, Serial: mqttapi.NextSerial(last, now), UpdateSerial: updateSerial,
		Reason: reason, IssuedAt: now, ExpiresAt: now.Add(expires)}
	raw, err := signer.SignRequest(&r)
	if err != nil {
		return r, fmt.Errorf("ground: %w", err)
	}
	if err := s.o.Conn.Publish(ctx, mqttc.Message{Topic: d.Requests, Payload: raw, QoS: 1}); err != nil {
		return r, fmt.Errorf("ground: %w", err)
	}
	s.log.Info("request published", "drone", id, "kind", kind, "serial", r.Serial)
	return r, nil
}
