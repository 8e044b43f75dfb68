// Package docker is the agent's container runtime over the Docker Engine API
// (github.com/docker/docker/client, API version negotiated, so the 20.10
// engine of Raspberry Pi OS and Debian 12 works).
//
// Every controller it starts has no network, no Docker socket, no
// environment but the one its Spec names, all capabilities dropped
// (CAP_SYS_NICE back only with Spec.RealTime, with rtprio and memlock limits
// where the engine may raise them), a read-only root, a memory and
// a pids limit, no-new-privileges, restart policy "no" (the agent decides),
// the shared run directory at /run/inflight and only the devices it was
// given. It never touches a container that lacks the org.inflight.controller
// label.
package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/google/go-containerregistry/pkg/name"

	rt "github.com/inflight-ota/inflight/agent/runtime"
)

// Options configures the runtime; the zero value is valid.
type Options struct {
	// Client to use; when nil one is made from the environment
	// (DOCKER_HOST…) with API version negotiation, and closed by Close.
	Client *client.Client
	Logger *slog.Logger
	// LogMaxSize caps each controller's json-file log ("1m" when empty),
	// kept in LogMaxFiles files (2 when 0).
	LogMaxSize  string
	LogMaxFiles int
}

// Runtime is the Docker Engine runtime.
type Runtime struct {
	cli        *client.Client
	ownsClient bool
	log        *slog.Logger
	logSize    string
	logFiles   int
	// rlimitsRefused caches the engine's refusal to raise rlimits.
	rlimitsRefused atomic.Bool
}

var _ rt.Runtime = (*Runtime)(nil)

// New returns a runtime. It does not contact the engine.
func New(opts *Options) (*Runtime, error) {
	if opts == nil {
		opts = &Options{}
	}
	r := &Runtime{cli: opts.Client, log: opts.Logger, logSize: opts.LogMaxSize, logFiles: opts.LogMaxFiles}
	if r.cli == nil {
		cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
		if err != nil {
			return nil, fmt.Errorf("docker: client: %w", err)
		}
		r.cli, r.ownsClient = cli, true
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.logSize == "" {
		r.logSize = "1m"
	}
	if r.logFiles == 0 {
		r.logFiles = 2
	}
	return r, nil
}

// Name is "docker".
func (r *Runtime) Name() string { return "docker" }

// Client returns the engine client.
func (r *Runtime) Client() *client.Client { return r.cli }

// Close closes the client if New made it.
func (r *Runtime) Close() error {
	if r.ownsClient {
		return r.cli.Close()
	}
	return nil
}

// wrap maps engine errors onto the runtime's sentinels.
func wrap(err error, format string, a ...any) error {
	if err == nil {
		return nil
	}
	msg := "docker: " + fmt.Sprintf(format, a...)
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: %w: %w", msg, rt.ErrNotFound, err)
	case cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already in use"):
		return fmt.Errorf("%s: %w: %w", msg, rt.ErrExists, err)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// ---- images ----

// Pull pulls ref, which must be pinned by digest.
func (r *Runtime) Pull(ctx context.Context, ref string, progress func(rt.Progress)) (rt.ImageInfo, error) {
	d, err := name.NewDigest(ref)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("docker: pull %q: %w (%v)", ref, rt.ErrNotPinned, err)
	}
	start := time.Now()
	rc, err := r.cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return rt.ImageInfo{}, wrap(err, "pull %s", ref)
	}
	defer rc.Close()
	if err := decodeStream(rc, newPullProgress(progress)); err != nil {
		return rt.ImageInfo{}, fmt.Errorf("docker: pull %s: %w", ref, err)
	}
	info, err := r.Inspect(ctx, ref)
	if err != nil {
		return rt.ImageInfo{}, err
	}
	info.Digest = d.DigestStr()
	if progress != nil {
		progress(rt.Progress{Phase: "done", Status: "pulled " + info.ID})
	}
	r.log.Info("image pulled", "ref", ref, "id", info.ID, "duration", time.Since(start))
	return info, nil
}

// pullProgress sums the per-layer byte counts of the engine's pull stream.
type pullProgress struct {
	fn       func(rt.Progress)
	download map[string][2]int64
	extract  map[string][2]int64
}

