package mqttc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Message is one MQTT message.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Options configure a client. The zero value, with Broker set, is valid.
type Options struct {
	// Broker is the server URL: tcp://host:1883, or ssl:// (or tls://,
	// mqtts://) for TLS.
	Broker   string
	ClientID string // default "inflight-<pid>-<time>"
	Username string
	Password string

	// TLS: CAFile verifies the server (system roots when empty); CertFile
	// and KeyFile present a client certificate. TLSConfig, when set, is
	// used as is instead.
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
	TLSConfig  *tls.Config

	// Will is published by the broker when the connection drops without a
	// clean disconnect (the drone's retained status "offline").
	Will *Message

	// PersistentSession asks the broker to keep subscriptions and queued
	// QoS 1 messages across reconnects (clean session off). ClientID must
	// then be stable.
	PersistentSession bool
	// ConnectRetry keeps trying the first connect until ctx ends (an agent
	// starting before its broker); otherwise the first failure is returned
	// (a command line tool).
	ConnectRetry bool

	KeepAlive            time.Duration // default 10s
	ConnectTimeout       time.Duration // default 5s
	MaxReconnectInterval time.Duration // default 5s

	// OnConnect runs after every connect and reconnect, once the
	// subscriptions are in place: publish the online status and the
	// reported state there. It runs on its own goroutine.
	OnConnect func(*Client)
	// OnConnectionLost is told why a connection dropped; paho reconnects.
	OnConnectionLost func(error)

	Logger *slog.Logger // default: discard
}

