package pwmlock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const childEnv = "PWMLOCK_TEST_CHILD_DIR"

// TestMain doubles as the child process: with childEnv set, the test binary
// acquires the lock in that directory, says "held", and answers "held?" lines
// on stdin with the value of Held until stdin closes.
func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(child(dir))
	}
	os.Exit(m.Run())
}

func child(dir string) int {
	l := New(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Acquire(ctx); err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("held")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Println(l.Held())
	}
	return 0
}

type childProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startChild(t *testing.T, dir string) *childProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line := c.line(t); line != "held" {
		t.Fatalf("child says %q, want held", line)
	}
	return c
}

func (c *childProc) line(t *testing.T) string {
	t.Helper()
	s, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the child: %v", err)
	}
	return strings.TrimSpace(s)
}

func TestTwoLocksInOneProcessExclude(t *testing.T) {
	dir := t.TempDir()
	a, b := New(dir), New(dir)
	if ok, err := a.TryAcquire(); !ok || err != nil {
		t.Fatalf("a.TryAcquire = %v, %v", ok, err)
	}
	if ok, err := a.TryAcquire(); !ok || err != nil {
		t.Fatalf("second a.TryAcquire = %v, %v; want idempotent", ok, err)
	}
	if ok, err := b.TryAcquire(); ok || err != nil {
		t.Fatalf("b.TryAcquire while a holds = %v, %v", ok, err)
	}
	if !a.Held() || b.Held() {
		t.Fatalf("Held: a %v b %v", a.Held(), b.Held())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b.Acquire while a holds = %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Acquire(context.Background()) }()
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("b.Acquire after a released: %v", err)
	}
	if a.Held() || !b.Held() {
		t.Fatalf("after handover Held: a %v b %v", a.Held(), b.Held())
	}
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(); err != nil {
		t.Fatalf("double release: %v", err)
	}
}

func TestHeldAllocatesNothing(t *testing.T) {
	l := New(t.TempDir())
	if ok, err := l.TryAcquire(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	defer l.Release()
	allocs := testing.AllocsPerRun(1000, func() {
		if !l.Held() {
			t.Fatal("not held")
		}
	})
	if allocs != 0 {
		t.Fatalf("Held allocates %v times per call, want 0", allocs)
	}
}

func TestKilledHolderLosesTheLock(t *testing.T) {
	dir := t.TempDir()
	c := startChild(t, dir)
	l := New(dir)
	if ok, err := l.TryAcquire(); ok || err != nil {
		t.Fatalf("TryAcquire while the child holds = %v, %v", ok, err)
	}
	if err := c.cmd.Process.Kill(); err != nil { // SIGKILL: no cleanup runs in the child
		t.Fatal(err)
	}
	c.cmd.Wait()
	// The kernel drops the flock as the process dies; poll, bounded.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("lock still held after the holder was killed: %v", err)
	}
	if !l.Held() {
		t.Fatal("Held false after Acquire")
	}
	l.Release()
}

func TestSeizeFencesAStalledHolderInAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	c := startChild(t, dir)
	fmt.Fprintln(c.stdin, "held?")
	if got := c.line(t); got != "true" {
		t.Fatalf("child Held before the seize = %s", got)
	}
	// Stall the holder: alive, keeping its flock, unable to react.
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	l := New(dir)
	if ok, _ := l.TryAcquire(); ok {
		t.Fatal("acquired a lock a stalled process holds")
	}
	if err := l.Seize(); err != nil {
		t.Fatal(err)
	}
	if !l.Held() {
		t.Fatal("seizer does not hold the authority")
	}
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c.stdin, "held?")
	if got := c.line(t); got != "false" {
		t.Fatalf("fenced child Held after waking = %s, want false", got)
	}
	// A third claimant finds the seizer's lock, not the orphan.
	third := New(dir)
	if ok, err := third.TryAcquire(); ok || err != nil {
		t.Fatalf("third TryAcquire after seize = %v, %v", ok, err)
	}
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if ok, err := third.TryAcquire(); !ok || err != nil {
		t.Fatalf("third TryAcquire after release = %v, %v", ok, err)
	}
	third.Release()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != FileName {
		t.Fatalf("run dir holds %v, want only %s", entries, FileName)
	}
}

func TestSeizeInProcessAndReacquire(t *testing.T) {
	dir := t.TempDir()
	old, seizer := New(dir), New(dir)
	if ok, err := old.TryAcquire(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := seizer.Seize(); err != nil {
		t.Fatal(err)
	}
	if old.Held() {
		t.Fatal("old holder still Held after a seize")
	}
	if ok, err := old.TryAcquire(); ok || err != nil {
		t.Fatalf("fenced holder re-acquired while the seizer holds: %v, %v", ok, err)
	}
	if err := seizer.Seize(); err != nil || !seizer.Held() {
		t.Fatalf("seize while holding: %v", err)
	}
	if err := seizer.Release(); err != nil {
		t.Fatal(err)
	}
	if ok, err := old.TryAcquire(); !ok || err != nil {
		t.Fatalf("re-acquire after the seizer released: %v, %v", ok, err)
	}
	old.Release()
}

func TestLockFileRemovedMeansNotHeld(t *testing.T) {
	dir := t.TempDir()
	l := New(dir)
	if ok, err := l.TryAcquire(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	defer l.Release()
	if err := os.Remove(l.Path()); err != nil {
		t.Fatal(err)
	}
	if l.Held() {
		t.Fatal("Held with the lock file gone")
	}
	if ok, err := l.TryAcquire(); !ok || err != nil {
		t.Fatalf("TryAcquire recreates the file: %v, %v", ok, err)
	}
}
