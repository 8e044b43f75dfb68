package trace

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// Format and Version identify the file; the header's "trace" and "version".
const (
	Format  = "inflight-bench"
	Version = 1
)

// Event names.
const (
	EventCrash         = "crash"          // ground impact faster than 1 m/s, or tilt beyond 60°
	EventTwoWriters    = "two_writers"    // two clients wrote PWM interleaved (X→Y→X→Y within the window)
	EventReinit        = "reinit"         // a chip was re-initialised while the motors spun
	EventWriterSwitch  = "writer_switch"  // PWM writes passed from one client to another
	EventClientConnect = "client_connect" // a client sent its first message
	EventClientDrop    = "client_drop"    // a client went away or was dropped
	EventEnd           = "end"            // last line: the run's summary
)

// ErrFormat is wrapped by every error about a file that does not follow the format.
var ErrFormat = errors.New("trace: not an inflight-bench trace")

// Header is the first line of a trace.
type Header struct {
	Trace     string  `json:"trace"`   // Format
	Version   int     `json:"version"` // Version
	Start     string  `json:"start,omitempty"`
	PhysicsHz float64 `json:"physics_hz,omitempty"`
	SampleHz  float64 `json:"sample_hz,omitempty"`
	Seed      uint64  `json:"seed,omitempty"`
	Gusts     bool    `json:"gusts,omitempty"`
	Noise     string  `json:"noise,omitempty"`
	Mass      float64 `json:"mass_kg,omitempty"`
	Hover     float64 `json:"hover_throttle,omitempty"`
}

// Sample is the drone's state at one instant. Angles in degrees, SI otherwise.
type Sample struct {
	T      float64    `json:"t"`    // s since the simulator started
	X      float64    `json:"x"`    // m east
	Y      float64    `json:"y"`    // m north
	Z      float64    `json:"z"`    // m altitude
	VZ     float64    `json:"vz"`   // m/s up
	Roll   float64    `json:"roll"` // deg
	Pitch  float64    `json:"pitch"`
	Yaw    float64    `json:"yaw"`
	P      float64    `json:"p"` // roll rate, deg/s (body)
	Q      float64    `json:"q"` // pitch rate, deg/s
	R      float64    `json:"r"` // yaw rate, deg/s
	PWM    [4]float64 `json:"pwm_us"`
	Motor  [4]float64 `json:"motor"` // rad/s
	Writer string     `json:"writer"`
	Ground bool       `json:"ground,omitempty"`
}

// Event is something that happened at an instant.
type Event struct {
	T        float64  `json:"t"`
	Event    string   `json:"event"`
	Client   string   `json:"client,omitempty"`
	ClientID uint64   `json:"client_id,omitempty"`
	Other    string   `json:"other,omitempty"`  // two_writers, writer_switch: the other client
	What     string   `json:"what,omitempty"`   // reinit: the register written, e.g. "pca9685 MODE1"
	Reason   string   `json:"reason,omitempty"` // crash: "impact" or "tilt"; client_drop: why
	Speed    float64  `json:"speed,omitempty"`  // crash by impact: vertical speed, m/s
	Tilt     float64  `json:"tilt,omitempty"`   // crash by tilt: deg
	GapMS    float64  `json:"gap_ms,omitempty"` // writer_switch: outgoing last write → incoming first write
	Summary  *Summary `json:"summary,omitempty"`
}

// Handover is one passing of the PWM writes from one client to another.
type Handover struct {
	T     float64 `json:"t"`
	From  string  `json:"from"`
	To    string  `json:"to"`
	GapMS float64 `json:"gap_ms"`
}

// Summary is the run's figures; benchsim serve prints it as its last line.
type Summary struct {
	Crashed         bool       `json:"crashed"`
	CrashReason     string     `json:"crash_reason,omitempty"`
	TwoWriterEvents int        `json:"two_writer_events"`
	ReinitEvents    int        `json:"reinit_events"`
	MaxPWMGapMS     float64    `json:"max_pwm_gap_ms"` // while the motors spin
	PWMWrites       int        `json:"pwm_writes"`
	Handovers       []Handover `json:"handovers"`
	Clients         int        `json:"clients"` // clients that connected during the run
	SimS            float64    `json:"sim_s"`
	Overruns        int        `json:"overruns,omitempty"`      // physics steps skipped because the host fell behind
	DroppedLines    int        `json:"dropped_lines,omitempty"` // trace lines lost because the writer fell behind
}

