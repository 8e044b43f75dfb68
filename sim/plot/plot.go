package plot

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/inflight-ota/inflight/sim/trace"
)

// MaxPoints bounds the points drawn per series; longer traces are decimated.
const MaxPoints = 4000

// Size of the figure.
var (
	Width  = 26 * vg.Centimeter
	Height = 22 * vg.Centimeter
)

// eventStyle colours and dashes each event kind; kinds not listed are not drawn.
var eventStyle = map[string]struct {
	c    color.Color
	dash bool
}{
	trace.EventCrash:         {color.RGBA{200, 0, 0, 255}, false},
	trace.EventTwoWriters:    {color.RGBA{230, 120, 0, 255}, false},
	trace.EventReinit:        {color.RGBA{170, 0, 170, 255}, false},
	trace.EventWriterSwitch:  {color.RGBA{0, 110, 200, 255}, true},
	trace.EventClientConnect: {color.RGBA{150, 150, 150, 255}, true},
	trace.EventClientDrop:    {color.RGBA{90, 90, 90, 255}, true},
}

var series = []color.Color{
	color.RGBA{31, 119, 180, 255},
	color.RGBA{255, 127, 14, 255},
	color.RGBA{44, 160, 44, 255},
	color.RGBA{214, 39, 40, 255},
}

// Span is a stretch of time shaded across every panel, e.g. the window of an
// in-air update. The first span of each label gets a legend entry.
type Span struct {
	From, To float64 // s, trace time
	Label    string
	Color    color.Color // nil: a light yellow
}

// Options add to what File and Draw show.
type Options struct {
	Spans []Span
	// Title replaces "bench flight" at the head of the figure's title.
	Title string
}

// File draws tr into path; the extension chooses the format (.svg or .png).
func File(tr *trace.Trace, path string) error { return FileWith(tr, path, Options{}) }

// FileWith is File with options.
func FileWith(tr *trace.Trace, path string, o Options) error {
	var c interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		c = vgsvg.New(Width, Height)
	case ".png":
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(Width, Height), vgimg.UseDPI(110))}
	default:
		return fmt.Errorf("plot: %s: want a .svg or .png file", path)
	}
	if err := DrawWith(tr, draw.New(c), o); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot: %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// Draw draws tr's three panels onto dc.
func Draw(tr *trace.Trace, dc draw.Canvas) error { return DrawWith(tr, dc, Options{}) }

