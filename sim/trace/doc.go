// Package trace is the bench drone's flight trace: a JSON Lines file whose
// first line is a versioned header, followed by one line per sample (at 100 Hz
// or more) and one line per event, and ending with an "end" event that
// carries the run's summary. docs/bench.md documents the format.
//
// The simulator writes it with Writer; bench tools read it with Reader or
// Read. This package only encodes and decodes: it never interprets a flight.
package trace
