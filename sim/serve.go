package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/inflight-ota/inflight/hw/simbus"
)

// writeTimeout bounds sending one response; a client that does not read
// its responses for this long is dropped.
const writeTimeout = time.Second

// Listen creates the bus socket at path (replacing a stale socket left by
// a previous run) with mode 0666, so a client in a container with another
// uid can use it through a bind mount.
func Listen(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("sim: %s: another simulator is serving it", path)
		}
		os.Remove(path)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("sim: listen: %w", err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("sim: %w", err)
	}
	return l, nil
}

// Serve listens on path and serves the drone's bus until ctx is done.
func Serve(ctx context.Context, path string, d *Drone, log *slog.Logger) error {
	l, err := Listen(path)
	if err != nil {
		return err
	}
	return ServeListener(ctx, l, d, log)
}

// ServeListener serves the drone's bus on l until ctx is done, then closes
// l and every client connection and waits for them.
func ServeListener(ctx context.Context, l *net.UnixListener, d *Drone, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		mu    sync.Mutex
		conns = map[*net.UnixConn]struct{}{}
		wg    sync.WaitGroup
		done  = make(chan struct{})
	)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	defer close(done)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, net.ErrClosed) {
				break
			}
			wg.Wait()
			return fmt.Errorf("sim: accept: %w", err)
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			break
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			serveConn(ctx, c, d, log)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	return nil
}

// serveConn answers one client's requests in order until it goes away or
// sends a malformed request.
func serveConn(ctx context.Context, c *net.UnixConn, d *Drone, log *slog.Logger) {
	defer c.Close()
	cl := d.Connect()
	log = log.With("client_id", cl.ID)
	var (
		in   [simbus.MaxPacket + 1]byte
		out  [simbus.RespHeaderLen + simbus.MaxPayload]byte
		rd   [simbus.MaxPayload]byte
		req  simbus.Request
		resp simbus.Response
		seen bool
	)
	for {
		n, err := c.Read(in[:])
		if err != nil {
			reason := "closed"
			if ctx.Err() != nil {
				reason = "server stopped"
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				reason = "read: " + err.Error()
			}
			log.Debug("sim: client gone", "client", cl.Name(), "reason", reason)
			cl.Drop(reason)
			return
		}
		if n == 0 { // a zero-length packet: the peer shut down
			cl.Drop("closed")
			return
		}
		err = nil
		if !seen {
			seen = true
			if n <= simbus.ReqHeaderLen || in[1] != simbus.KindHello {
				cl.Seen() // a hello announces itself with its name
			}
		}
		if n > simbus.MaxPacket {
			err = fmt.Errorf("sim: packet longer than %d bytes: %w", simbus.MaxPacket, simbus.ErrMalformed)
		} else {
			err = simbus.DecodeRequest(in[:n], &req)
		}
		if err != nil {
			var seq uint32
			if n >= simbus.ReqHeaderLen {
				seq = binary.LittleEndian.Uint32(in[8:])
			}
			resp = simbus.Response{Status: simbus.StatusMalformed, Seq: seq}
			c.SetWriteDeadline(time.Now().Add(writeTimeout))
			c.Write(simbus.AppendResponse(out[:0], &resp))
			log.Warn("sim: dropping client after a malformed request", "client", cl.Name(), "err", err)
			cl.Drop("malformed: " + strings.TrimPrefix(err.Error(), "simbus: "))
			return
		}
		resp = simbus.Response{Status: simbus.StatusOK, Seq: req.Seq}
		switch req.Kind {
		case simbus.KindHello:
			cl.Hello(string(req.Write))
		case simbus.KindTx:
			r := rd[:req.ReadLen]
			resp.Status = cl.Tx(req.Addr, req.Write, r)
			if resp.Status == simbus.StatusOK {
				resp.Read = r
			}
		}
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(simbus.AppendResponse(out[:0], &resp)); err != nil {
			cl.Drop("write: " + err.Error())
			return
		}
	}
}