func newPullProgress(fn func(rt.Progress)) func(jsonmessage.JSONMessage) {
	p := &pullProgress{fn: fn, download: map[string][2]int64{}, extract: map[string][2]int64{}}
	return p.update
}

func (p *pullProgress) update(m jsonmessage.JSONMessage) {
	if p.fn == nil {
		return
	}
	var phase string
	var set map[string][2]int64
	switch m.Status {
	case "Downloading":
		phase, set = "download", p.download
	case "Extracting":
		phase, set = "extract", p.extract
	case "Download complete", "Verifying Checksum":
		if v, ok := p.download[m.ID]; ok {
			p.download[m.ID] = [2]int64{v[1], v[1]}
		}
		phase, set = "download", p.download
	case "Pull complete":
		if v, ok := p.extract[m.ID]; ok {
			p.extract[m.ID] = [2]int64{v[1], v[1]}
		}
		phase, set = "extract", p.extract
	default:
		p.fn(rt.Progress{Phase: "download", Layer: m.ID, Status: m.Status})
		return
	}
	if m.Progress != nil && m.Progress.Total > 0 {
		set[m.ID] = [2]int64{m.Progress.Current, m.Progress.Total}
	}
	var cur, tot int64
	for _, v := range set {
		cur += v[0]
		tot += v[1]
	}
	p.fn(rt.Progress{Phase: phase, Layer: m.ID, Current: cur, Total: tot, Status: m.Status})
}

// decodeStream reads the engine's JSON message stream, calling fn for each
// message, and returns the first error message.
func decodeStream(r io.Reader, fn func(jsonmessage.JSONMessage)) error {
	dec := json.NewDecoder(r)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading engine stream: %w", err)
		}
		if m.Error != nil {
			return errors.New(m.Error.Message)
		}
		if m.ErrorMessage != "" {
			return errors.New(m.ErrorMessage)
		}
		if fn != nil {
			fn(m)
		}
	}
}

// countingReader reports the bytes read through it.
type countingReader struct {
	r     io.Reader
	n     int64
	total int64
	fn    func(rt.Progress)
	last  time.Time
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.fn != nil && (err != nil || time.Since(c.last) > 50*time.Millisecond) {
		c.last = time.Now()
		c.fn(rt.Progress{Phase: "load", Current: c.n, Total: c.total})
	}
	return n, err
}

// sizer is implemented by *os.File (via Stat) and *bytes.Reader and friends.
type sizer interface{ Size() int64 }

// Load imports a docker-archive tarball.
func (r *Runtime) Load(ctx context.Context, in io.Reader, progress func(rt.Progress)) (rt.ImageInfo, error) {
	start := time.Now()
	cr := &countingReader{r: in, fn: progress}
	if s, ok := in.(sizer); ok {
		cr.total = s.Size()
	} else if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			cr.total = st.Size()
		}
	}
	resp, err := r.cli.ImageLoad(ctx, cr, client.ImageLoadWithQuiet(true))
	if err != nil {
		return rt.ImageInfo{}, wrap(err, "load")
	}
	defer resp.Body.Close()
	var ref string
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("docker: load: %w", err)
	}
	err = decodeStream(bytes.NewReader(body), func(m jsonmessage.JSONMessage) {
		s := strings.TrimSpace(m.Stream)
		if v, ok := strings.CutPrefix(s, "Loaded image ID: "); ok {
			ref = v
		} else if v, ok := strings.CutPrefix(s, "Loaded image: "); ok && ref == "" {
			ref = v
		}
	})
	if err != nil {
		return rt.ImageInfo{}, fmt.Errorf("docker: load: %w", err)
	}
	if ref == "" {
		return rt.ImageInfo{}, fmt.Errorf("docker: load: engine named no image (%.200s): %w", body, rt.ErrUnsupportedImage)
	}
	info, err := r.Inspect(ctx, ref)
	if err != nil {
		return rt.ImageInfo{}, err
	}
	if progress != nil {
		progress(rt.Progress{Phase: "done", Current: cr.n, Total: cr.n, Status: "loaded " + info.ID})
	}
	r.log.Info("image loaded", "id", info.ID, "bytes", cr.n, "duration", time.Since(start))
	return info, nil
}

