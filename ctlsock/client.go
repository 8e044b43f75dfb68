package ctlsock

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout bounds a call whose context has no earlier deadline.
const DefaultTimeout = 2 * time.Second

// MaxResponse bounds one response line.
const MaxResponse = 1 << 20

// Sentinel errors; every error of a call wraps one of them.
var (
	// ErrUnavailable: the socket could not be reached, or the connection
	// broke or timed out (the controller is absent, gone or hung).
	ErrUnavailable = errors.New("controller unavailable")
	// ErrRefused: the controller answered ok=false (see Error.Reason).
	ErrRefused = errors.New("refused by the controller")
	// ErrUnknownCommand: the controller does not know the command (an
	// older controller without the handoff commands, say).
	ErrUnknownCommand = errors.New("unknown command")
	// ErrProtocol: the response was not a v1 response line.
	ErrProtocol = errors.New("control protocol error")
)

// Error is a controller's refusal: its error text and reason code.
type Error struct {
	Cmd    string
	Msg    string
	Reason string
}

func (e *Error) Error() string {
	s := "ctlsock: " + e.Cmd + ": " + e.Msg
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	return s
}

// Is makes errors.Is(err, ErrRefused) true for every refusal and
// ErrUnknownCommand true for an unknown command.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrRefused:
		return true
	case ErrUnknownCommand:
		return strings.Contains(e.Msg, "unknown command")
	}
	return false
}

// Client talks to one control socket. It keeps one connection, dials it
// lazily and redials after any failure. Calls are serialised; a Client is
// safe for concurrent use.
type Client struct {
	path    string
	timeout time.Duration

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// New returns a client of the socket at path. timeout bounds each call
// (DefaultTimeout when 0); a context deadline that comes first wins.
func New(path string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{path: path, timeout: timeout}
}

// Path is the socket's path.
func (c *Client) Path() string { return c.path }

// Close drops the connection; a later call dials again.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop()
	return nil
}

func (c *Client) drop() {
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.rd = nil, nil
	}
}

type response struct {
	V      *int            `json:"v"`
	Cmd    string          `json:"cmd"`
	OK     bool            `json:"ok"`
	Error  string          `json:"error"`
	Reason string          `json:"reason"`
	Result json.RawMessage `json:"result"`
}

// Call sends cmd with the fields of args (a struct or map, or nil) beside
// "v" and "cmd", and decodes the result into result (may be nil).
func (c *Client) Call(ctx context.Context, cmd string, args, result any) error {
	line, err := encodeRequest(cmd, args)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ctlsock: %s: %w: %w", cmd, ErrUnavailable, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.DialContext(ctx, "unix", c.path)
		if err != nil {
			return fmt.Errorf("ctlsock: %s: dial %s: %w: %w", cmd, c.path, ErrUnavailable, err)
		}
		c.conn, c.rd = conn, bufio.NewReaderSize(conn, 4096)
	}
	// A context cancelled mid-call breaks the connection at once.
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c.conn.SetDeadline(deadline)
	if _, err := c.conn.Write(line); err != nil {
		c.drop()
		return fmt.Errorf("ctlsock: %s: write: %w: %w", cmd, ErrUnavailable, err)
	}
	raw, err := readLine(c.rd)
	if err != nil {
		c.drop()
		if errors.Is(err, ErrProtocol) {
			return fmt.Errorf("ctlsock: %s: %w", cmd, err)
		}
		return fmt.Errorf("ctlsock: %s: read: %w: %w", cmd, ErrUnavailable, err)
	}
	var r response
	if err := json.Unmarshal(raw, &r); err != nil {
		c.drop()
		return fmt.Errorf("ctlsock: %s: response: %v: %w", cmd, err, ErrProtocol)
	}
	if r.V == nil || *r.V != Version {
		c.drop()
		return fmt.Errorf("ctlsock: %s: response without \"v\":%d: %w", cmd, Version, ErrProtocol)
	}
	if r.Cmd != "" && r.Cmd != cmd {
		c.drop()
		return fmt.Errorf("ctlsock: %s: response to %q: %w", cmd, r.Cmd, ErrProtocol)
	}
	if !r.OK {
		msg := r.Error
		if msg == "" {
			msg = "refused without a message"
		}
		return &Error{Cmd: cmd, Msg: msg, Reason: r.Reason}
	}
	if result != nil && len(r.Result) > 0 && !bytes.Equal(r.Result, []byte("null")) {
		if err := json.Unmarshal(r.Result, result); err != nil {
			return fmt.Errorf("ctlsock: %s: result: %v: %w", cmd, err, ErrProtocol)
		}
	}
	return nil
}

func readLine(rd *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := rd.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxResponse {
			return nil, fmt.Errorf("response longer than %d bytes: %w", MaxResponse, ErrProtocol)
		}
		if err == nil {
			return buf, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

func encodeRequest(cmd string, args any) ([]byte, error) {
	head, _ := json.Marshal(struct {
		V   int    `json:"v"`
		Cmd string `json:"cmd"`
	}{Version, cmd})
	if args == nil {
		return append(head, '\n'), nil
	}
	b, err := json.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("ctlsock: %s: %w", cmd, err)
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, fmt.Errorf("ctlsock: %s: arguments must encode as a JSON object, got %.20s", cmd, b)
	}
	if string(b) == "{}" {
		return append(head, '\n'), nil
	}
	out := append(head[:len(head)-1:len(head)-1], ',')
	out = append(out, b[1:]...)
	return append(out, '\n'), nil
}

// Status asks for the controller's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	if err := c.Call(ctx, CmdStatus, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// HandoffStart asks the active controller to hand over to the standby.
func (c *Client) HandoffStart(ctx context.Context, req HandoffStart) (*Progress, error) {
	if req.To == "" {
		return nil, fmt.Errorf("ctlsock: %s: no standby socket", CmdHandoffStart)
	}
	var p Progress
	if err := c.Call(ctx, CmdHandoffStart, req, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// HandoffProgress asks how the handoff stands.
func (c *Client) HandoffProgress(ctx context.Context) (*Progress, error) {
	var p Progress
	if err := c.Call(ctx, CmdHandoffProgress, nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// HandoffAbort asks to end the handoff: an abort before the switch, a
// rollback in probation.
func (c *Client) HandoffAbort(ctx context.Context, reason string) (*Progress, error) {
	var p Progress
	if err := c.Call(ctx, CmdHandoffAbort, HandoffAbort{Reason: reason}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}
