// Package ctlsocktest is a tiny control-socket server for tests: a stand-in
// controller that answers the ctlsock protocol with handlers the test sets.
// It must never be used outside tests.
package ctlsocktest

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"

	"github.com/inflight-ota/inflight/ctlsock"
)

// Handler serves one command; raw is the whole request line. An error whose
// type is *ctlsock.Error is sent with its reason.
type Handler func(raw json.RawMessage) (any, error)

// Server serves a control socket.
type Server struct {
	path string
	ln   net.Listener

	mu       sync.Mutex
	handlers map[string]Handler
	calls    map[string]int
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// Listen serves path (removing a stale socket) until Close. "status"
// answers status (which may be changed with SetStatus).
func Listen(path string, status ctlsock.Status) (*Server, error) {
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	s := &Server{path: path, ln: ln, handlers: map[string]Handler{}, calls: map[string]int{}, conns: map[net.Conn]struct{}{}}
	s.SetStatus(status)
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Path is the socket path.
func (s *Server) Path() string { return s.path }

// Handle sets the handler of cmd.
func (s *Server) Handle(cmd string, h Handler) {
	s.mu.Lock()
	s.handlers[cmd] = h
	s.mu.Unlock()
}

// SetStatus replaces the status answered.
func (s *Server) SetStatus(st ctlsock.Status) {
	s.Handle(ctlsock.CmdStatus, func(json.RawMessage) (any, error) { return st, nil })
}

// Calls is how many requests of cmd were served.
func (s *Server) Calls(cmd string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[cmd]
}

// Close stops serving, drops the connections, removes the socket and waits.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	_ = os.Remove(s.path)
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

type response struct {
	V      int    `json:"v"`
	Cmd    string `json:"cmd,omitempty"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Reason string `json:"reason,omitempty"`
	Result any    `json:"result,omitempty"`
}

func (s *Server) serve(c net.Conn) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 64<<10)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		line := append(json.RawMessage(nil), sc.Bytes()...)
		var req struct {
			V   int    `json:"v"`
			Cmd string `json:"cmd"`
		}
		resp := response{V: ctlsock.Version}
		if err := json.Unmarshal(line, &req); err != nil || req.V != ctlsock.Version {
			resp.Error = "bad request"
			enc.Encode(resp)
			continue
		}
		resp.Cmd = req.Cmd
		s.mu.Lock()
		h := s.handlers[req.Cmd]
		s.calls[req.Cmd]++
		s.mu.Unlock()
		if h == nil {
			resp.Error = "flightctl: unknown command: " + req.Cmd
		} else if res, err := h(line); err != nil {
			resp.Error = err.Error()
			var ce *ctlsock.Error
			if errors.As(err, &ce) {
				resp.Error, resp.Reason = ce.Msg, ce.Reason
			}
		} else {
			resp.OK, resp.Result = true, res
		}
		if err := enc.Encode(resp); err != nil {
			return
		}
	}
}