// Inspect describes a local image.
func (r *Runtime) Inspect(ctx context.Context, ref string) (rt.ImageInfo, error) {
	ii, err := r.cli.ImageInspect(ctx, ref)
	if err != nil {
		return rt.ImageInfo{}, wrap(err, "image %s", ref)
	}
	info := rt.ImageInfo{
		ID: ii.ID, RepoTags: ii.RepoTags, OS: ii.Os, Arch: ii.Architecture, Variant: ii.Variant, Size: ii.Size,
	}
	if ii.Config != nil {
		info.Labels = ii.Config.Labels
		info.Entrypoint = ii.Config.Entrypoint
		info.Cmd = ii.Config.Cmd
	}
	if info.Labels == nil {
		info.Labels = map[string]string{}
	}
	if _, dg, ok := strings.Cut(ref, "@"); ok {
		info.Digest = dg
	} else if len(ii.RepoDigests) == 1 {
		_, info.Digest, _ = strings.Cut(ii.RepoDigests[0], "@")
	}
	return info, nil
}

// Prune removes controller images (by label) except the kept ones and those
// any container, running or not, still uses.
func (r *Runtime) Prune(ctx context.Context, opts rt.PruneOptions) ([]string, error) {
	f := filters.NewArgs()
	if len(opts.Labels) == 0 {
		f.Add("label", rt.LabelVersion)
	}
	for k, v := range opts.Labels {
		f.Add("label", k+"="+v)
	}
	imgs, err := r.cli.ImageList(ctx, image.ListOptions{Filters: f})
	if err != nil {
		return nil, wrap(err, "prune: list images")
	}
	keep := map[string]bool{}
	for _, k := range opts.Keep {
		if info, err := r.Inspect(ctx, k); err == nil {
			keep[info.ID] = true
		} else if !errors.Is(err, rt.ErrNotFound) {
			return nil, err
		}
	}
	cs, err := r.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, wrap(err, "prune: list containers")
	}
	for _, c := range cs {
		keep[c.ImageID] = true
	}
	var removed []string
	for _, img := range imgs {
		if keep[img.ID] {
			continue
		}
		if _, err := r.cli.ImageRemove(ctx, img.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			if cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
				continue
			}
			return removed, wrap(err, "prune: remove %s", img.ID)
		}
		removed = append(removed, img.ID)
		r.log.Info("image pruned", "id", img.ID, "tags", img.RepoTags)
	}
	return removed, nil
}

// ---- controllers ----

// Start creates and starts a controller container.
//
// With Spec.RealTime it first asks for the rtprio and memlock limits; an
// engine that may not raise them (no CAP_SYS_RESOURCE: refused at create or,
// with runc, at start) gets the half-made container removed and the
// controller started again without them, CAP_SYS_NICE kept. The refusal is
// logged once and remembered, so later starts (v2 in the air) skip the
// failing attempt. Controller.RealTime says what was granted.
func (r *Runtime) Start(ctx context.Context, spec rt.Spec) (rt.Controller, error) {
	if err := spec.Validate(); err != nil {
		return rt.Controller{}, err
	}
	img, err := r.Inspect(ctx, spec.Image)
	if err != nil {
		return rt.Controller{}, err
	}
	start := time.Now()
	grant := rt.RealTimeOff
	if spec.RealTime {
		grant = rt.RealTimeGranted
		if r.rlimitsRefused.Load() {
			grant = rt.RealTimeNoRlimits
		}
	}
	id, err := r.create(ctx, spec, img, grant)
	if grant == rt.RealTimeGranted && rlimitRefused(err) {
		r.log.Warn("engine may not raise rlimits (no CAP_SYS_RESOURCE): realtime controllers start without rtprio/memlock limits, CAP_SYS_NICE only",
			"name", spec.Name, "err", err)
		r.rlimitsRefused.Store(true)
		grant = rt.RealTimeNoRlimits
		id, err = r.create(ctx, spec, img, grant)
	}
	if err != nil {
		return rt.Controller{}, err
	}
	r.log.Info("controller started", "name", spec.Name, "id", id[:12], "image", img.ID, "role", spec.Role, "realtime", grant, "duration", time.Since(start))
	return r.Get(ctx, id)
}

