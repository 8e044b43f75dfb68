package runtimetest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/agent/runtime"
	"github.com/inflight-ota/inflight/agent/runtime/imagebuild"
	"github.com/inflight-ota/inflight/internal/testsvc"
)

// Run runs the conformance suite. Subtests depend on each other and run in
// order.
func Run(t *testing.T, h Harness) {
	rt := h.New(t)
	run := h.Run
	if run == "" {
		run = NewRunID()
	}
	t.Logf("runtime %s, run %s", rt.Name(), run)
	t.Cleanup(func() { Cleanup(t, rt, run) })
	bin := BuildCtlProg(t, t.TempDir())
	host := runtime.HostPlatform()
	runLabels := map[string]string{LabelTestRun: run}

	var img runtime.ImageInfo
	t.Run("Load", func(t *testing.T) {
		built, tar := Tarball(t, imagebuild.Config{Binary: bin, Labels: Labels(run, "1.0.0")}, "inflight-test/ctl-"+run+":v1")
		var last runtime.Progress
		var err error
		img, err = rt.Load(ctx(t), bytes.NewReader(tar), func(p runtime.Progress) { last = p })
		if err != nil {
			t.Fatal(err)
		}
		want, _ := built.ConfigName()
		if img.ID != want.String() {
			t.Errorf("ID %s, want the config digest %s", img.ID, want)
		}
		if img.Platform() != (runtime.Platform{OS: "linux", Arch: host.Arch}) || img.Version() != "1.0.0" || img.Labels[LabelTestRun] != run {
			t.Errorf("loaded %s", fmtImg(img))
		}
		if last.Current != int64(len(tar)) {
			t.Errorf("last progress %+v, want Current %d", last, len(tar))
		}
		for _, ref := range []string{img.ID, "inflight-test/ctl-" + run + ":v1"} {
			got, err := rt.Inspect(ctx(t), ref)
			if err != nil || got.ID != img.ID {
				t.Errorf("Inspect(%s) = %s, %v", ref, got.ID, err)
			}
		}
		_, err = rt.Inspect(ctx(t), "sha256:"+strings.Repeat("0", 64))
		mustErr(t, err, runtime.ErrNotFound, "Inspect unknown image")
		if err := runtime.CheckImage(img, host, 1); err != nil {
			t.Errorf("CheckImage of a good image: %v", err)
		}
		mustErr(t, runtime.CheckImage(img, host, 2), runtime.ErrIncompatible, "CheckImage for handoff protocol 2")
	})
	if img.ID == "" {
		t.FailNow()
	}

	t.Run("WrongPlatform", func(t *testing.T) {
		wp := wrongPlatform()
		_, tar := Tarball(t, imagebuild.Config{Binary: bin, Labels: Labels(run, "9.9.9"), Arch: wp.Arch, Variant: wp.Variant}, "inflight-test/ctl-"+run+":wrong")
		bad, err := rt.Load(ctx(t), bytes.NewReader(tar), nil)
		if err != nil {
			t.Fatal(err)
		}
		if bad.Platform() != wp {
			t.Fatalf("loaded platform %s, want %s", bad.Platform(), wp)
		}
		mustErr(t, runtime.CheckImage(bad, host, 1), runtime.ErrWrongPlatform, "CheckImage of a "+wp.String()+" image")
		if wp.Arch == "arm" {
			mustErr(t, runtime.CheckImage(bad, runtime.Platform{OS: "linux", Arch: "arm", Variant: "v6"}, 1), runtime.ErrWrongPlatform, "arm/v7 image on an arm/v6 host")
			if err := runtime.CheckImage(bad, runtime.Platform{OS: "linux", Arch: "arm", Variant: "v7"}, 1); err != nil {
				t.Errorf("arm/v7 image on an arm/v7 host: %v", err)
			}
		}
	})

	t.Run("PullByDigest", func(t *testing.T) {
		reg := testsvc.Registry(t)
		mine, err := imagebuild.Build(imagebuild.Config{Binary: bin, Labels: withLabels(Labels(run, "2.0.0"), "which", "pull")})
		if err != nil {
			t.Fatal(err)
		}
		wp := wrongPlatform()
		other, err := imagebuild.Build(imagebuild.Config{Binary: bin, Labels: withLabels(Labels(run, "2.0.0"), "which", "other"), Arch: wp.Arch, Variant: wp.Variant})
		if err != nil {
			t.Fatal(err)
		}
		idx, err := imagebuild.Index(other, mine)
		if err != nil {
			t.Fatal(err)
		}
		repo := reg + "/inflight-test/ctl-" + run
		ref, err := imagebuild.PushIndex(ctx(t), idx, repo+":v2")
		if err != nil {
			t.Fatal(err)
		}
		_, err = rt.Pull(ctx(t), repo+":v2", nil)
		mustErr(t, err, runtime.ErrNotPinned, "Pull by tag")
		var n atomic.Int32
		got, err := rt.Pull(ctx(t), ref, func(runtime.Progress) { n.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		want, _ := mine.ConfigName()
		_, dg, _ := strings.Cut(ref, "@")
		if got.ID != want.String() || got.Digest != dg || got.Arch != host.Arch || got.Labels["which"] != "pull" {
			t.Errorf("pulled %s digest %s; want ID %s digest %s", fmtImg(got), got.Digest, want, dg)
		}
		if n.Load() == 0 {
			t.Error("no progress reported")
		}
		if byRef, err := rt.Inspect(ctx(t), ref); err != nil || byRef.ID != got.ID {
			t.Errorf("Inspect(%s) = %s, %v", ref, byRef.ID, err)
		}
		// A single-platform image, pinned by its manifest digest.
		single, err := imagebuild.Push(ctx(t), mine, repo+":single")
		if err != nil {
			t.Fatal(err)
		}
		if got2, err := rt.Pull(ctx(t), single, nil); err != nil || got2.ID != got.ID {
			t.Errorf("Pull(%s) = %s, %v", single, got2.ID, err)
		}
	})

	runDir := t.TempDir()
	os.Chmod(runDir, 0o777) // the controllers run as nobody
	spec := func(name string, role runtime.Role, args ...string) runtime.Spec {
		return runtime.Spec{
			Name: "inflight-test-" + run + "-" + name, Image: img.ID, Role: role, Args: append([]string{"-name", name}, args...),
			RunDir: runDir, Labels: withLabels(runLabels, "slot", name), UpdateID: "u-" + run,
		}
	}
	var a, b runtime.Controller
	t.Run("SideBySide", func(t *testing.T) {
		var err error
		a, err = rt.Start(ctx(t), spec("a", runtime.RoleActive, "-lock", "-listen"))
		if err != nil {
			t.Fatal(err)
		}
		logA := WaitLog(t, rt, a.ID, "a: ready", 30*time.Second)
		if !strings.Contains(logA, "a: locked") || !strings.Contains(logA, "a: listening") {
			t.Fatalf("a did not lock and listen:\n%s", logA)
		}
		b, err = rt.Start(ctx(t), spec("b", runtime.RoleStandby, "-lock", "-lock-wait", "-dial", "a", "-send", "hello", "-term-exit", "3"))
		if err != nil {
			t.Fatal(err)
		}
		logB := WaitLog(t, rt, b.ID, "b: ready", 30*time.Second)
		for _, want := range []string{"b: start role=standby", "b: lock busy", "b: reply ack:hello"} {
			if !strings.Contains(logB, want) {
				t.Errorf("b's log lacks %q:\n%s", want, logB)
			}
		}
		WaitLog(t, rt, a.ID, "a: got hello", 10*time.Second)
		wantDir := runDir
		if h.Isolated {
			wantDir = runtime.RunDirInContainer
		}
		if !strings.Contains(logB, "rundir="+wantDir) {
			t.Errorf("b did not get %s=%s:\n%s", runtime.EnvRunDir, wantDir, logB)
		}
		_, err = rt.Start(ctx(t), spec("a", runtime.RoleStandby))
		mustErr(t, err, runtime.ErrExists, "Start with a name in use")
		bad := spec("bad", runtime.RoleStandby)
		bad.Env = []string{"MQTT_PASSWORD=hunter2"}
		_, err = rt.Start(ctx(t), bad)
		mustErr(t, err, runtime.ErrInvalidSpec, "Start with broker credentials in the env")

		got, err := rt.Get(ctx(t), a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Running() || got.Pid <= 0 || got.Role != runtime.RoleActive || got.Version != "1.0.0" ||
			got.UpdateID != "u-"+run || got.Name != spec("a", "", "").Name || got.Image != img.ID || got.StartedAt.IsZero() {
			t.Errorf("Get(a) = %+v", got)
		}
		if byName, err := rt.Get(ctx(t), got.Name); err != nil || byName.ID != got.ID {
			t.Errorf("Get by name = %v, %v", byName.ID, err)
		}
	})
	if a.ID == "" || b.ID == "" {
		t.FailNow()
	}

	// From here on a fresh instance, as after an agent restart, drives them.
	rt2 := h.New(t)
	t.Run("Adopt", func(t *testing.T) {
		cs, err := rt2.List(ctx(t), runLabels)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range cs {
			names = append(names, c.Name+"/"+string(c.Role)+"/"+string(c.State))
		}
		slices.Sort(names)
		want := []string{a.Name + "/active/running", b.Name + "/standby/running"}
		if !slices.Equal(names, want) {
			t.Fatalf("List = %v, want %v", names, want)
		}
		cs, err = rt2.List(ctx(t), withLabels(runLabels, runtime.LabelRole, string(runtime.RoleStandby)))
		if err != nil || len(cs) != 1 || cs[0].ID != b.ID || cs[0].Labels["slot"] != "b" {
			t.Fatalf("List(standby) = %+v, %v", cs, err)
		}
	})

	t.Run("KillReleasesLock", func(t *testing.T) {
		if err := rt2.Kill(ctx(t), a.ID); err != nil {
			t.Fatal(err)
		}
		code, err := rt2.Wait(ctx(t), a.ID)
		if err != nil || code != 137 {
			t.Fatalf("Wait(a) after Kill = %d, %v; want 137", code, err)
		}
		start := time.Now()
		WaitLog(t, rt2, b.ID, "b: locked", 10*time.Second)
		t.Logf("b took the lock %v after a was reaped", time.Since(start).Round(time.Millisecond))
		if err := rt2.Kill(ctx(t), a.ID); err != nil {
			t.Errorf("Kill of a dead controller: %v", err)
		}
	})

	t.Run("StopGraceful", func(t *testing.T) {
		if err := rt2.Stop(ctx(t), b.ID, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		code, err := rt2.Wait(ctx(t), b.ID)
		if err != nil || code != 3 {
			t.Fatalf("Wait(b) after Stop = %d, %v; want 3", code, err)
		}
		WaitLog(t, rt2, b.ID, "b: sigterm", 5*time.Second)
		got, err := rt2.Get(ctx(t), b.ID)
		if err != nil || got.State != runtime.StateExited || got.ExitCode != 3 || got.Pid != 0 || got.FinishedAt.IsZero() {
			t.Errorf("Get(b) after Stop = %+v, %v", got, err)
		}
		if err := rt2.Stop(ctx(t), b.ID, time.Second); err != nil {
			t.Errorf("Stop of a stopped controller: %v", err)
		}
	})

	t.Run("StopTimeoutKills", func(t *testing.T) {
		c, err := rt.Start(ctx(t), spec("c", runtime.RoleStandby, "-ignore-term"))
		if err != nil {
			t.Fatal(err)
		}
		WaitLog(t, rt, c.ID, "c: ready", 30*time.Second)
		start := time.Now()
		if err := rt.Stop(ctx(t), c.ID, 500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 500*time.Millisecond {
			t.Errorf("Stop returned after %v, before the timeout", d)
		}
		if code, err := rt.Wait(ctx(t), c.ID); err != nil || code != 137 {
			t.Errorf("Wait(c) = %d, %v; want 137", code, err)
		}
	})

	t.Run("ExitCodeAndLogs", func(t *testing.T) {
		d, err := rt.Start(ctx(t), spec("d", runtime.RoleCold, "-lines", "5", "-sleep", "0", "-exit", "7"))
		if err != nil {
			t.Fatal(err)
		}
		if code, err := rt.Wait(ctx(t), d.ID); err != nil || code != 7 {
			t.Fatalf("Wait(d) = %d, %v; want 7", code, err)
		}
		if code, err := rt2.Wait(ctx(t), d.ID); err != nil || code != 7 {
			t.Errorf("second Wait(d) from another instance = %d, %v; want 7", code, err)
		}
		full, err := ReadLog(rt, d.ID, 0)
		if err != nil || !strings.Contains(full, "d: line 1\nd: line 2\n") {
			t.Errorf("log = %q, %v", full, err)
		}
		tail, err := ReadLog(rt, d.ID, 2)
		if err != nil || tail != "d: ready\nd: exit 7\n" {
			t.Errorf("log tail 2 = %q, %v", tail, err)
		}
	})

	t.Run("Isolation", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var accepted atomic.Int32
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				c.Close()
			}
		}()
		t.Setenv("INFLIGHT_TEST_AGENT_SECRET", "must-not-leak")
		s := spec("f", runtime.RoleStandby, "-probe-net", l.Addr().String(), "-probe-ifaces", "-probe-rofs", "-probe-id",
			"-probe-path", "/var/run/docker.sock", "-probe-env", "INFLIGHT_TEST_AGENT_SECRET", "-sleep", "0")
		if h.Isolated {
			s.Args = append(s.Args, "-probe-dev", "/dev/i2c-fake")
			s.Devices = []string{"/dev/zero:/dev/i2c-fake"}
		}
		f, err := rt.Start(ctx(t), s)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Wait(ctx(t), f.ID); err != nil {
			t.Fatal(err)
		}
		log, _ := ReadLog(rt, f.ID, 0)
		t.Logf("probe:\n%s", log)
		want := []string{"f: env absent"}
		if h.Isolated {
			want = append(want, "f: net blocked", "f: ifaces lo ", "f: rofs read-only",
				"f: id uid=65534 gid=65534 capeff=0000000000000000 nonewprivs=1", "f: path absent", "f: dev ok")
		}
		for _, w := range want {
			if !strings.Contains(log, w) {
				t.Errorf("probe log lacks %q", w)
			}
		}
		if h.Isolated && accepted.Load() != 0 {
			t.Errorf("the controller reached the host's 127.0.0.1 listener")
		}
	})

	// Spec.RealTime never fails a start: a runtime that cannot raise the
	// limits starts the controller without them and says so in
	// Controller.RealTime, the same for every start and after adoption.
	t.Run("RealTime", func(t *testing.T) {
		var grants []runtime.RealTime
		for _, n := range []string{"rt1", "rt2"} {
			s := spec(n, runtime.RoleCold, "-probe-rt", "-sleep", "0")
			s.RealTime = true
			c, err := rt.Start(ctx(t), s)
			if err != nil {
				t.Fatalf("Start with RealTime: %v", err)
			}
			if code, err := rt.Wait(ctx(t), c.ID); err != nil || code != 0 {
				t.Fatalf("Wait(%s) = %d, %v", n, code, err)
			}
			log, _ := ReadLog(rt, c.ID, 0)
			t.Logf("%s: realtime %q; %s", n, c.RealTime, strings.TrimSpace(log))
			if got, err := rt2.Get(ctx(t), c.ID); err != nil || got.RealTime != c.RealTime {
				t.Errorf("Get(%s) from another instance: realtime %q, %v; want %q", n, got.RealTime, err, c.RealTime)
			}
			switch c.RealTime {
			case runtime.RealTimeGranted:
				if !strings.Contains(log, "rtprio=99/99 memlock=unlimited/unlimited") {
					t.Errorf("granted, but the controller saw other limits")
				}
			case runtime.RealTimeNoRlimits:
				if !h.Isolated || strings.Contains(log, "rtprio=99/99") {
					t.Errorf("no-rlimits from a runtime that is not isolated, or limits raised after all")
				}
			case runtime.RealTimeHost:
				if h.Isolated {
					t.Errorf("an isolated runtime reports host limits")
				}
			default:
				t.Errorf("realtime %q", c.RealTime)
			}
			if h.Isolated && !strings.Contains(log, "capbnd=0000000000800000") {
				t.Errorf("bounding set is not CAP_SYS_NICE alone")
			}
			grants = append(grants, c.RealTime)
		}
		if grants[0] != grants[1] {
			t.Errorf("realtime granted %q then %q", grants[0], grants[1])
		}
		if got, err := rt.Get(ctx(t), a.ID); err != nil || got.RealTime != runtime.RealTimeOff {
			t.Errorf("Get(a) without RealTime: realtime %q, %v", got.RealTime, err)
		}
	})

	t.Run("Remove", func(t *testing.T) {
		g, err := rt.Start(ctx(t), spec("g", runtime.RoleStandby))
		if err != nil {
			t.Fatal(err)
		}
		WaitLog(t, rt, g.ID, "g: ready", 30*time.Second)
		g, err = rt.Get(ctx(t), g.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := rt2.Remove(ctx(t), g.ID); err != nil {
			t.Fatalf("Remove of a running controller: %v", err)
		}
		if !gone(g.Pid, 5*time.Second) {
			t.Errorf("pid %d still alive after Remove", g.Pid)
		}
		for _, c := range []runtime.Controller{a, b, g} {
			if c.ID != g.ID {
				if err := rt2.Remove(ctx(t), c.ID); err != nil {
					t.Errorf("Remove(%s): %v", c.Name, err)
				}
			}
			_, err := rt.Get(ctx(t), c.ID)
			mustErr(t, err, runtime.ErrNotFound, "Get after Remove")
			_, err = rt.Wait(ctx(t), c.ID)
			mustErr(t, err, runtime.ErrNotFound, "Wait after Remove")
			mustErr(t, rt.Remove(ctx(t), c.ID), runtime.ErrNotFound, "second Remove")
		}
		cs, err := rt.List(ctx(t), withLabels(runLabels, "slot", "a"))
		if err != nil || len(cs) != 0 {
			t.Errorf("List after Remove = %v, %v", cs, err)
		}
	})

	t.Run("Prune", func(t *testing.T) {
		RemoveControllers(t, rt, run)
		removed, err := rt.Prune(ctx(t), runtime.PruneOptions{Labels: runLabels, Keep: []string{img.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if len(removed) == 0 || slices.Contains(removed, img.ID) {
			t.Errorf("Prune removed %v (kept %s)", removed, img.ID)
		}
		if _, err := rt.Inspect(ctx(t), img.ID); err != nil {
			t.Errorf("kept image: %v", err)
		}
		if _, err := rt.Inspect(ctx(t), "inflight-test/ctl-"+run+":wrong"); err == nil {
			t.Error("the wrong-platform image survived Prune")
		}
		removed, err = rt.Prune(ctx(t), runtime.PruneOptions{Labels: runLabels})
		if err != nil || !slices.Contains(removed, img.ID) {
			t.Errorf("second Prune = %v, %v", removed, err)
		}
	})
}

// gone waits until pid no longer exists (or is a zombie).
func gone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && strings.HasPrefix(string(st[i+1:]), " Z") {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
