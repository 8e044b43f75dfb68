package broker

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

func TestRetainedAndAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := Start(Options{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := mqttc.Connect(ctx, mqttc.Options{Broker: b.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0)
	if err := c.Publish(ctx, mqttc.Message{Topic: "a/b", Payload: []byte("x"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	c2, err := mqttc.Connect(ctx, mqttc.Options{Broker: b.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(0)
	got := make(chan mqttc.Message, 1)
	if err := c2.Subscribe(ctx, "a/+", 1, func(m mqttc.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Payload) != "x" || !m.Retain {
			t.Fatalf("got %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("retained message not delivered")
	}

	// With an auth ledger, a wrong password is refused.
	f := filepath.Join(t.TempDir(), "auth.yaml")
	os.WriteFile(f, []byte("auth:\n  - username: ground\n    password: secret\n    allow: true\n"), 0o600)
	ab, err := Start(Options{Listen: "127.0.0.1:0", AuthFile: f})
	if err != nil {
		t.Fatal(err)
	}
	defer ab.Close()
	if c, err := mqttc.Connect(ctx, mqttc.Options{Broker: ab.URL(), Username: "ground", Password: "nope"}); err == nil {
		c.Close(0)
		t.Fatal("wrong password accepted")
	}
	ok, err := mqttc.Connect(ctx, mqttc.Options{Broker: ab.URL(), Username: "ground", Password: "secret"})
	if err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	ok.Close(0)
}