func (o *Options) defaults() {
	if o.ClientID == "" {
		o.ClientID = fmt.Sprintf("inflight-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 10 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.MaxReconnectInterval <= 0 {
		o.MaxReconnectInterval = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// TLSFromFiles builds a client TLS configuration: caFile (PEM) verifies the
// server, certFile and keyFile (PEM) are the client certificate. Empty
// arguments are left out.
func TLSFromFiles(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("mqttc: CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqttc: CA %s: no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("mqttc: client certificate needs both a cert file and a key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("mqttc: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

type subscription struct {
	qos     byte
	handler func(Message)
}

// Client is a connected MQTT client.
type Client struct {
	pc  mqtt.Client
	log *slog.Logger

	mu   sync.Mutex
	subs map[string]subscription
}

// Connect connects to the broker. It returns once connected, or with an
// error when the connection fails (without ConnectRetry) or ctx ends.
// After that the client reconnects by itself until Close.
func Connect(ctx context.Context, o Options) (*Client, error) {
	o.defaults()
	if o.Broker == "" {
		return nil, fmt.Errorf("mqttc: no broker URL")
	}
	c := &Client{log: o.Logger.With("broker", o.Broker, "client_id", o.ClientID), subs: map[string]subscription{}}
	po := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID(o.ClientID).
		SetCleanSession(!o.PersistentSession).
		SetKeepAlive(o.KeepAlive).
		SetPingTimeout(o.KeepAlive/2 + time.Second).
		SetConnectTimeout(o.ConnectTimeout).
		SetWriteTimeout(o.ConnectTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(o.MaxReconnectInterval).
		SetConnectRetry(o.ConnectRetry).
		SetConnectRetryInterval(time.Second).
		SetOrderMatters(false).
		SetResumeSubs(false) // we re-subscribe ourselves, for clean and persistent sessions alike
	if o.Username != "" {
		po.SetUsername(o.Username)
		po.SetPassword(o.Password)
	}
	switch {
	case o.TLSConfig != nil:
		po.SetTLSConfig(o.TLSConfig)
	case o.CAFile != "" || o.CertFile != "" || o.ServerName != "":
		cfg, err := TLSFromFiles(o.CAFile, o.CertFile, o.KeyFile, o.ServerName)
		if err != nil {
			return nil, err
		}
		po.SetTLSConfig(cfg)
	}
	if w := o.Will; w != nil {
		po.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retain)
	}
	// paho calls the handler on its own goroutine; Connect waits for its
	// first run so that a Subscribe right after Connect cannot race with it
	// (which would subscribe twice and deliver retained messages twice).
	ready := make(chan struct{})
	var once sync.Once
	po.SetOnConnectHandler(func(mqtt.Client) {
		c.log.Info("mqtt connected")
		c.resubscribe()
		once.Do(func() { close(ready) })
		if o.OnConnect != nil {
			o.OnConnect(c)
		}
	})
	po.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		c.log.Warn("mqtt connection lost", "err", err)
		if o.OnConnectionLost != nil {
			o.OnConnectionLost(err)
		}
	})
	c.pc = mqtt.NewClient(po)
	if err := wait(ctx, c.pc.Connect()); err != nil {
		c.pc.Disconnect(0)
		return nil, fmt.Errorf("mqttc: connect %s: %w", o.Broker, err)
	}
	select {
	case <-ready:
	case <-ctx.Done():
		c.pc.Disconnect(0)
		return nil, fmt.Errorf("mqttc: connect %s: %w", o.Broker, ctx.Err())
	}
	return c, nil
}

func wait(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) resubscribe() {
	c.mu.Lock()
	subs := make(map[string]subscription, len(c.subs))
	for f, s := range c.subs {
		subs[f] = s
	}
	c.mu.Unlock()
	for f, s := range subs {
		t := c.pc.Subscribe(f, s.qos, c.wrap(s.handler))
		if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
			c.log.Error("mqtt re-subscribe failed", "filter", f, "err", t.Error())
		}
	}
}

func (c *Client) wrap(h func(Message)) mqtt.MessageHandler {
	return func(_ mqtt.Client, m mqtt.Message) {
		h(Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retain: m.Retained()})
	}
}

// Publish sends m and, for QoS 1 and 2, waits for the broker's
// acknowledgement or the end of ctx. While reconnecting, QoS 1 and 2
// messages are queued and sent on reconnect.
func (c *Client) Publish(ctx context.Context, m Message) error {
	if err := wait(ctx, c.pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload)); err != nil {
		return fmt.Errorf("mqttc: publish %s: %w", m.Topic, err)
	}
	return nil
}

// Subscribe subscribes to filter and calls h for every message, on paho's
// goroutines (h must not block for long). The subscription is renewed after
// every reconnect, and the broker then sends retained messages again: h must
// be idempotent (the inflight protocol is: the same serial is a no-op).
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h func(Message)) error {
	c.mu.Lock()
	c.subs[filter] = subscription{qos: qos, handler: h}
	c.mu.Unlock()
	if !c.pc.IsConnectionOpen() {
		return nil // subscribed on reconnect
	}
	if err := wait(ctx, c.pc.Subscribe(filter, qos, c.wrap(h))); err != nil {
		return fmt.Errorf("mqttc: subscribe %s: %w", filter, err)
	}
	return nil
}

// Unsubscribe drops filter.
func (c *Client) Unsubscribe(ctx context.Context, filter string) error {
	c.mu.Lock()
	delete(c.subs, filter)
	c.mu.Unlock()
	if !c.pc.IsConnectionOpen() {
		return nil
	}
	if err := wait(ctx, c.pc.Unsubscribe(filter)); err != nil {
		return fmt.Errorf("mqttc: unsubscribe %s: %w", filter, err)
	}
	return nil
}

// Connected reports whether the connection is up now.
func (c *Client) Connected() bool { return c.pc.IsConnectionOpen() }

// Close disconnects cleanly (so the broker does not send the will),
// waiting up to quiesce for in-flight work.
func (c *Client) Close(quiesce time.Duration) {
	c.pc.Disconnect(uint(quiesce / time.Millisecond))
}

// Paho returns the underlying paho client, for what this package does not
// cover.
func (c *Client) Paho() mqtt.Client { return c.pc }
