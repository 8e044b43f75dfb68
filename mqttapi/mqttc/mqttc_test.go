package mqttc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/inflight-ota/inflight/internal/testsvc"
	"github.com/inflight-ota/inflight/mqttapi"
)

// startBroker runs an in-process mochi broker on 127.0.0.1:0 and returns it
// with its address.
func startBroker(t *testing.T, tlsCfg *tls.Config) (*mochi.Server, string) {
	t.Helper()
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0", TLSConfig: tlsCfg})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testsvc.CloseBroker(srv) })
	return srv, l.Address()
}

func recv(t *testing.T, ch <-chan Message, what string) Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
		return Message{}
	}
}

func TestPublishSubscribeWillReconnect(t *testing.T) {
	_, brokerAddr := startBroker(t, nil)
	link := newLink(t, brokerAddr)
	addr := link.addr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tp, _ := mqttapi.Topics{}.Drone("drone-1")

	onlines := make(chan struct{}, 4)
	agent, err := Connect(ctx, Options{
		Broker:               "tcp://" + addr,
		ClientID:             "agent-drone-1",
		Will:                 &Message{Topic: tp.Status, Payload: mqttapi.OfflineWill(), QoS: 1, Retain: true},
		MaxReconnectInterval: 200 * time.Millisecond,
		Logger:               slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		OnConnect: func(c *Client) {
			st, _ := mqttapi.Status{Online: true, At: time.Now()}.Marshal()
			if err := c.Publish(ctx, Message{Topic: tp.Status, Payload: st, QoS: 1, Retain: true}); err != nil {
				t.Errorf("publish online: %v", err)
			}
			onlines <- struct{}{}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close(0)
	recv(t, chanOf(onlines), "first OnConnect")
	requests := make(chan Message, 4)
	if err := agent.Subscribe(ctx, tp.Requests, 1, func(m Message) { requests <- m }); err != nil {
		t.Fatal(err)
	}

	// The ground talks to the broker directly, not over the agent's link.
	ground, err := Connect(ctx, Options{Broker: "tcp://" + brokerAddr, ClientID: "ground"})
	if err != nil {
		t.Fatal(err)
	}
	defer ground.Close(0)
	status := make(chan Message, 8)
	if err := ground.Subscribe(ctx, tp.Status, 1, func(m Message) { status <- m }); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, status, "retained status"); !m.Retain || !online(t, m) {
		t.Fatalf("first status %+v", m)
	}
	if err := ground.Publish(ctx, Message{Topic: tp.Requests, Payload: []byte("r1"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, requests, "request"); string(m.Payload) != "r1" {
		t.Fatalf("request %q", m.Payload)
	}

	// Cut the agent's link and keep it down: the broker publishes the will
	// (offline). Once the link is back, the agent reconnects by itself, says
	// online again and has its subscription back.
	link.cut()
	if m := recv(t, status, "last will"); online(t, m) {
		t.Fatalf("status after the cut: %s", m.Payload)
	}
	// The will is retained: a ground station starting now sees offline.
	late, err := Connect(ctx, Options{Broker: "tcp://" + brokerAddr, ClientID: "late"})
	if err != nil {
		t.Fatal(err)
	}
	lateStatus := make(chan Message, 1)
	if err := late.Subscribe(ctx, tp.Status, 1, func(m Message) { lateStatus <- m }); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, lateStatus, "retained will"); online(t, m) || !m.Retain {
		t.Fatalf("late subscriber sees %s (retained %v)", m.Payload, m.Retain)
	}
	late.Close(0)
	link.restore()
	recv(t, chanOf(onlines), "OnConnect after reconnect")
	if m := recv(t, status, "status after reconnect"); !online(t, m) {
		t.Fatalf("status after reconnect: %s", m.Payload)
	}
	if err := ground.Publish(ctx, Message{Topic: tp.Requests, Payload: []byte("r2"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, requests, "request after reconnect"); string(m.Payload) != "r2" {
		t.Fatalf("request %q", m.Payload)
	}

	// A clean close sends no will.
	agent.Close(100 * time.Millisecond)
	select {
	case m := <-status:
		t.Fatalf("status after a clean close: %s", m.Payload)
	case <-time.After(300 * time.Millisecond):
	}
}

// link is a TCP relay on 127.0.0.1 between a client and the broker that a
// test can cut and keep down, as a radio link drops.
type link struct {
	addr  string
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func newLink(t *testing.T, to string) *link {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lk := &link{addr: l.Addr().String()}
	t.Cleanup(func() { l.Close(); lk.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			lk.mu.Lock()
			if lk.down {
				lk.mu.Unlock()
				c.Close()
				continue
			}
			b, err := net.Dial("tcp", to)
			if err != nil {
				lk.mu.Unlock()
				c.Close()
				continue
			}
			lk.conns = append(lk.conns, c, b)
			lk.mu.Unlock()
			go func() { io.Copy(b, c); b.Close() }()
			go func() { io.Copy(c, b); c.Close() }()
		}
	}()
	return lk
}

func (lk *link) cut() {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	lk.down = true
	for _, c := range lk.conns {
		c.Close()
	}
	lk.conns = nil
}

func (lk *link) restore() {
	lk.mu.Lock()
	lk.down = false
	lk.mu.Unlock()
}

func chanOf(c chan struct{}) <-chan Message {
	out := make(chan Message, 1)
	go func() {
		select {
		case <-c:
			out <- Message{}
		case <-time.After(15 * time.Second):
		}
	}()
	return out
}

func online(t *testing.T, m Message) bool {
	t.Helper()
	s, err := mqttapi.DecodeStatus(m.Payload)
	if err != nil {
		t.Fatalf("status %q: %v", m.Payload, err)
	}
	return s.Online
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

func TestConnectFailsFast(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Connect(ctx, Options{Broker: "tcp://" + addr}); err == nil {
		t.Fatal("connected to nothing")
	}
	// With ConnectRetry, the context bounds the wait.
	short, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if _, err := Connect(short, Options{Broker: "tcp://" + addr, ConnectRetry: true}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("retrying connect: %v, want deadline exceeded", err)
	}
}

func TestTLSClientCertificate(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := makeCert(t, nil, nil, "inflight test CA", true)
	srvCert, srvKey := makeCert(t, caCert, caKey, "broker", false)
	cliCert, cliKey := makeCert(t, caCert, caKey, "drone-1", false)
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw)
	certFile := writePEM(t, dir, "client.pem", "CERTIFICATE", cliCert.Raw)
	keyFile := writeKey(t, dir, "client.key", cliKey)

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	srvTLS := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	_, addr := startBroker(t, srvTLS)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c, err := Connect(ctx, Options{Broker: "ssl://" + addr, CAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatalf("connect with client certificate: %v", err)
	}
	got := make(chan Message, 1)
	if err := c.Subscribe(ctx, "inflight/drones/drone-1/events", 1, func(m Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, Message{Topic: "inflight/drones/drone-1/events", Payload: []byte("e"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	recv(t, got, "event over TLS")
	c.Close(0)

	// Without the client certificate, the broker refuses.
	if _, err := Connect(ctx, Options{Broker: "ssl://" + addr, CAFile: caFile}); err == nil {
		t.Fatal("connected without a client certificate")
	}
	// Half a client certificate is a configuration error.
	if _, err := TLSFromFiles(caFile, certFile, "", ""); err == nil {
		t.Fatal("cert without key accepted")
	}
}

func makeCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, ca bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeKey(t *testing.T, dir, name string, k *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PRIVATE KEY", der)
}