// Writer encodes a trace. It is not safe for concurrent use.
type Writer struct {
	bw  *bufio.Writer
	enc *json.Encoder
}

// NewWriter writes h (Trace and Version filled in) and returns a Writer.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	h.Trace, h.Version = Format, Version
	bw := bufio.NewWriterSize(w, 64<<10)
	tw := &Writer{bw: bw, enc: json.NewEncoder(bw)}
	if err := tw.enc.Encode(&h); err != nil {
		return nil, fmt.Errorf("trace: header: %w", err)
	}
	return tw, nil
}

// Sample writes one sample line.
func (w *Writer) Sample(s *Sample) error { return w.enc.Encode(s) }

// Event writes one event line.
func (w *Writer) Event(e *Event) error { return w.enc.Encode(e) }

// Flush writes any buffered lines.
func (w *Writer) Flush() error { return w.bw.Flush() }

// Record is one line after the header: exactly one of Sample and Event is set.
type Record struct {
	Sample *Sample
	Event  *Event
}

// kind tells an event line from a sample line.
type kind struct {
	Event string `json:"event"`
}

// Reader decodes a trace line by line.
type Reader struct {
	Header Header
	sc     *bufio.Scanner
	n      int
}

// MaxLine bounds a line's length.
const MaxLine = 1 << 20

// NewReader reads and checks the header.
func NewReader(r io.Reader) (*Reader, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLine)
	tr := &Reader{sc: sc}
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("trace: header: %w", err)
		}
		return nil, fmt.Errorf("trace: empty file: %w", ErrFormat)
	}
	tr.n = 1
	if err := json.Unmarshal(sc.Bytes(), &tr.Header); err != nil {
		return nil, fmt.Errorf("trace: header: %v: %w", err, ErrFormat)
	}
	if tr.Header.Trace != Format {
		return nil, fmt.Errorf("trace: header names %q: %w", tr.Header.Trace, ErrFormat)
	}
	if tr.Header.Version < 1 || tr.Header.Version > Version {
		return nil, fmt.Errorf("trace: version %d, this reader knows 1..%d: %w", tr.Header.Version, Version, ErrFormat)
	}
	return tr, nil
}

// Next returns the next record, or io.EOF after the last. Blank lines are skipped.
func (r *Reader) Next() (Record, error) {
	for r.sc.Scan() {
		r.n++
		b := r.sc.Bytes()
		if len(b) == 0 {
			continue
		}
		var k kind
		if err := json.Unmarshal(b, &k); err != nil {
			return Record{}, fmt.Errorf("trace: line %d: %v: %w", r.n, err, ErrFormat)
		}
		if k.Event != "" {
			e := new(Event)
			if err := json.Unmarshal(b, e); err != nil {
				return Record{}, fmt.Errorf("trace: line %d: %v: %w", r.n, err, ErrFormat)
			}
			return Record{Event: e}, nil
		}
		s := new(Sample)
		if err := json.Unmarshal(b, s); err != nil {
			return Record{}, fmt.Errorf("trace: line %d: %v: %w", r.n, err, ErrFormat)
		}
		return Record{Sample: s}, nil
	}
	if err := r.sc.Err(); err != nil {
		return Record{}, fmt.Errorf("trace: line %d: %w", r.n+1, err)
	}
	return Record{}, io.EOF
}

// Trace is a whole decoded trace.
type Trace struct {
	Header  Header
	Samples []Sample
	Events  []Event
	// Summary is the "end" event's summary, nil if the run did not end cleanly.
	Summary *Summary
}

// Read decodes a whole trace.
func Read(r io.Reader) (*Trace, error) {
	tr, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	t := &Trace{Header: tr.Header}
	for {
		rec, err := tr.Next()
		if err == io.EOF {
			return t, nil
		}
		if err != nil {
			return t, err
		}
		if rec.Sample != nil {
			t.Samples = append(t.Samples, *rec.Sample)
			continue
		}
		if rec.Event.Event == EventEnd && rec.Event.Summary != nil {
			t.Summary = rec.Event.Summary
		}
		t.Events = append(t.Events, *rec.Event)
	}
}

// ReadFile decodes the trace in the named file.
func ReadFile(path string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	t, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}
