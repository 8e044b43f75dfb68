package runtime

import (
	"context"
	"io"
	"time"
)

// Images acquires, inspects and prunes controller images.
type Images interface {
	// Pull fetches ref, which must be pinned by digest (repo@sha256:…),
	// reporting progress (progress may be nil). For an index the platform
	// of the host is selected.
	Pull(ctx context.Context, ref string, progress func(Progress)) (ImageInfo, error)
	// Load imports a docker-archive tarball (as written by `docker save`
	// or imagebuild.WriteTarball), e.g. one received in chunks over MQTT.
	Load(ctx context.Context, r io.Reader, progress func(Progress)) (ImageInfo, error)
	// Inspect returns what is known of a local image: ref is an image ID,
	// a name:tag or a name@digest.
	Inspect(ctx context.Context, ref string) (ImageInfo, error)
	// Prune removes the local images selected by opts, except those in
	// opts.Keep and those a controller still uses, and returns their IDs.
	Prune(ctx context.Context, opts PruneOptions) ([]string, error)
}

// Controllers starts and manages controller instances.
type Controllers interface {
	// Start creates and starts a controller. The name must be unused
	// (ErrExists otherwise).
	Start(ctx context.Context, spec Spec) (Controller, error)
	// Get returns one controller by ID or name (ErrNotFound).
	Get(ctx context.Context, id string) (Controller, error)
	// List returns the inflight controllers (running or not) carrying all
	// the given labels; this is how a restarted agent adopts them.
	List(ctx context.Context, labels map[string]string) ([]Controller, error)
	// Stop sends SIGTERM and, after timeout, SIGKILL. Stopping a stopped
	// controller is not an error.
	Stop(ctx context.Context, id string, timeout time.Duration) error
	// Kill sends SIGKILL.
	Kill(ctx context.Context, id string) error
	// Wait blocks until the controller has exited and returns its exit
	// code (128+signal when killed by a signal). It works for adopted
	// controllers too.
	Wait(ctx context.Context, id string) (int, error)
	// Remove deletes a controller, killing it first if it still runs.
	Remove(ctx context.Context, id string) error
	// Logs returns the controller's combined stdout and stderr.
	Logs(ctx context.Context, id string, opts LogOptions) (io.ReadCloser, error)
}

// Runtime is both, plus a name for reports ("docker", "process").
type Runtime interface {
	Images
	Controllers
	Name() string
}

// Progress is one report of an image transfer. Total is 0 when unknown.
type Progress struct {
	Phase   string // "download", "extract", "load", "done"
	Layer   string // layer or blob ID when known
	Current int64  // bytes done, summed over all layers
	Total   int64  // bytes expected, summed over the layers seen so far
	Status  string // the engine's own words, e.g. "Pull complete"
}

// ImageInfo describes a local image.
type ImageInfo struct {
	ID       string   // config digest, "sha256:…"; Docker's image ID
	Digest   string   // manifest (or index) digest it was pulled by, "" after a Load
	RepoTags []string // name:tag
	OS       string
	Arch     string
	Variant  string
	Labels   map[string]string
	Size     int64
	// Entrypoint and Cmd of the image config.
	Entrypoint []string
	Cmd        []string
}

// Version is the image's org.inflight.version label.
func (i ImageInfo) Version() string { return i.Labels[LabelVersion] }

// Platform is the OS/architecture/variant triple of an image or a host.
func (i ImageInfo) Platform() Platform { return Platform{OS: i.OS, Arch: i.Arch, Variant: i.Variant} }

// PruneOptions selects images to prune.
type PruneOptions struct {
	// Labels the images must all carry; when empty, images carrying
	// LabelVersion (any value), i.e. controller images.
	Labels map[string]string
	// Keep lists image IDs or references never to remove (the active and
	// the previous version).
	Keep []string
}

// LogOptions selects log lines.
type LogOptions struct {
	Tail   int  // last lines only; 0 means all
	Follow bool // keep streaming until the controller exits or ctx ends
}
