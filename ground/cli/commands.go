package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/inflight-ota/inflight/ground"
	"github.com/inflight-ota/inflight/ground/broker"
	"github.com/inflight-ota/inflight/ground/keys"
	"github.com/inflight-ota/inflight/mqttapi"
)

func runPush(ctx context.Context, e *env, args []string) int {
	fs := cmdFlags(e, "push")
	var c conn
	c.flags(fs)
	drone := fs.String("drone", "", "drone id to update")
	fleet := fs.String("fleet", "", "fleet name to update (every drone in it; not with --via mqtt)")
	image := fs.String("image", "", "image: repo:tag or repo@sha256:... (registry), or a local Docker image (--via mqtt)")
	imageFile := fs.String("image-file", "", "with --via mqtt: send this docker-archive tarball instead of asking the local Docker Engine")
	repo := fs.String("repo", "", "with --image-file: repository name for the manifest (default: the tarball's tag)")
	version := fs.String("version", "", "controller version (default: the image's org.inflight.version label)")
	expires := fs.Duration("expires", time.Hour, "the manifest is refused after this long")
	probation := fs.Duration("probation", 0, "hot-standby window after the switch (0: the agent's default)")
	switchDeadline := fs.Duration("switch-deadline", 0, "abort unless switched this long after receipt (0: the agent's default)")
	battery := fs.Float64("battery-floor", 0, "no switch below this battery charge, percent (0: the agent's default)")
	noSwap := fs.Bool("no-ground-swap", false, "refuse a plain swap when the drone is disarmed on the ground")
	via := fs.String("via", "registry", "how the drone gets the image: registry (pull by digest) or mqtt (chunks over this broker)")
	chunk := fs.Int("chunk-size", mqttapi.DefaultChunkSize, "with --via mqtt: bytes per chunk")
	window := fs.Int("window", 32, "with --via mqtt: chunks in flight before the drone reports")
	keyFile := fs.String("key", defaultKey(), "private signing key (env "+EnvKey+")")
	watch := fs.Bool("watch", false, "then follow the update to its end (exit 3 unless committed)")
	timeout := fs.Duration("timeout", 10*time.Minute, "with --watch or --via mqtt: give up after this long")
	asJSON := fs.Bool("json", false, "print JSON lines instead of text")
	pos, code, done := parse(e, fs, args)
	if done {
		return code
	}
	switch {
	case len(pos) > 0:
		return usageErr(e, fs, "unexpected argument %q", pos[0])
	case (*drone == "") == (*fleet == ""):
		return usageErr(e, fs, "give exactly one of --drone and --fleet")
	case *image == "" && *imageFile == "":
		return usageErr(e, fs, "--image is required")
	case *via != mqttapi.TransferRegistry && *via != mqttapi.TransferMQTT:
		return usageErr(e, fs, "--via %q: want registry or mqtt", *via)
	case *via == mqttapi.TransferMQTT && *fleet != "":
		return usageErr(e, fs, "--via mqtt sends to one drone: use --drone")
	case *imageFile != "" && *via != mqttapi.TransferMQTT:
		return usageErr(e, fs, "--image-file needs --via mqtt")
	case *watch && *fleet != "":
		return usageErr(e, fs, "--watch follows one drone: use --drone, then groundctl watch per drone")
	}
	for _, id := range []string{*drone, *fleet} {
		if id != "" {
			if err := mqttapi.ValidateID(id); err != nil {
				return usageErr(e, fs, "%v", err)
			}
		}
	}
	signer, err := keys.LoadSigner(*keyFile)
	if err != nil {
		return fail(e, "push", fmt.Errorf("%w (make one with groundctl keygen)", err))
	}
	out := newOutput(e, *asJSON)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	o := ground.PushOptions{Drone: *drone, Fleet: *fleet, Version: *version, Expires: *expires, Probation: *probation,
		SwitchDeadline: *switchDeadline, BatteryFloorPct: *battery, NoGroundSwap: *noSwap}
	if *via == mqttapi.TransferMQTT {
		var a *ground.Archive
		if *imageFile != "" {
			a, err = ground.ArchiveFromFile(*imageFile, *repo)
		} else {
			out.note("saving %s from the local Docker Engine", *image)
			a, err = ground.ArchiveFromDocker(ctx, *image, "")
		}
		if err != nil {
			return fail(e, "push", err)
		}
		defer a.Close()
		o.Image, o.Archive = a.Info, a
		o.Transfer = ground.TransferOptions{ChunkSize: *chunk, Window: *window, OnProgress: out.transferProgress}
	} else {
		o.Image, err = ground.ResolveRegistry(ctx, *image)
		if err != nil {
			return fail(e, "push", err)
		}
	}
	st, closeConn, err := c.station(ctx, e)
	if err != nil {
		return fail(e, "push", err)
	}
	defer closeConn()
	var w *ground.Watcher
	if *watch {
		if w, err = st.Watch(ctx, *drone); err != nil {
			return fail(e, "push", err)
		}
		defer w.Close()
	}
	if o.Archive != nil {
		out.note("image %s: archive %s, %d bytes; sending over MQTT once drone %s reports", o.Image.Ref, o.Archive.Digest, o.Archive.Size, *drone)
	}
	o.OnPublished = out.pushed
	res, err := st.Push(ctx, signer, o)
	out.transferDone()
	if res.Transfer != nil && res.Transfer.Complete {
		out.transferStats(res.Transfer)
	}
	if err != nil {
		return fail(e, "push", err)
	}
	if !*watch {
		return ExitOK
	}
	return out.follow(ctx, w, *drone, res.Serial)
}

