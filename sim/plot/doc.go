// Package plot draws a bench flight trace (sim/trace) as three stacked
// panels sharing the time axis — altitude, attitude, motor pulse widths —
// with the trace's events marked as vertical lines. It only reads a trace;
// it never touches the simulator.
package plot
