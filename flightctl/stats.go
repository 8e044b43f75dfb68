package flightctl

import "time"

// histBins is the size of the jitter histogram: 1 µs bins up to 5 ms, the
// last bin collecting everything longer.
const histBins = 5001

// TickStats measures the loop's own timing. It is fixed-size and updating it
// allocates nothing.
type TickStats struct {
	Period   time.Duration // nominal
	Ticks    uint64        // intervals measured
	Missed   uint64        // intervals longer than 1.5 periods
	Overruns uint64        // ticks whose read and work took longer than a period
	MaxGap   time.Duration // longest interval
	SumGap   time.Duration // sum of intervals (mean rate = Ticks / SumGap)
	MaxWork  time.Duration // longest work (step, write, observe) of a tick
	SumWork  time.Duration
	MaxRead  time.Duration // longest sensor read (wake-up to inputs ready)
	SumRead  time.Duration
	WriteErr uint64 // failed motor writes
	ReadErr  uint64 // failed IMU reads (counted by the source; read it only in the loop goroutine or a Snapshot)
	last     time.Duration
	started  bool
	jitter   [histBins]uint32 // |interval - period| in µs
}

// Reset forgets every measurement (e.g. at the start of a window of interest).
func (s *TickStats) Reset() {
	p := s.Period
	*s = TickStats{Period: p}
}

// Begin records the start of a tick at monotonic time now.
func (s *TickStats) Begin(now time.Duration) {
	if !s.started {
		s.started, s.last = true, now
		return
	}
	gap := now - s.last
	s.last = now
	s.Ticks++
	s.SumGap += gap
	if gap > s.MaxGap {
		s.MaxGap = gap
	}
	if 2*gap > 3*s.Period {
		s.Missed++
	}
	j := gap - s.Period
	if j < 0 {
		j = -j
	}
	us := int(j / time.Microsecond)
	if us >= histBins {
		us = histBins - 1
	}
	s.jitter[us]++
}

// End records the work time of a tick and its sensor read time.
func (s *TickStats) End(work, read time.Duration) {
	s.SumWork += work
	s.SumRead += read
	if work > s.MaxWork {
		s.MaxWork = work
	}
	if read > s.MaxRead {
		s.MaxRead = read
	}
	if work+read > s.Period {
		s.Overruns++
	}
}

// JitterQuantile returns the q quantile (0..1) of |interval - period|.
func (s *TickStats) JitterQuantile(q float64) time.Duration {
	if s.Ticks == 0 {
		return 0
	}
	want := uint64(q * float64(s.Ticks))
	if want >= s.Ticks {
		want = s.Ticks - 1
	}
	var n uint64
	for i, c := range s.jitter {
		n += uint64(c)
		if n > want {
			return time.Duration(i) * time.Microsecond
		}
	}
	return (histBins - 1) * time.Microsecond
}

// Summary are the figures of TickStats, for status and bench reports.
type Summary struct {
	Ticks         uint64  `json:"ticks"`
	RateHz        float64 `json:"rate_hz"`
	PeriodUS      float64 `json:"period_us"`
	JitterP50US   float64 `json:"jitter_p50_us"`
	JitterP99US   float64 `json:"jitter_p99_us"`
	MaxGapUS      float64 `json:"max_gap_us"`
	Missed        uint64  `json:"missed"`
	MissedPercent float64 `json:"missed_percent"`
	Overruns      uint64  `json:"overruns"`
	MeanWorkUS    float64 `json:"mean_work_us"`
	MaxWorkUS     float64 `json:"max_work_us"`
	MeanReadUS    float64 `json:"mean_read_us"`
	MaxReadUS     float64 `json:"max_read_us"`
	WriteErrors   uint64  `json:"write_errors"`
	ReadErrors    uint64  `json:"read_errors"`
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Summary computes the figures.
func (s *TickStats) Summary() Summary {
	r := Summary{
		Ticks: s.Ticks, PeriodUS: us(s.Period), Missed: s.Missed, Overruns: s.Overruns,
		MaxGapUS: us(s.MaxGap), MaxWorkUS: us(s.MaxWork), MaxReadUS: us(s.MaxRead), WriteErrors: s.WriteErr, ReadErrors: s.ReadErr,
		JitterP50US: us(s.JitterQuantile(0.5)), JitterP99US: us(s.JitterQuantile(0.99)),
	}
	if s.SumGap > 0 {
		r.RateHz = float64(s.Ticks) / s.SumGap.Seconds()
	}
	if s.Ticks > 0 {
		r.MissedPercent = 100 * float64(s.Missed) / float64(s.Ticks)
		r.MeanWorkUS = us(s.SumWork) / float64(s.Ticks)
		r.MeanReadUS = us(s.SumRead) / float64(s.Ticks)
	}
	return r
}