func runWatch(ctx context.Context, e *env, args []string) int {
	fs := cmdFlags(e, "watch")
	var c conn
	c.flags(fs)
	serial := fs.Uint64("serial", 0, "update serial to follow (default: the update in progress, else the drone's desired one)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long (exit 1)")
	asJSON := fs.Bool("json", false, "one JSON line per event, then the outcome")
	pos, code, done := parse(e, fs, args)
	if done {
		return code
	}
	if len(pos) != 1 {
		return usageErr(e, fs, "give one drone id")
	}
	if err := mqttapi.ValidateID(pos[0]); err != nil {
		return usageErr(e, fs, "%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, closeConn, err := c.station(ctx, e)
	if err != nil {
		return fail(e, "watch", err)
	}
	defer closeConn()
	w, err := st.Watch(ctx, pos[0])
	if err != nil {
		return fail(e, "watch", err)
	}
	defer w.Close()
	s := *serial
	if s == 0 {
		if s, err = w.Target(ctx); err != nil {
			return fail(e, "watch", err)
		}
	}
	out := newOutput(e, *asJSON)
	if s == 0 {
		out.note("drone %s: no update pending; waiting for the next one", pos[0])
	}
	return out.follow(ctx, w, pos[0], s)
}

func runStatus(ctx context.Context, e *env, args []string) int {
	fs := cmdFlags(e, "status")
	var c conn
	c.flags(fs)
	asJSON := fs.Bool("json", false, "print a JSON array")
	pos, code, done := parse(e, fs, args)
	if done {
		return code
	}
	st, closeConn, err := c.station(ctx, e)
	if err != nil {
		return fail(e, "status", err)
	}
	defer closeConn()
	rows, err := st.Status(ctx)
	if err != nil {
		return fail(e, "status", err)
	}
	if len(pos) > 0 { // groundctl status ID...: only those
		keep := rows[:0]
		for _, r := range rows {
			for _, id := range pos {
				if r.Drone == id {
					keep = append(keep, r)
				}
			}
		}
		rows = keep
		if len(rows) == 0 {
			return fail(e, "status", fmt.Errorf("%s: %w", strings.Join(pos, ", "), ground.ErrNoDrone))
		}
	}
	if *asJSON {
		return printJSON(e, rows)
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.stdout, "no drone seen on", c.broker)
		return ExitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DRONE\tONLINE\tVERSION\tDIGEST\tPHASE\tLAST RESULT\tLAST SEEN")
	now := time.Now()
	for _, r := range rows {
		online := "no"
		if r.Online {
			online = "yes"
		}
		last := r.LastResult
		if last == "" {
			last = "-"
		} else if r.LastReason != "" {
			last += " (" + r.LastReason + ")"
		}
		phase := r.Phase
		if r.UpdateSerial != 0 {
			phase = fmt.Sprintf("%s #%d", phase, r.UpdateSerial)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Drone, online, dash(r.Version), shortDigest(r.Image), phase, last, ago(now, r.LastSeen))
	}
	tw.Flush()
	return ExitOK
}

func runRollback(ctx context.Context, e *env, args []string) int {
	return runRequest(ctx, e, "rollback", mqttapi.KindRollback, args)
}

func runCancel(ctx context.Context, e *env, args []string) int {
	return runRequest(ctx, e, "cancel", mqttapi.KindCancel, args)
}

func runRequest(ctx context.Context, e *env, name, kind string, args []string) int {
	fs := cmdFlags(e, name)
	var c conn
	c.flags(fs)
	reason := fs.String("reason", "", "why, for the drone's log and events")
	update := fs.Uint64("serial", 0, "the update it is about (default: the current or most recent one)")
	expires := fs.Duration("expires", 10*time.Minute, "the request is refused after this long")
	keyFile := fs.String("key", defaultKey(), "private signing key (env "+EnvKey+")")
	wait := fs.Bool("wait", false, "wait for the drone to report the outcome (exit 3 if it did not "+name+")")
	timeout := fs.Duration("timeout", 2*time.Minute, "with --wait: give up after this long")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, code, done := parse(e, fs, args)
	if done {
		return code
	}
	if len(pos) != 1 {
		return usageErr(e, fs, "give one drone id")
	}
	if err := mqttapi.ValidateID(pos[0]); err != nil {
		return usageErr(e, fs, "%v", err)
	}
	signer, err := keys.LoadSigner(*keyFile)
	if err != nil {
		return fail(e, name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, closeConn, err := c.station(ctx, e)
	if err != nil {
		return fail(e, name, err)
	}
	defer closeConn()
	var w *ground.Watcher
	if *wait {
		if w, err = st.Watch(ctx, pos[0]); err != nil {
			return fail(e, name, err)
		}
		defer w.Close()
	}
	req, err := st.Request(ctx, signer, pos[0], kind, *reason, *update, *expires)
	if err != nil {
		return fail(e, name, err)
	}
	out := newOutput(e, *asJSON)
	if *asJSON {
		out.line(map[string]any{"request": req, "key_id": signer.KeyID()})
	} else {
		fmt.Fprintf(e.stdout, "%s request %d sent to drone %s (key %s)\n", kind, req.Serial, pos[0], signer.KeyID())
	}
	if !*wait {
		return ExitOK
	}
	return out.followRequest(ctx, w, req)
}

func runBroker(ctx context.Context, e *env, args []string) int {
	fs := cmdFlags(e, "broker")
	listen := fs.String("listen", broker.DefaultListen, "address to listen on, host:port (port 0: any free port)")
	authFile := fs.String("auth", "", "mochi auth ledger, YAML or JSON (users, auth and acl rules); default: anonymous clients allowed")
	verbose := fs.Bool("v", false, "log connections to stderr")
	pos, code, done := parse(e, fs, args)
	if done {
		return code
	}
	if len(pos) > 0 {
		return usageErr(e, fs, "unexpected argument %q", pos[0])
	}
	c := conn{verbose: *verbose}
	err := broker.Run(ctx, broker.Options{Listen: *listen, AuthFile: *authFile, Logger: c.logger(e)}, func(b *broker.Broker) {
		mode := "anonymous clients allowed"
		if *authFile != "" {
			mode = "auth from " + *authFile
		}
		fmt.Fprintf(e.stdout, "groundctl broker: listening on %s (%s, retained messages in memory); Ctrl-C stops it\n", b.URL(), mode)
	})
	if err != nil {
		return fail(e, "broker", err)
	}
	return ExitOK
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortDigest(ref string) string {
	i := strings.LastIndex(ref, "sha256:")
	if i < 0 {
		return dash(ref)
	}
	h := ref[i+7:]
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return t.Format(time.RFC3339)
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02 15:04")
}
