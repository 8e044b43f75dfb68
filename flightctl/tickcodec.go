package flightctl

import (
	"fmt"
	"math"
	"unsafe"
)

// The handoff forwards each tick's Inputs and Outputs between the two
// controllers (TICK frames). Their encodings are fixed-size, little endian,
// in the field order of walkInputs and walkOutputs; they carry no header:
// the handoff frame around them is versioned and checksummed.

// InputsSize and OutputsSize are the encoded sizes.
var (
	InputsSize  = func() int { var z sizer; walkInputs(&z, &Inputs{}); return z.n }()
	OutputsSize = func() int { var z sizer; walkOutputs(&z, &Outputs{}); return z.n }()
)

// AppendInputs appends the encoding of in to b (allocation-free when b has
// room).
func AppendInputs(b []byte, in *Inputs) []byte {
	e := encoder{b: b}
	encInputs(&e, in)
	return e.b
}

// DecodeInputs decodes Inputs; on error in is left unchanged. It allocates
// nothing.
func DecodeInputs(b []byte, in *Inputs) error {
	if len(b) != InputsSize {
		return fmt.Errorf("flightctl: inputs of %d bytes, want %d: %w", len(b), InputsSize, ErrMalformed)
	}
	var t Inputs
	d := decoder{b: b}
	decInputs(&d, &t)
	if d.bad || t.Cmd.Kind >= numCmds || !t.Cmd.Mission.valid() {
		return errInputs
	}
	*in = t
	return nil
}

// AppendOutputs appends the encoding of out to b.
func AppendOutputs(b []byte, out *Outputs) []byte {
	e := encoder{b: b}
	encOutputs(&e, out)
	return e.b
}

// DecodeOutputs decodes Outputs; on error out is left unchanged.
func DecodeOutputs(b []byte, out *Outputs) error {
	if len(b) != OutputsSize {
		return errOutputs
	}
	var t Outputs
	d := decoder{b: b}
	decOutputs(&d, &t)
	if d.bad || t.Mode >= numModes || t.Reason >= numReasons {
		return errOutputs
	}
	*out = t
	return nil
}

// Preallocated so that the per-tick path never formats an error.
var (
	errInputs  = fmt.Errorf("flightctl: inputs: %w", ErrMalformed)
	errOutputs = fmt.Errorf("flightctl: outputs: %w", ErrMalformed)
)

// PulseDivergence is the largest difference between two encoded outputs'
// ESC pulses, µs (+Inf when either is too short): the handoff's shadow
// divergence. Bytes after the encoded Outputs (the write time the
// controllers append) are ignored.
func PulseDivergence(mine, theirs []byte) float64 {
	if len(mine) < OutputsSize || len(theirs) < OutputsSize {
		return math.Inf(1)
	}
	// PulseUS comes first: four float64s.
	var m float64
	for i := 0; i < 4; i++ {
		var a, b float64
		da, db := decoder{b: mine[8*i : 8*i+8]}, decoder{b: theirs[8*i : 8*i+8]}
		da.f64(&a)
		db.f64(&b)
		d := math.Abs(a - b)
		if !(d <= m) { // NaN wins
			m = d
		}
	}
	return m
}

func walkInputs[C coder](c C, in *Inputs) {
	c.f64(&in.Dt)
	c.u64(unsafeI64(&in.TimeNs))
	vec(c, in.Accel[:])
	vec(c, in.Gyro[:])
	c.flag(&in.IMUErr)
	c.f64(&in.BaroPa)
	c.f64(&in.BaroC)
	c.flag(&in.BaroNew)
	c.flag(&in.BaroErr)
	c.u8((*uint8)(&in.Cmd.Kind))
	c.flag(&in.Cmd.Force)
	c.f64(&in.Cmd.Alt)
	mission(c, &in.Cmd.Mission)
}

func walkOutputs[C coder](c C, out *Outputs) {
	vec(c, out.PulseUS[:])
	vec(c, out.Motor[:])
	c.u8((*uint8)(&out.Mode))
	c.u16((*uint16)(&out.Flags))
	c.u16((*uint16)(&out.Events))
	c.u8((*uint8)(&out.Reason))
	c.flag(&out.CmdOK)
}

// unsafeI64 views an int64 as a uint64 (same size and layout).
func unsafeI64(v *int64) *uint64 { return (*uint64)(unsafe.Pointer(v)) }

// The per-tick codecs are written out for the concrete encoder and decoder:
// the generic walkers (kept for the sizes and the tests) make their
// arguments escape, and the tick path must not allocate.

func encInputs(c *encoder, in *Inputs) {
	c.f64(&in.Dt)
	c.u64(unsafeI64(&in.TimeNs))
	for i := range in.Accel {
		c.f64(&in.Accel[i])
	}
	for i := range in.Gyro {
		c.f64(&in.Gyro[i])
	}
	c.flag(&in.IMUErr)
	c.f64(&in.BaroPa)
	c.f64(&in.BaroC)
	c.flag(&in.BaroNew)
	c.flag(&in.BaroErr)
	c.u8((*uint8)(&in.Cmd.Kind))
	c.flag(&in.Cmd.Force)
	c.f64(&in.Cmd.Alt)
	m := &in.Cmd.Mission
	c.u8(&m.N)
	for i := range m.Steps {
		c.u8((*uint8)(&m.Steps[i].Kind))
		c.f64(&m.Steps[i].Arg)
	}
}

func decInputs(c *decoder, in *Inputs) {
	c.f64(&in.Dt)
	c.u64(unsafeI64(&in.TimeNs))
	for i := range in.Accel {
		c.f64(&in.Accel[i])
	}
	for i := range in.Gyro {
		c.f64(&in.Gyro[i])
	}
	c.flag(&in.IMUErr)
	c.f64(&in.BaroPa)
	c.f64(&in.BaroC)
	c.flag(&in.BaroNew)
	c.flag(&in.BaroErr)
	c.u8((*uint8)(&in.Cmd.Kind))
	c.flag(&in.Cmd.Force)
	c.f64(&in.Cmd.Alt)
	m := &in.Cmd.Mission
	c.u8(&m.N)
	for i := range m.Steps {
		c.u8((*uint8)(&m.Steps[i].Kind))
		c.f64(&m.Steps[i].Arg)
	}
}

func encOutputs(c *encoder, out *Outputs) {
	for i := range out.PulseUS {
		c.f64(&out.PulseUS[i])
	}
	for i := range out.Motor {
		c.f64(&out.Motor[i])
	}
	c.u8((*uint8)(&out.Mode))
	c.u16((*uint16)(&out.Flags))
	c.u16((*uint16)(&out.Events))
	c.u8((*uint8)(&out.Reason))
	c.flag(&out.CmdOK)
}

func decOutputs(c *decoder, out *Outputs) {
	for i := range out.PulseUS {
		c.f64(&out.PulseUS[i])
	}
	for i := range out.Motor {
		c.f64(&out.Motor[i])
	}
	c.u8((*uint8)(&out.Mode))
	c.u16((*uint16)(&out.Flags))
	c.u16((*uint16)(&out.Events))
	c.u8((*uint8)(&out.Reason))
	c.flag(&out.CmdOK)
}