// create creates and starts the container of spec with grant; a container
// that fails to start is removed.
func (r *Runtime) create(ctx context.Context, spec rt.Spec, img rt.ImageInfo, grant rt.RealTime) (string, error) {
	cfg, host := r.containerConfig(spec, img, grant)
	created, err := r.cli.ContainerCreate(ctx, cfg, host, nil, nil, spec.Name)
	if err != nil {
		return "", wrap(err, "create %s", spec.Name)
	}
	for _, w := range created.Warnings {
		r.log.Warn("create warning", "name", spec.Name, "warning", w)
	}
	if err := r.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		rmErr := r.cli.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true})
		return "", errors.Join(wrap(err, "start %s", spec.Name), wrap(rmErr, "remove %s after failed start", spec.Name))
	}
	return created.ID, nil
}

// RlimitsRefused reports whether this engine has refused to raise a
// controller's rlimits (the probe is the first Start with Spec.RealTime).
func (r *Runtime) RlimitsRefused() bool { return r.rlimitsRefused.Load() }

// rlimitRefused recognises the engine refusing a ulimit: runc's "error
// setting rlimit type 14: operation not permitted", crun's "setrlimit
// `RLIMIT_RTPRIO`: Operation not permitted".
func rlimitRefused(err error) bool {
	if err == nil {
		return false
	}
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "rlimit") && strings.Contains(m, "operation not permitted")
}

// containerConfig is the container a spec becomes; see the package comment.
func (r *Runtime) containerConfig(spec rt.Spec, img rt.ImageInfo, grant rt.RealTime) (*container.Config, *container.HostConfig) {
	labels := spec.ControllerLabels()
	if grant != rt.RealTimeOff {
		labels[rt.LabelRealTime] = string(grant)
	}
	if v := img.Labels[rt.LabelVersion]; v != "" {
		labels[rt.LabelVersion] = v
	}
	cfg := &container.Config{
		Image:           img.ID,
		Cmd:             spec.Args,
		Env:             spec.ControllerEnv(rt.RunDirInContainer),
		Labels:          labels,
		User:            spec.User,
		NetworkDisabled: true,
		StopSignal:      "SIGTERM",
		AttachStdout:    false,
		AttachStderr:    false,
	}
	if len(spec.Args) == 0 {
		cfg.Cmd = nil // keep the image's Cmd
	}
	pids := spec.PidsLimit
	host := &container.HostConfig{
		NetworkMode:    "none",
		CapDrop:        []string{"ALL"},
		ReadonlyRootfs: true,
		SecurityOpt:    []string{"no-new-privileges"},
		RestartPolicy:  container.RestartPolicy{Name: container.RestartPolicyDisabled},
		GroupAdd:       spec.GroupAdd,
		IpcMode:        "private",
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{
			"max-size": r.logSize, "max-file": strconv.Itoa(r.logFiles),
		}},
		Mounts: []mount.Mount{{Type: mount.TypeBind, Source: spec.RunDir, Target: rt.RunDirInContainer}},
		Resources: container.Resources{
			Memory:     spec.MemoryBytes,
			MemorySwap: spec.MemoryBytes,
			PidsLimit:  &pids,
		},
	}
	for _, d := range spec.Devices {
		hostPath, inCtr, ok := strings.Cut(d, ":")
		if !ok {
			inCtr = hostPath
		}
		host.Devices = append(host.Devices, container.DeviceMapping{PathOnHost: hostPath, PathInContainer: inCtr, CgroupPermissions: "rwm"})
	}
	if grant != rt.RealTimeOff {
		host.CapAdd = []string{"SYS_NICE"}
	}
	if grant == rt.RealTimeGranted {
		host.Ulimits = []*container.Ulimit{
			{Name: "rtprio", Soft: 99, Hard: 99},
			{Name: "memlock", Soft: -1, Hard: -1},
		}
	}
	return cfg, host
}

// Get returns the controller id (ID, ID prefix or name).
func (r *Runtime) Get(ctx context.Context, id string) (rt.Controller, error) {
	ci, err := r.cli.ContainerInspect(ctx, id)
	if err != nil {
		return rt.Controller{}, wrap(err, "controller %s", id)
	}
	if ci.Config == nil || ci.Config.Labels[rt.LabelController] != "true" {
		return rt.Controller{}, fmt.Errorf("docker: container %s is not an inflight controller: %w", id, rt.ErrNotFound)
	}
	c := rt.Controller{
		ID:     ci.ID,
		Name:   strings.TrimPrefix(ci.Name, "/"),
		Image:  ci.Image,
		Labels: ci.Config.Labels,
	}
	c.FillFromLabels()
	if ci.State != nil {
		switch ci.State.Status {
		case "running", "paused", "restarting":
			c.State = rt.StateRunning
			c.Pid = ci.State.Pid
		case "created":
			c.State = rt.StateCreated
		default:
			c.State = rt.StateExited
			c.ExitCode = ci.State.ExitCode
		}
		c.StartedAt = parseTime(ci.State.StartedAt)
		c.FinishedAt = parseTime(ci.State.FinishedAt)
	}
	return c, nil
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() < 2000 {
		return time.Time{}
	}
	return t
}

