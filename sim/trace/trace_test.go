package trace

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{PhysicsHz: 1000, SampleHz: 200, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	s1 := Sample{T: 0.005, Z: 1.25, Roll: 1.5, PWM: [4]float64{1500, 1500, 1510, 1490}, Writer: "v1"}
	e1 := Event{T: 0.006, Event: EventReinit, Client: "v2", ClientID: 2, What: "pca9685 MODE1"}
	sum := &Summary{ReinitEvents: 1, MaxPWMGapMS: 2.5, Handovers: []Handover{{T: 1, From: "v1", To: "v2", GapMS: 2.5}}, Clients: 2}
	e2 := Event{T: 0.01, Event: EventEnd, Summary: sum}
	for _, err := range []error{w.Sample(&s1), w.Event(&e1), w.Event(&e2), w.Flush()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(buf.String(), `{"trace":"inflight-bench","version":1,`) {
		t.Fatalf("header line: %q", strings.SplitN(buf.String(), "\n", 2)[0])
	}
	tr, err := Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Header.PhysicsHz != 1000 || tr.Header.Seed != 3 {
		t.Fatalf("header %+v", tr.Header)
	}
	if len(tr.Samples) != 1 || !reflect.DeepEqual(tr.Samples[0], s1) {
		t.Fatalf("samples %+v", tr.Samples)
	}
	if len(tr.Events) != 2 || !reflect.DeepEqual(tr.Events[0], e1) {
		t.Fatalf("events %+v", tr.Events)
	}
	if !reflect.DeepEqual(tr.Summary, sum) {
		t.Fatalf("summary %+v", tr.Summary)
	}
}

func TestRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":       "",
		"not json":    "hello\n",
		"other trace": `{"trace":"other","version":1}` + "\n",
		"future":      `{"trace":"inflight-bench","version":2}` + "\n",
	} {
		if _, err := Read(strings.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err %v, want ErrFormat", name, err)
		}
	}
	r, err := NewReader(strings.NewReader(`{"trace":"inflight-bench","version":1}` + "\n\n" + `{"t":1,"z":"high"}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("bad sample: %v", err)
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"trace":"inflight-bench","version":1}` + "\n" + `{"t":0.01,"z":1,"pwm_us":[1,2,3,4],"writer":"a"}` + "\n" + `{"t":0.02,"event":"crash","reason":"tilt","tilt":61}`))
	f.Add([]byte(`{"trace":"inflight-bench","version":1}` + "\n" + `{"t":3,"event":"end","summary":{"crashed":true,"handovers":[{"t":1}]}}`))
	f.Add([]byte(`{"trace":"inflight-bench","version":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := Read(bytes.NewReader(b))
		if err != nil {
			if tr == nil && !errors.Is(err, ErrFormat) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "token too long") {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// A trace that reads re-encodes and reads back to the same thing.
		var buf bytes.Buffer
		w, err := NewWriter(&buf, tr.Header)
		if err != nil {
			t.Fatal(err)
		}
		for i := range tr.Samples {
			w.Sample(&tr.Samples[i])
		}
		for i := range tr.Events {
			w.Event(&tr.Events[i])
		}
		w.Flush()
		tr2, err := Read(&buf)
		if err != nil {
			t.Fatalf("re-read: %v", err)
		}
		if len(tr2.Samples) != len(tr.Samples) || len(tr2.Events) != len(tr.Events) {
			t.Fatalf("re-read %d/%d records, wrote %d/%d", len(tr2.Samples), len(tr2.Events), len(tr.Samples), len(tr.Events))
		}
	})
}
