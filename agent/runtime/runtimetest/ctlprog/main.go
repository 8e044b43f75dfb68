// Command ctlprog is the stand-in controller the runtime conformance suite
// runs in both runtimes: a static, standard-library-only program that, as
// told by its flags, takes the PWM lock in the shared run directory, serves or
// dials a SOCK_SEQPACKET socket there, probes its own isolation (network,
// read-only root, identity, capabilities, devices), prints what it saw as
// "NAME: …" lines, and exits with a chosen code or on SIGTERM.
//
// It is a test program: never ship it in an image meant to fly.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	var (
		name       = flag.String("name", "ctl", "name printed before every line")
		runDir     = flag.String("rundir", os.Getenv("INFLIGHT_RUN_DIR"), "shared run directory")
		lock       = flag.Bool("lock", false, "try the PWM lock (flock on RUNDIR/pwm.lock)")
		lockWait   = flag.Bool("lock-wait", false, "with -lock: when busy, wait for it")
		listen     = flag.Bool("listen", false, "serve RUNDIR/NAME.sock (SOCK_SEQPACKET), answering ack:MSG")
		dial       = flag.String("dial", "", "peer name whose socket to dial")
		send       = flag.String("send", "hello", "message sent with -dial")
		probeNet   = flag.String("probe-net", "", "TCP address to try to connect to")
		probeIf    = flag.Bool("probe-ifaces", false, "print the network interfaces")
		probeRO    = flag.Bool("probe-rofs", false, "try to write to /")
		probeID    = flag.Bool("probe-id", false, "print uid, gid, effective capabilities, no_new_privs")
		probeDev   = flag.String("probe-dev", "", "device to open and read a byte from")
		probePath  = flag.String("probe-path", "", "file whose absence to check, e.g. /var/run/docker.sock")
		probeEnv   = flag.String("probe-env", "", "environment variable whose absence to check")
		probeRT    = flag.Bool("probe-rt", false, "print the rtprio and memlock limits, the capabilities, and whether SCHED_FIFO can be had")
		lines      = flag.Int("lines", 0, "print this many numbered lines")
		sleep      = flag.Duration("sleep", -1, "how long to run after the setup; <0 forever")
		exitCode   = flag.Int("exit", 0, "exit code after -sleep")
		termExit   = flag.Int("term-exit", 0, "exit code on SIGTERM")
		ignoreTerm = flag.Bool("ignore-term", false, "ignore SIGTERM")
	)
	flag.Parse()
	syscall.Umask(0)
	say := func(format string, a ...any) { fmt.Printf(*name+": "+format+"\n", a...) }

	term := make(chan os.Signal, 1)
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(term, syscall.SIGTERM)
	}

	env := os.Getenv("INFLIGHT_ROLE")
	say("start role=%s rundir=%s", env, *runDir)
	if *lock {
		fd, err := syscall.Open(filepath.Join(*runDir, "pwm.lock"), syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o666)
		if err != nil {
			say("lock error %v", err)
			os.Exit(2)
		}
		if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			say("locked")
		} else {
			say("lock busy")
			if *lockWait {
				go func() {
					if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
						say("lock error %v", err)
						return
					}
					say("locked")
				}()
			}
		}
	}
	if *listen {
		if err := serve(filepath.Join(*runDir, *name+".sock"), say); err != nil {
			say("listen error %v", err)
			os.Exit(2)
		}
		say("listening")
	}
	if *dial != "" {
		reply, err := call(filepath.Join(*runDir, *dial+".sock"), *send)
		if err != nil {
			say("dial error %v", err)
		} else {
			say("reply %s", reply)
		}
	}
	if *probeNet != "" {
		c, err := net.DialTimeout("tcp", *probeNet, 2*time.Second)
		if err != nil {
			say("net blocked (%v)", err)
		} else {
			c.Close()
			say("net open")
		}
	}
	if *probeIf {
		ifs, err := net.Interfaces()
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		say("ifaces %s err=%v", strings.Join(names, ","), err)
	}
	if *probeRO {
		if err := os.WriteFile("/inflight-probe", []byte("x"), 0o644); err != nil {
			if pe, ok := err.(*os.PathError); ok && pe.Err == syscall.EROFS {
				say("rofs read-only")
			} else {
				say("rofs error %v", err)
			}
		} else {
			os.Remove("/inflight-probe")
			say("rofs writable")
		}
	}
	if *probeID {
		st, _ := os.ReadFile("/proc/self/status")
		field := func(k string) string {
			for _, l := range strings.Split(string(st), "\n") {
				if v, ok := strings.CutPrefix(l, k+":"); ok {
					return strings.TrimSpace(v)
				}
			}
			return "?"
		}
		say("id uid=%d gid=%d capeff=%s nonewprivs=%s", os.Getuid(), os.Getgid(), field("CapEff"), field("NoNewPrivs"))
	}
	if *probeDev != "" {
		f, err := os.Open(*probeDev)
		if err == nil {
			_, err = f.Read(make([]byte, 1))
			f.Close()
		}
		if err != nil {
			say("dev error %v", err)
		} else {
			say("dev ok")
		}
	}
	if *probePath != "" {
		if _, err := os.Stat(*probePath); err != nil {
			say("path absent")
		} else {
			say("path present")
		}
	}
	if *probeEnv != "" {
		if _, ok := os.LookupEnv(*probeEnv); ok {
			say("env present")
		} else {
			say("env absent")
		}
	}
	if *probeRT {
		probeRealTime(say)
	}
	for i := 1; i <= *lines; i++ {
		say("line %d", i)
	}
	say("ready")

	if *sleep < 0 {
		*sleep = 1 << 62 // a live timer, so the runtime never sees a deadlock
	}
	done := time.After(*sleep)
	select {
	case <-done:
		say("exit %d", *exitCode)
		os.Exit(*exitCode)
	case <-term:
		say("sigterm")
		os.Exit(*termExit)
	}
}