// List returns the controllers carrying labels.
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]rt.Controller, error) {
	f := filters.NewArgs(filters.Arg("label", rt.LabelController+"=true"))
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	cs, err := r.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, wrap(err, "list")
	}
	out := make([]rt.Controller, 0, len(cs))
	for _, s := range cs {
		c, err := r.Get(ctx, s.ID)
		if errors.Is(err, rt.ErrNotFound) {
			continue // removed meanwhile
		} else if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILL.
func (r *Runtime) Stop(ctx context.Context, id string, timeout time.Duration) error {
	c, err := r.Get(ctx, id)
	if err != nil {
		return err
	}
	if !c.Running() {
		return nil
	}
	if err := r.cli.ContainerKill(ctx, c.ID, "SIGTERM"); err != nil && !notRunning(err) {
		return wrap(err, "stop %s", c.Name)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	_, werr := r.Wait(wctx, c.ID)
	cancel()
	if werr == nil {
		r.log.Info("controller stopped", "name", c.Name)
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("docker: stop %s: %w", c.Name, ctx.Err())
	}
	r.log.Warn("controller ignored SIGTERM, killing", "name", c.Name, "timeout", timeout)
	if err := r.Kill(ctx, c.ID); err != nil {
		return err
	}
	_, err = r.Wait(ctx, c.ID)
	return err
}

func notRunning(err error) bool {
	return cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "is not running")
}

// Kill sends SIGKILL; killing a stopped controller is not an error.
func (r *Runtime) Kill(ctx context.Context, id string) error {
	c, err := r.Get(ctx, id)
	if err != nil {
		return err
	}
	if err := r.cli.ContainerKill(ctx, c.ID, "SIGKILL"); err != nil && !notRunning(err) {
		return wrap(err, "kill %s", c.Name)
	}
	return nil
}

// Wait waits for the controller to exit and returns its exit code.
func (r *Runtime) Wait(ctx context.Context, id string) (int, error) {
	c, err := r.Get(ctx, id)
	if err != nil {
		return -1, err
	}
	if c.State == rt.StateExited {
		return c.ExitCode, nil
	}
	okc, errc := r.cli.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
	select {
	case res := <-okc:
		if res.Error != nil && res.Error.Message != "" {
			return int(res.StatusCode), fmt.Errorf("docker: wait %s: %s", c.Name, res.Error.Message)
		}
		return int(res.StatusCode), nil
	case err := <-errc:
		if ctx.Err() != nil {
			return -1, fmt.Errorf("docker: wait %s: %w", c.Name, ctx.Err())
		}
		return -1, wrap(err, "wait %s", c.Name)
	}
}

// Remove deletes the controller, killing it if it runs.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	c, err := r.Get(ctx, id)
	if err != nil {
		return err
	}
	if err := r.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		return wrap(err, "remove %s", c.Name)
	}
	r.log.Info("controller removed", "name", c.Name)
	return nil
}

// Logs returns the controller's stdout and stderr, interleaved.
func (r *Runtime) Logs(ctx context.Context, id string, opts rt.LogOptions) (io.ReadCloser, error) {
	c, err := r.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	tail := "all"
	if opts.Tail > 0 {
		tail = strconv.Itoa(opts.Tail)
	}
	rc, err := r.cli.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: opts.Follow, Tail: tail})
	if err != nil {
		return nil, wrap(err, "logs %s", c.Name)
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, pw, rc)
		rc.Close()
		pw.CloseWithError(err)
	}()
	return &logReader{PipeReader: pr, rc: rc}, nil
}

type logReader struct {
	*io.PipeReader
	rc io.Closer
}

func (l *logReader) Close() error {
	l.rc.Close()
	return l.PipeReader.Close()
}
