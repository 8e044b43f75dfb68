package hw

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/host/v3"

	"github.com/inflight-ota/inflight/hw/simbus"
)

// ErrBadSpec is returned by OpenBus for a bus spec it does not understand.
var ErrBadSpec = errors.New("hw: bad bus spec")

// unixScheme prefixes the spec of the bench simulator's socket bus.
const unixScheme = "unix://"

// OpenBus opens the I2C bus named by spec:
//
//	"1", "/dev/i2c-1", "I2C1"        the real bus 1, through periph.io/x/host/v3
//	"unix:///run/inflight/bus.sock"  the bench simulator's socket bus (simbus)
//
// The socket bus introduces itself to the simulator with the program name and
// pid. The caller closes the bus.
func OpenBus(spec string) (i2c.BusCloser, error) {
	if path, ok := strings.CutPrefix(spec, unixScheme); ok {
		if path == "" {
			return nil, fmt.Errorf("hw: bus spec %q has no socket path (want unix:///path/to/socket): %w", spec, ErrBadSpec)
		}
		b, err := simbus.Dial(path, clientName())
		if err != nil {
			return nil, fmt.Errorf("hw: open bus %q: %w", spec, err)
		}
		return b, nil
	}
	if !realBusSpec(spec) {
		return nil, fmt.Errorf("hw: bus spec %q: want a bus number (1), a device (/dev/i2c-1) or unix:///path/to/socket: %w", spec, ErrBadSpec)
	}
	if _, err := host.Init(); err != nil {
		return nil, fmt.Errorf("hw: periph host init: %w", err)
	}
	b, err := i2creg.Open(spec)
	if err != nil {
		return nil, fmt.Errorf("hw: open bus %q: %w", spec, err)
	}
	return b, nil
}

// realBusSpec reports whether spec names a real bus the way periph's i2creg
// registers it: by number, by device path or by its I2Cn alias.
func realBusSpec(spec string) bool {
	for _, p := range []string{"/dev/i2c-", "I2C", ""} {
		if n, ok := strings.CutPrefix(spec, p); ok && n != "" {
			if _, err := strconv.ParseUint(n, 10, 16); err == nil {
				return true
			}
		}
	}
	return false
}

func clientName() string {
	name := filepath.Base(os.Args[0]) + "-" + strconv.Itoa(os.Getpid())
	if len(name) > simbus.MaxName {
		name = name[len(name)-simbus.MaxName:]
	}
	return name
}
