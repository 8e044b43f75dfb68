package sim_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/inflight-ota/inflight/hw/simbus"
	"github.com/inflight-ota/inflight/sim"
	"github.com/inflight-ota/inflight/sim/chips"
)

// BenchmarkBusRoundTrip14 measures one 14-byte MPU-6050 burst read through
// the socket bus (simbus client → server → chip → back) while the physics
// runs at 1 kHz, and reports the p50 and p99 round trip.
func BenchmarkBusRoundTrip14(b *testing.B) {
	path := filepath.Join(b.TempDir(), "bus.sock")
	d := sim.New(nil)
	l, err := sim.Listen(path)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { sim.ServeListener(ctx, l, d, nil); done <- struct{}{} }()
	go func() { d.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	bus, err := simbus.Dial(path, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	w := []byte{0x3B}
	var r [14]byte
	if err := bus.Tx(chips.AddrMPU6050, []byte{0x6B, 0x01}, nil); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		if err := bus.Tx(chips.AddrMPU6050, w, r[:]); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
