// Package process is the agent's runtime for the bench where no Docker Engine
// exists: a controller "image" is a static executable in a local store
// (imported from a docker-archive tarball, a registry by digest, or a plain
// file with a sidecar JSON of labels), and a controller is a local process
// started through a tiny /bin/sh shim that records its pid and, when it ends,
// its exit code in a per-controller state directory. So a restarted agent can
// list and adopt the processes still running (pid checked against its start
// time, so a reused pid is never mistaken for a controller), stop them and
// learn how they ended.
//
// It isolates nothing: no namespaces, no read-only root, no device
// filtering, no memory limit. Controllers get only the environment their Spec
// names, never the agent's. It must never be used on a drone in the air where
// the Docker runtime is available.
package process

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	rt "github.com/inflight-ota/inflight/agent/runtime"
)

// Options configures the runtime.
type Options struct {
	// Dir holds the image store (Dir/images) and the controllers' state
	// (Dir/controllers). Required; created when missing.
	Dir    string
	Logger *slog.Logger
	// Shell runs the shim; "/bin/sh" when empty.
	Shell string
	// PollInterval is how often Wait and Stop look at a controller; 10 ms
	// when 0.
	PollInterval time.Duration
	// Platform selects the image of an index on Pull; HostPlatform() when
	// zero.
	Platform rt.Platform
}

// Runtime runs controllers as local processes.
type Runtime struct {
	dir      string
	log      *slog.Logger
	shell    string
	poll     time.Duration
	platform rt.Platform
	mu       sync.Mutex // serialises Start (names) and image imports
}

var _ rt.Runtime = (*Runtime)(nil)

// New returns a runtime over opts.Dir.
func New(opts Options) (*Runtime, error) {
	if opts.Dir == "" {
		return nil, fmt.Errorf("process: no state directory")
	}
	r := &Runtime{dir: opts.Dir, log: opts.Logger, shell: opts.Shell, poll: opts.PollInterval, platform: opts.Platform}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.shell == "" {
		r.shell = "/bin/sh"
	}
	if r.poll == 0 {
		r.poll = 10 * time.Millisecond
	}
	if r.platform == (rt.Platform{}) {
		r.platform = rt.HostPlatform()
	}
	for _, d := range []string{r.imagesDir(), r.ctlDir(), r.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("process: %w", err)
		}
	}
	return r, nil
}

// Name is "process".
func (r *Runtime) Name() string { return "process" }

func (r *Runtime) imagesDir() string { return filepath.Join(r.dir, "images") }
func (r *Runtime) ctlDir() string    { return filepath.Join(r.dir, "controllers") }
func (r *Runtime) tmpDir() string    { return filepath.Join(r.dir, "tmp") }

func randomID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeJSON writes v to path atomically.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
