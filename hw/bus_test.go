package hw

import (
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/inflight-ota/inflight/hw/simbus"
)

func TestOpenBusBadSpecs(t *testing.T) {
	for _, spec := range []string{"", "unix://", "i2c-1", "/dev/i2c-", "/dev/spidev0.0", "tcp://127.0.0.1:1", "I2C", "-1", "1.5"} {
		if _, err := OpenBus(spec); !errors.Is(err, ErrBadSpec) {
			t.Errorf("OpenBus(%q) = %v, want ErrBadSpec", spec, err)
		}
	}
}

func TestOpenBusRealSpecsParse(t *testing.T) {
	for _, spec := range []string{"1", "/dev/i2c-1", "I2C1", "/dev/i2c-22"} {
		if !realBusSpec(spec) {
			t.Errorf("realBusSpec(%q) = false", spec)
		}
	}
}

func TestOpenBusMissingRealBus(t *testing.T) {
	// No machine that runs the tests has a bus 250; OpenBus must say so
	// rather than hang or panic, and the error is not a spec error.
	_, err := OpenBus("/dev/i2c-250")
	if err == nil || errors.Is(err, ErrBadSpec) {
		t.Fatalf("OpenBus of a missing bus = %v", err)
	}
}

func TestOpenBusUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hello := make(chan string, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, simbus.MaxPacket)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			var req simbus.Request
			if simbus.DecodeRequest(buf[:n], &req) != nil {
				return
			}
			if req.Kind == simbus.KindHello {
				hello <- string(req.Write)
			}
			st := uint8(simbus.StatusOK)
			if req.Kind == simbus.KindTx {
				st = simbus.StatusNACK
			}
			c.Write(simbus.AppendResponse(nil, &simbus.Response{Status: st, Seq: req.Seq}))
		}
	}()
	b, err := OpenBus("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if name := <-hello; name == "" {
		t.Fatal("empty client name in hello")
	}
	if err := b.Tx(0x68, []byte{0x75}, make([]byte, 1)); !errors.Is(err, simbus.ErrNACK) {
		t.Fatalf("Tx = %v, want ErrNACK", err)
	}
}
