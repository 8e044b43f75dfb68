package flightctl

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// realClock paces the test loop at its period without spinning.
type realClock struct{ start time.Time }

func (c *realClock) Now() time.Duration { return time.Since(c.start) }
func (c *realClock) SleepUntil(t time.Duration) {
	if d := t - c.Now(); d > 0 {
		time.Sleep(d)
	}
}

func TestControlSocket(t *testing.T) {
	l, _, _, _ := newTestLoop()
	clk := &realClock{start: time.Now()}
	l.Clock = clk
	l.Source.(*SensorSource).Clock = clk
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(t.TempDir(), ControlSocketName)
	srv := NewControlServer(nil)
	RegisterFlightCommands(srv, l, "test")
	srv.Handle("echo", func(ctx context.Context, req *Request) (any, error) { return json.RawMessage(req.Raw), nil })
	done := make(chan struct{}, 2)
	go func() { l.Run(ctx); done <- struct{}{} }()
	go func() { srv.Serve(ctx, path); done <- struct{}{} }()
	var c net.Conn
	var err error
	for range 100 {
		if c, err = net.Dial("unix", path); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := bufio.NewScanner(c)
	do := func(req string) Response {
		t.Helper()
		if _, err := c.Write([]byte(req + "\n")); err != nil {
			t.Fatal(err)
		}
		if !sc.Scan() {
			t.Fatalf("no response to %s: %v", req, sc.Err())
		}
		var r Response
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.V != ControlVersion {
			t.Fatalf("response %s: %v", sc.Text(), err)
		}
		t.Logf("%s → %s", req, sc.Text())
		return r
	}
	r := do(`{"v":1,"cmd":"status"}`)
	st, _ := json.Marshal(r.Result)
	if !r.OK || !strings.Contains(string(st), `"schema":1`) || !strings.Contains(string(st), `"mode":"disarmed"`) {
		t.Fatalf("status: %+v", r)
	}
	if r := do(`{"v":1,"cmd":"hover"}`); r.OK || r.Reason != "bad_mode" {
		t.Fatalf("hover on the ground: %+v", r)
	}
	// Arm once calibrated (1 s still).
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := do(`{"v":1,"cmd":"arm"}`)
		if r.OK {
			break
		}
		if r.Reason != "gyro_not_calibrated" || time.Now().After(deadline) {
			t.Fatalf("arm: %+v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := do(`{"v":1,"cmd":"mission","spec":"takeoff:2m,hover:1s,land"}`); !r.OK {
		t.Fatalf("mission: %+v", r)
	}
	if r := do(`{"v":1,"cmd":"mission","spec":"takeoff:-1m"}`); r.OK || !strings.Contains(r.Error, "bad mission") {
		t.Fatalf("bad mission: %+v", r)
	}
	if r := do(`{"v":1,"cmd":"disarm"}`); !r.OK {
		t.Fatalf("disarm on the ground: %+v", r)
	}
	if r := do(`{"v":1,"cmd":"fly"}`); r.OK || !strings.Contains(r.Error, "unknown command") {
		t.Fatalf("unknown: %+v", r)
	}
	if r := do(`{"v":2,"cmd":"status"}`); r.OK {
		t.Fatalf("v2 accepted: %+v", r)
	}
	if r := do(`not json`); r.OK {
		t.Fatalf("junk accepted: %+v", r)
	}
	if r := do(`{"v":1,"cmd":"echo","x":1}`); !r.OK {
		t.Fatalf("added command: %+v", r)
	}
	cancel()
	<-done
	<-done
}
