package handoff

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// Toy schemas of a one-axis controller state:
//
//	v1: angle float64 (degrees), integrator float64
//	v2: angle float64 (radians), integrator float64, filter float64 (new, 0)
//	v3: v2 plus a uint32 mode, with "SV3" in front
func toyV1(angleDeg, integ float64) []byte {
	b := binary.LittleEndian.AppendUint64(nil, math.Float64bits(angleDeg))
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(integ))
}

func f64(b []byte, i int) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])) }

func toyRegistry() *Registry {
	r := NewRegistry()
	r.Register(1, 2, func(src, dst []byte) ([]byte, error) {
		if len(src) != 16 {
			return nil, errors.New("v1 state is 16 bytes")
		}
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(f64(src, 0)*math.Pi/180))
		dst = append(dst, src[8:16]...)
		return binary.LittleEndian.AppendUint64(dst, 0), nil
	})
	r.Register(2, 1, func(src, dst []byte) ([]byte, error) {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(f64(src, 0)*180/math.Pi))
		return append(dst, src[8:16]...), nil
	})
	r.Register(2, 3, func(src, dst []byte) ([]byte, error) {
		dst = append(dst, "SV3"...)
		dst = append(dst, src...)
		return binary.LittleEndian.AppendUint32(dst, 7), nil
	})
	return r
}

func TestRegistryChain(t *testing.T) {
	r := toyRegistry()
	src := toyV1(90, 0.25)
	orig := append([]byte(nil), src...)
	out, err := r.Migrate(src, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, orig) {
		t.Error("Migrate modified its source")
	}
	if !bytes.HasPrefix(out, []byte("SV3")) || len(out) != 3+24+4 {
		t.Fatalf("v3 state %x", out)
	}
	body := out[3:]
	if got := f64(body, 0); math.Abs(got-math.Pi/2) > 1e-12 {
		t.Errorf("angle %v rad, want pi/2", got)
	}
	if f64(body, 1) != 0.25 || f64(body, 2) != 0 {
		t.Errorf("integrator/filter %v %v", f64(body, 1), f64(body, 2))
	}
	if p, _ := r.Path(1, 3); !reflect.DeepEqual(p, []int{1, 2, 3}) {
		t.Errorf("path %v", p)
	}
	// And back down: 2 → 1 (a rollback to an older program is a handoff too).
	v2, _ := r.Migrate(src, 1, 2)
	back, err := r.Migrate(v2, 2, 1)
	if err != nil || math.Abs(f64(back, 0)-90) > 1e-9 || f64(back, 1) != 0.25 {
		t.Errorf("round trip 1→2→1 = %x, %v", back, err)
	}
}

func TestRegistryNoPath(t *testing.T) {
	r := toyRegistry()
	for _, c := range [][2]int{{3, 1}, {1, 4}, {5, 6}} {
		if r.CanMigrate(c[0], c[1]) {
			t.Errorf("CanMigrate(%d, %d) = true", c[0], c[1])
		}
		if _, err := r.Migrate(nil, c[0], c[1]); !errors.Is(err, ErrNoMigration) {
			t.Errorf("Migrate(%d, %d): %v, want ErrNoMigration", c[0], c[1], err)
		}
	}
	var nilReg *Registry
	if !nilReg.CanMigrate(2, 2) || nilReg.CanMigrate(1, 2) {
		t.Error("a nil registry must allow only equal schemas")
	}
}

func TestRegistrySameVersionCopies(t *testing.T) {
	src := toyV1(1, 2)
	out, err := (*Registry)(nil).Migrate(src, 1, 1)
	if err != nil || !bytes.Equal(out, src) {
		t.Fatalf("%x, %v", out, err)
	}
	out[0] ^= 1
	if out[0] == src[0] {
		t.Error("Migrate to the same version aliases its source")
	}
}

func TestRegistryStepErrorNamesTheStep(t *testing.T) {
	r := toyRegistry()
	_, err := r.Migrate([]byte{1, 2, 3}, 1, 3)
	if err == nil || !strings.Contains(err.Error(), "schema 1 to 2") || !strings.Contains(err.Error(), "16 bytes") {
		t.Errorf("error %v", err)
	}
}

func TestRegistryShortestPath(t *testing.T) {
	r := toyRegistry()
	r.Register(1, 3, func(src, dst []byte) ([]byte, error) { return append(dst, "direct"...), nil })
	out, err := r.Migrate(toyV1(0, 0), 1, 3)
	if err != nil || string(out) != "direct" {
		t.Errorf("took %q, %v; want the direct migration", out, err)
	}
}

func TestRegistryRegisterPanics(t *testing.T) {
	fn := func(src, dst []byte) ([]byte, error) { return dst, nil }
	for name, reg := range map[string]func(r *Registry){
		"same version": func(r *Registry) { r.Register(1, 1, fn) },
		"nil func":     func(r *Registry) { r.Register(1, 2, nil) },
		"twice":        func(r *Registry) { r.Register(1, 2, fn); r.Register(1, 2, fn) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			reg(NewRegistry())
		}()
	}
}