// DrawWith is Draw with options.
func DrawWith(tr *trace.Trace, dc draw.Canvas, o Options) error {
	if len(tr.Samples) == 0 {
		return fmt.Errorf("plot: the trace has no samples")
	}
	stride := (len(tr.Samples) + MaxPoints - 1) / MaxPoints
	n := (len(tr.Samples) + stride - 1) / stride
	xy := func(f func(s *trace.Sample) float64) plotter.XYs {
		pts := make(plotter.XYs, 0, n)
		for i := 0; i < len(tr.Samples); i += stride {
			s := &tr.Samples[i]
			pts = append(pts, plotter.XY{X: s.T, Y: f(s)})
		}
		return pts
	}

	alt := newPanel("altitude (m)")
	alt.Title.Text = title(tr, o.Title)
	if err := addLines(alt, []string{"z"}, xy(func(s *trace.Sample) float64 { return s.Z })); err != nil {
		return err
	}
	att := newPanel("attitude (°)")
	if err := addLines(att, []string{"roll", "pitch", "yaw"},
		xy(func(s *trace.Sample) float64 { return s.Roll }),
		xy(func(s *trace.Sample) float64 { return s.Pitch }),
		xy(func(s *trace.Sample) float64 { return s.Yaw })); err != nil {
		return err
	}
	mot := newPanel("ESC pulse (µs)")
	mot.X.Label.Text = "time (s)"
	var pwm []plotter.XYs
	var names []string
	for ch := range 4 {
		pwm = append(pwm, xy(func(s *trace.Sample) float64 { return s.PWM[ch] }))
		names = append(names, fmt.Sprintf("ch%d (motor %d)", ch, ch+1))
	}
	if err := addLines(mot, names, pwm...); err != nil {
		return err
	}

	panels := []*plot.Plot{alt, att, mot}
	t0, t1 := tr.Samples[0].T, tr.Samples[len(tr.Samples)-1].T
	for _, p := range panels {
		p.X.Min, p.X.Max = t0, t1
	}
	if err := shadeSpans(panels, o.Spans, t0, t1); err != nil {
		return err
	}
	if err := markEvents(panels, tr.Events, t0, t1); err != nil {
		return err
	}

	tiles := draw.Tiles{Rows: 3, Cols: 1, PadY: vg.Millimeter, PadTop: vg.Millimeter * 2,
		PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	rows := [][]*plot.Plot{{alt}, {att}, {mot}}
	cs := plot.Align(rows, tiles, dc)
	for i, p := range panels {
		p.Draw(cs[i][0])
	}
	return nil
}

func title(tr *trace.Trace, head string) string {
	s := "bench flight"
	if head != "" {
		s = head
	}
	if t, err := time.Parse(time.RFC3339Nano, tr.Header.Start); err == nil {
		s += " " + t.Format("2006-01-02 15:04:05Z07:00")
	}
	if sum := tr.Summary; sum != nil {
		s += fmt.Sprintf(" — crashed %v, two_writers %d, reinit %d, max PWM gap %.1f ms",
			sum.Crashed, sum.TwoWriterEvents, sum.ReinitEvents, sum.MaxPWMGapMS)
	}
	return s
}

func newPanel(ylabel string) *plot.Plot {
	p := plot.New()
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.Padding = vg.Millimeter
	return p
}

func addLines(p *plot.Plot, names []string, data ...plotter.XYs) error {
	for i, d := range data {
		l, err := plotter.NewLine(d)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		l.Color = series[i%len(series)]
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(names[i], l)
	}
	return nil
}

// markEvents draws each event as a vertical line across every panel, with
// one legend entry per kind in the first panel.
func markEvents(panels []*plot.Plot, evs []trace.Event, t0, t1 float64) error {
	seen := map[string]bool{}
	for _, e := range evs {
		st, ok := eventStyle[e.Event]
		if !ok || e.T < t0 || e.T > t1 {
			continue
		}
		for i, p := range panels {
			lo, hi := p.Y.Min, p.Y.Max
			if lo == hi {
				lo, hi = lo-1, hi+1
			}
			l, err := plotter.NewLine(plotter.XYs{{X: e.T, Y: lo}, {X: e.T, Y: hi}})
			if err != nil {
				return fmt.Errorf("plot: %w", err)
			}
			l.Color = st.c
			l.Width = vg.Points(1)
			if st.dash {
				l.Dashes = []vg.Length{vg.Points(3), vg.Points(2)}
			}
			p.Add(l)
			if i == 0 && !seen[e.Event] {
				seen[e.Event] = true
				p.Legend.Add(e.Event, l)
			}
		}
	}
	return nil
}

// shadeSpans draws each span as a translucent band over the data's height
// in every panel.
func shadeSpans(panels []*plot.Plot, spans []Span, t0, t1 float64) error {
	seen := map[string]bool{}
	for _, sp := range spans {
		from, to := max(sp.From, t0), min(sp.To, t1)
		if to <= from {
			continue
		}
		c := sp.Color
		if c == nil {
			c = color.NRGBA{255, 200, 0, 60}
		}
		for i, p := range panels {
			lo, hi := p.Y.Min, p.Y.Max
			if lo == hi {
				lo, hi = lo-1, hi+1
			}
			poly, err := plotter.NewPolygon(plotter.XYs{{X: from, Y: lo}, {X: to, Y: lo}, {X: to, Y: hi}, {X: from, Y: hi}})
			if err != nil {
				return fmt.Errorf("plot: %w", err)
			}
			poly.Color = c
			poly.LineStyle.Width = 0
			p.Add(poly)
			if i == 0 && sp.Label != "" && !seen[sp.Label] {
				seen[sp.Label] = true
				p.Legend.Add(sp.Label, poly)
			}
		}
	}
	return nil
}
