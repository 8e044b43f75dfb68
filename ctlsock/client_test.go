package ctlsock_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/ctlsock"
	"github.com/inflight-ota/inflight/ctlsock/ctlsocktest"
	"github.com/inflight-ota/inflight/flightctl"
)

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestSocketPaths(t *testing.T) {
	if got := ctlsock.SocketPath("/run/inflight", ""); got != "/run/inflight/control.sock" {
		t.Errorf("SocketPath unnamed = %s", got)
	}
	if got := ctlsock.SocketPath("/run/inflight", "ctl-s7"); got != "/run/inflight/control.ctl-s7.sock" {
		t.Errorf("SocketPath named = %s", got)
	}
	if got := ctlsock.HandoffSocketName("ctl-s7"); got != "handoff.ctl-s7.sock" {
		t.Errorf("HandoffSocketName = %s", got)
	}
}

func TestStatusAndHandoffCommands(t *testing.T) {
	dir := shortDir(t)
	srv, err := ctlsocktest.Listen(filepath.Join(dir, "c.sock"), ctlsock.Status{Version: "1.0.0", Role: "active", Mode: "hover", Armed: true, AltM: 2.5, MotorsUS: [4]float64{1500, 1501, 1502, 1503}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var gotStart ctlsock.HandoffStart
	var gotV int
	srv.Handle(ctlsock.CmdHandoffStart, func(raw json.RawMessage) (any, error) {
		var r struct {
			V int `json:"v"`
			ctlsock.HandoffStart
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, err
		}
		gotStart, gotV = r.HandoffStart, r.V
		return ctlsock.Progress{Phase: ctlsock.PhaseHello, Role: "v1"}, nil
	})
	srv.Handle(ctlsock.CmdHandoffProgress, func(json.RawMessage) (any, error) {
		return ctlsock.Progress{Phase: ctlsock.PhaseProbation, SwitchTick: 1234, MaxDivergence: 0.01, Durations: ctlsock.Durations{Sync: 40 * time.Millisecond}}, nil
	})
	srv.Handle(ctlsock.CmdHandoffAbort, func(json.RawMessage) (any, error) {
		return nil, &ctlsock.Error{Msg: "handoff over", Reason: "terminal"}
	})

	c := ctlsock.New(srv.Path(), time.Second)
	defer c.Close()
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != "hover" || st.AltM != 2.5 || st.MotorsUS[3] != 1503 || !st.HoldsAuthority() || st.FlightPhase() != "hover" {
		t.Errorf("status %+v", st)
	}
	p, err := c.HandoffStart(ctx, ctlsock.HandoffStart{To: "handoff.v2.sock", Peer: "v2", ProbationMS: 5000, AllowedPhases: []string{"hover"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Phase != ctlsock.PhaseHello || gotV != 1 || gotStart.To != "handoff.v2.sock" || gotStart.ProbationMS != 5000 || gotStart.AllowedPhases[0] != "hover" {
		t.Errorf("start: progress %+v, request v=%d %+v", p, gotV, gotStart)
	}
	p, err = c.HandoffProgress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Switched() || p.Terminal() || p.SwitchTick != 1234 || p.Durations.Sync != 40*time.Millisecond {
		t.Errorf("progress %+v", p)
	}
	_, err = c.HandoffAbort(ctx, "operator")
	var ce *ctlsock.Error
	if !errors.Is(err, ctlsock.ErrRefused) || !errors.As(err, &ce) || ce.Reason != "terminal" {
		t.Errorf("abort: %v, want a refusal with reason terminal", err)
	}
	if err := c.Call(ctx, "fly_to_the_moon", nil, nil); !errors.Is(err, ctlsock.ErrUnknownCommand) {
		t.Errorf("unknown command: %v", err)
	}
	// The connection survives refusals: the same one answers again.
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := srv.Calls(ctlsock.CmdStatus); n != 2 {
		t.Errorf("%d status calls served, want 2", n)
	}
}

func TestUnavailableAndRedial(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "c.sock")
	c := ctlsock.New(path, 200*time.Millisecond)
	defer c.Close()
	if _, err := c.Status(context.Background()); !errors.Is(err, ctlsock.ErrUnavailable) {
		t.Fatalf("no socket: %v, want ErrUnavailable", err)
	}
	srv, err := ctlsocktest.Listen(path, ctlsock.Status{Role: "standby"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(context.Background()); err != nil || st.HoldsAuthority() {
		t.Fatalf("after listen: %+v, %v", st, err)
	}
	srv.Close()
	if _, err := c.Status(context.Background()); !errors.Is(err, ctlsock.ErrUnavailable) {
		t.Fatalf("server gone: %v, want ErrUnavailable", err)
	}
	srv, err = ctlsocktest.Listen(path, ctlsock.Status{Role: "active"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if st, err := c.Status(context.Background()); err != nil || !st.HoldsAuthority() {
		t.Fatalf("server back: %+v, %v", st, err)
	}
}

// A controller that accepts but never answers must not hang the agent.
func TestTimeoutOnHungController(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "c.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	c := ctlsock.New(path, 50*time.Millisecond)
	defer c.Close()
	if _, err := c.Status(context.Background()); !errors.Is(err, ctlsock.ErrUnavailable) {
		t.Fatalf("hung controller: %v, want ErrUnavailable after the timeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Status(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestBadResponses(t *testing.T) {
	for name, reply := range map[string]string{
		"not json":     "hello\n",
		"no version":   `{"ok":true}` + "\n",
		"v2":           `{"v":2,"ok":true}` + "\n",
		"other cmd":    `{"v":1,"cmd":"arm","ok":true}` + "\n",
		"wrong result": `{"v":1,"ok":true,"result":{"mode":3}}` + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := shortDir(t)
			path := filepath.Join(dir, "c.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 512)
				c.Read(buf)
				c.Write([]byte(reply))
			}()
			c := ctlsock.New(path, time.Second)
			defer c.Close()
			if _, err := c.Status(context.Background()); !errors.Is(err, ctlsock.ErrProtocol) {
				t.Fatalf("%q: %v, want ErrProtocol", reply, err)
			}
		})
	}
}

// The client decodes what flightctl's real control server sends, and its
// requests are what that server parses.
func TestAgainstFlightctlControlServer(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "c.sock")
	srv := flightctl.NewControlServer(nil)
	srv.Handle("status", func(ctx context.Context, req *flightctl.Request) (any, error) {
		return flightctl.Status{Version: "1.2.3", Schema: 3, Role: "active", Mode: "hover", Armed: true, Airborne: true, AltM: 1.5, MotorsUS: [4]float64{1510, 1520, 1530, 1540}, Ticks: flightctl.Summary{RateHz: 400, JitterP99US: 12}}, nil
	})
	srv.Handle("handoff_start", func(ctx context.Context, req *flightctl.Request) (any, error) {
		var a ctlsock.HandoffStart
		if err := json.Unmarshal(req.Raw, &a); err != nil {
			return nil, err
		}
		if a.To == "" {
			return nil, errors.New("no to")
		}
		return ctlsock.Progress{Phase: "hello", PeerVersion: a.Peer}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, path) }()
	defer func() { cancel(); <-done }()
	c := ctlsock.New(path, time.Second)
	defer c.Close()
	var st *ctlsock.Status
	var err error
	for i := 0; i < 200; i++ {
		if st, err = c.Status(ctx); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "1.2.3" || st.Schema != 3 || !st.Airborne || st.MotorsUS[1] != 1520 || st.Ticks.RateHz != 400 || st.Ticks.JitterP99US != 12 || st.BatteryV != nil {
		t.Errorf("status %+v", st)
	}
	p, err := c.HandoffStart(ctx, ctlsock.HandoffStart{To: "handoff.x.sock", Peer: "x"})
	if err != nil || p.PeerVersion != "x" {
		t.Fatalf("handoff_start: %+v, %v", p, err)
	}
	if _, err := c.HandoffAbort(ctx, "r"); !errors.Is(err, ctlsock.ErrUnknownCommand) {
		t.Errorf("handoff_abort unknown to this server: %v", err)
	}
}