// probeRealTime prints "rt rtprio=CUR/MAX memlock=CUR/MAX capeff=… capbnd=…
// fifo=ok|<errno>": what a controller started with Spec.RealTime really got.
// The thread returns to SCHED_OTHER after a successful try.
func probeRealTime(say func(string, ...any)) {
	var rtprio, memlock syscall.Rlimit
	syscall.Getrlimit(14, &rtprio) // RLIMIT_RTPRIO
	syscall.Getrlimit(8, &memlock) // RLIMIT_MEMLOCK
	st, _ := os.ReadFile("/proc/self/status")
	field := func(k string) string {
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, k+":"); ok {
				return strings.TrimSpace(v)
			}
		}
		return "?"
	}
	fifo := "ok"
	param := [1]int32{1}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, 0, 1, uintptr(unsafe.Pointer(&param))); e != 0 {
		fifo = e.Error()
	} else {
		param[0] = 0
		syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, 0, 0, uintptr(unsafe.Pointer(&param)))
	}
	lim := func(v uint64) string {
		if v == ^uint64(0) {
			return "unlimited"
		}
		return fmt.Sprint(v)
	}
	say("rt rtprio=%s/%s memlock=%s/%s capeff=%s capbnd=%s fifo=%s", lim(rtprio.Cur), lim(rtprio.Max), lim(memlock.Cur), lim(memlock.Max),
		field("CapEff"), field("CapBnd"), fifo)
}

func serve(path string, say func(string, ...any)) error {
	os.Remove(path)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		return err
	}
	if err := syscall.Listen(fd, 8); err != nil {
		return err
	}
	go func() {
		for {
			c, _, err := syscall.Accept(fd)
			if err != nil {
				say("accept error %v", err)
				return
			}
			go func() {
				defer syscall.Close(c)
				buf := make([]byte, 4096)
				for {
					n, err := syscall.Read(c, buf)
					if err != nil || n == 0 {
						return
					}
					say("got %s", buf[:n])
					if _, err := syscall.Write(c, append([]byte("ack:"), buf[:n]...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return nil
}

func call(path, msg string) (string, error) {
	var fd int
	var err error
	for range 100 { // the peer may still be starting
		if fd, err = syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0); err != nil {
			return "", err
		}
		if err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}); err == nil {
			break
		}
		syscall.Close(fd)
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return "", err
	}
	defer syscall.Close(fd)
	if _, err := syscall.Write(fd, []byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 4096)
	n, err := syscall.Read(fd, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
