package handoff

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
)

// docExample renders a frame as docs/handoff.md shows it: the bytes split at
// field boundaries, header first.
func docExample(f *Frame) string {
	p := AppendFrame(nil, f)
	cut := []int{4, 5, 6, 8, 12, 16, 24, 28}
	pl := p[HeaderLen:]
	o := HeaderLen
	switch f.Type {
	case TypeHello:
		vl := int(pl[1])
		cut = append(cut, o+1, o+2, o+6, o+10, o+14, o+14+vl, o+16+vl)
	case TypeRefuse, TypeAbort, TypeRollback:
		cut = append(cut, o+2, o+4)
	case TypeSnapshot:
		cut = append(cut, o+4, o+8, o+12)
	case TypeTick:
		cut = append(cut, o+4, o+4+len(f.Inputs))
	case TypeShadowReport:
		cut = append(cut, o+8, o+16, o+24)
	}
	var parts []string
	prev := 0
	for _, c := range append(cut, len(p)) {
		if c > prev && c <= len(p) {
			parts = append(parts, hex.EncodeToString(p[prev:c]))
			prev = c
		}
	}
	payload := "-"
	if len(parts) > 8 {
		payload = strings.Join(parts[8:], " ")
	}
	return fmt.Sprintf("%s | %s", strings.Join(parts[:8], " "), payload)
}

// The examples in docs/handoff.md are the encodings of sampleFrames.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../docs/handoff.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range sampleFrames() {
		ex := docExample(&f)
		if !strings.Contains(string(doc), ex) {
			t.Errorf("docs/handoff.md lacks the %v example:\n%s", f.Type, ex)
		}
	}
}
