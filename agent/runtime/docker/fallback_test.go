package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	rt "github.com/inflight-ota/inflight/agent/runtime"
)

// fakeEngine is just enough of the Engine API for Start: an image, create,
// start, inspect, remove. refuse says where an engine without
// CAP_SYS_RESOURCE refuses a container with ulimits: "create", "start"
// (runc, as dockerd 20.10 here does) or "" (it may raise them).
type fakeEngine struct {
	mu      sync.Mutex
	refuse  string
	creates []container.HostConfig
	ctrs    map[string]*fakeCtr
	removed int
}

type fakeCtr struct {
	name    string
	cfg     container.Config
	host    container.HostConfig
	running bool
}

const rlimitErr = `failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error setting rlimits for ready process: error setting rlimit type 14: operation not permitted: unknown`

var apiPrefix = regexp.MustCompile(`^/v[0-9.]+`)

func (e *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	path := apiPrefix.ReplaceAllString(r.URL.Path, "")
	reply := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if v != nil {
			json.NewEncoder(w).Encode(v)
		}
	}
	fail := func(code int, msg string) { reply(code, map[string]string{"message": msg}) }
	id := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json"), "/start")
	switch {
	case path == "/_ping":
		w.Header().Set("Api-Version", "1.41")
		w.Write([]byte("OK"))
	case strings.HasPrefix(path, "/images/") && r.Method == http.MethodGet:
		reply(200, map[string]any{"Id": "sha256:" + strings.Repeat("ab", 32), "Os": "linux", "Architecture": "amd64",
			"Config": map[string]any{"Labels": map[string]string{rt.LabelVersion: "1.0.0"}}})
	case path == "/containers/create":
		var body struct {
			container.Config
			HostConfig container.HostConfig
		}
		json.NewDecoder(r.Body).Decode(&body)
		e.creates = append(e.creates, body.HostConfig)
		if e.refuse == "create" && len(body.HostConfig.Ulimits) > 0 {
			fail(500, rlimitErr)
			return
		}
		b := make([]byte, 32)
		rand.Read(b)
		id := hex.EncodeToString(b)
		e.ctrs[id] = &fakeCtr{name: r.URL.Query().Get("name"), cfg: body.Config, host: body.HostConfig}
		reply(201, map[string]any{"Id": id, "Warnings": []string{}})
	case strings.HasSuffix(path, "/start"):
		c := e.ctrs[id]
		if c == nil {
			fail(404, "No such container: "+id)
		} else if e.refuse == "start" && len(c.host.Ulimits) > 0 {
			fail(500, rlimitErr)
		} else {
			c.running = true
			w.WriteHeader(204)
		}
	case r.Method == http.MethodDelete:
		if e.ctrs[id] == nil {
			fail(404, "No such container: "+id)
			return
		}
		delete(e.ctrs, id)
		e.removed++
		w.WriteHeader(204)
	case strings.HasSuffix(path, "/json"):
		c := e.ctrs[id]
		if c == nil {
			fail(404, "No such container: "+id)
			return
		}
		status := "created"
		if c.running {
			status = "running"
		}
		reply(200, map[string]any{"Id": id, "Name": "/" + c.name, "Image": c.cfg.Image, "Config": c.cfg, "HostConfig": c.host,
			"State": map[string]any{"Status": status, "Running": c.running, "Pid": 4242}})
	default:
		fail(404, "fake engine: no route "+r.Method+" "+path)
	}
}

func newFakeEngine(t *testing.T, refuse string) (*Runtime, *fakeEngine) {
	e := &fakeEngine{refuse: refuse, ctrs: map[string]*fakeCtr{}}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	cli, err := client.NewClientWithOpts(client.WithHost("tcp://"+srv.Listener.Addr().String()), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	r, err := New(&Options{Client: cli})
	if err != nil {
		t.Fatal(err)
	}
	return r, e
}

// An engine that may not raise rlimits (refusing at create or at start) gets
// the controller started without them, CAP_SYS_NICE kept, the half-made
// container removed, and is not asked again.
func TestRealTimeFallsBackWithoutRlimits(t *testing.T) {
	for _, refuse := range []string{"create", "start", ""} {
		t.Run("refuse="+refuse, func(t *testing.T) {
			r, e := newFakeEngine(t, refuse)
			want, wantCreates, wantRemoved := rt.RealTimeNoRlimits, 2, 0
			switch refuse {
			case "start":
				wantRemoved = 1
			case "":
				want, wantCreates = rt.RealTimeGranted, 1
			}
			spec := func(name string, realtime bool) rt.Spec {
				return rt.Spec{Name: name, Image: "img", Role: rt.RoleCold, RunDir: "/run/x", RealTime: realtime}
			}
			ctx := context.Background()
			c, err := r.Start(ctx, spec("rt1", true))
			if err != nil {
				t.Fatalf("Start with RealTime: %v", err)
			}
			e.mu.Lock()
			creates, removed := len(e.creates), e.removed
			last := e.creates[len(e.creates)-1]
			e.mu.Unlock()
			if c.RealTime != want || !c.Running() || creates != wantCreates || removed != wantRemoved {
				t.Errorf("realtime %q running %v after %d creates, %d removed; want %q after %d, %d", c.RealTime, c.Running(), creates, removed, want, wantCreates, wantRemoved)
			}
			if len(last.CapAdd) != 1 || strings.TrimPrefix(last.CapAdd[0], "CAP_") != "SYS_NICE" || (want == rt.RealTimeNoRlimits) != (len(last.Ulimits) == 0) {
				t.Errorf("started with caps %v ulimits %v", last.CapAdd, last.Ulimits)
			}
			if r.RlimitsRefused() != (refuse != "") {
				t.Errorf("RlimitsRefused = %v", r.RlimitsRefused())
			}
			// The refusal is cached: the next start (v2 in the air) goes
			// straight to what the engine grants.
			c2, err := r.Start(ctx, spec("rt2", true))
			e.mu.Lock()
			creates2 := len(e.creates) - creates
			e.mu.Unlock()
			if err != nil || c2.RealTime != want || creates2 != 1 {
				t.Errorf("second Start: realtime %q after %d creates, %v", c2.RealTime, creates2, err)
			}
			c3, err := r.Start(ctx, spec("plain", false))
			e.mu.Lock()
			last = e.creates[len(e.creates)-1]
			e.mu.Unlock()
			if err != nil || c3.RealTime != rt.RealTimeOff || len(last.CapAdd) != 0 || len(last.Ulimits) != 0 {
				t.Errorf("Start without RealTime: realtime %q caps %v ulimits %v, %v", c3.RealTime, last.CapAdd, last.Ulimits, err)
			}
		})
	}
}

// Other start failures are not mistaken for a refused rlimit.
func TestRlimitRefused(t *testing.T) {
	for msg, want := range map[string]bool{
		rlimitErr: true,
		"crun: setrlimit `RLIMIT_RTPRIO`: Operation not permitted: OCI permission denied":            true,
		"error gathering device information while adding custom device \"/dev/i2c-1\": no such file": false,
		"failed to create shim task: OCI runtime create failed: operation not permitted":             false,
	} {
		if got := rlimitRefused(errString(msg)); got != want {
			t.Errorf("rlimitRefused(%q) = %v", msg, got)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
