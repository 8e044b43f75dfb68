// Package broker is the embedded MQTT broker of groundctl (mochi-mqtt): a
// zero-setup broker for the bench and for a field laptop without
// mosquitto. It keeps retained messages in memory only, allows anonymous
// clients unless an auth file is given, and listens on one TCP address.
//
// It must never listen on an address it was not given, and it keeps no
// state on disk.
package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// DefaultListen is the address the broker listens on unless told
// otherwise: loopback, the standard MQTT port.
const DefaultListen = "127.0.0.1:1883"

// Options configure a Broker. New(Options{}) listens on DefaultListen and
// allows anonymous clients.
type Options struct {
	// Listen is host:port; port 0 picks a free one (see Broker.Addr).
	Listen string
	// AuthFile is a mochi auth ledger (YAML or JSON) with users, auth and
	// ACL rules; when empty, every client is allowed.
	AuthFile string
	// Auth is the ledger itself, used when AuthFile is empty.
	Auth   []byte
	Logger *slog.Logger
}

// Broker is a running embedded broker.
type Broker struct {
	srv  *mqtt.Server
	tcp  *listeners.TCP
	once sync.Once
}

// Start starts the broker and returns once it listens.
func Start(o Options) (*Broker, error) {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ledger := o.Auth
	if o.AuthFile != "" {
		b, err := os.ReadFile(o.AuthFile)
		if err != nil {
			return nil, fmt.Errorf("broker: auth file: %w", err)
		}
		ledger = b
	}
	srv := mqtt.New(&mqtt.Options{Logger: o.Logger, InlineClient: false})
	var err error
	if len(ledger) > 0 {
		err = srv.AddHook(new(auth.Hook), &auth.Options{Data: ledger})
	} else {
		err = srv.AddHook(new(auth.AllowHook), nil)
	}
	if err != nil {
		return nil, fmt.Errorf("broker: auth: %w", err)
	}
	tcp := listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tcp", Address: o.Listen})
	if err := srv.AddListener(tcp); err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", o.Listen, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	return &Broker{srv: srv, tcp: tcp}, nil
}

// Addr is the address the broker listens on, host:port.
func (b *Broker) Addr() string { return b.tcp.Address() }

// URL is the broker's address as a client URL, tcp://host:port.
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// Close stops the broker, disconnecting every client. Retained messages are
// lost.
//
// The close is bounded by closeWait: mochi v2.7.9's Server.Close can
// deadlock when a client (re)connects while it closes (Clients.GetByListener
// takes the clients' read lock twice while Clients.Delete waits for the
// write lock). Past the bound Close returns ErrCloseStuck and the broker's
// goroutines are left to end with the process.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		done := make(chan error, 1)
		go func() { done <- b.srv.Close() }()
		select {
		case err = <-done:
		case <-time.After(closeWait):
			err = ErrCloseStuck
		}
	})
	return err
}

// closeWait bounds Close.
const closeWait = 2 * time.Second

// ErrCloseStuck is returned by Close when the broker did not stop within
// its bound.
var ErrCloseStuck = errors.New("broker: close did not finish in time (a client was connecting as it closed)")

// Run starts a broker and serves until ctx ends. ready, when set, is called
// with the broker once it listens.
func Run(ctx context.Context, o Options, ready func(*Broker)) error {
	b, err := Start(o)
	if err != nil {
		return err
	}
	if ready != nil {
		ready(b)
	}
	<-ctx.Done()
	return b.Close()
}
