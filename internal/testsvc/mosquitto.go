package testsvc

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mosquittoPaths are tried after $PATH: Debian puts the broker in /usr/sbin.
var mosquittoPaths = []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"}

// Mosquitto starts a mosquitto broker for the test on a free 127.0.0.1 port,
// waits until it answers an MQTT CONNECT, stops it when the test ends, and
// returns its address, host:port.
func Mosquitto(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range mosquittoPaths {
			if _, err2 := os.Stat(p); err2 == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		Unavailable(t, "mosquitto not installed (apt-get install -y mosquitto)")
		return ""
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // the free port may be taken before mosquitto binds it
		addr, stop, err := startMosquitto(bin, dir)
		if err == nil {
			t.Cleanup(stop)
			return addr
		}
		lastErr = err
	}
	Unavailable(t, "mosquitto did not start: %v", lastErr)
	return ""
}

func startMosquitto(bin, dir string) (addr string, stop func(), err error) {
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n", port)
	if os.Geteuid() == 0 {
		conf += "user root\n" // do not drop to the mosquitto user, which cannot read the test's dir
	}
	confPath := filepath.Join(dir, fmt.Sprintf("mosquitto-%d.conf", port))
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("mosquitto-%d.log", port)))
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "-c", confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return "", nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err = mqttPing(addr); err == nil {
			return addr, stop, nil
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(logf.Name())
			return "", nil, fmt.Errorf("mosquitto exited: %s", lastLine(out))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("mosquitto on %s did not answer within 10s: %w", addr, err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// mqttPing does an MQTT 3.1.1 CONNECT/CONNACK and DISCONNECT.
func mqttPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	id := "testsvc-ping"
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 10, 0, byte(len(id))}
	pkt := append([]byte{0x10, byte(len(vh) + len(id))}, vh...)
	pkt = append(pkt, id...)
	if _, err := c.Write(pkt); err != nil {
		return err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return err
	}
	if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
		return fmt.Errorf("unexpected CONNACK % x", ack)
	}
	_, err = c.Write([]byte{0xe0, 0})
	return err
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) == 0 || len(bytes.TrimSpace(b)) == 0 {
		return "(no output)"
	}
	return lines[len(lines)-1]
}
