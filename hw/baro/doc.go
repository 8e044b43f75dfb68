// Package baro reads the BMP280 barometer (I2C address 0x76) through
// periph.io/x/devices/v3/bmxx80, which it wraps rather than rewrites, and
// converts pressure to altitude.
//
// Datasheet: Bosch BST-BMP280-DS001, https://www.bosch-sensortec.com/media/boschsensortec/downloads/datasheets/bst-bmp280-ds001.pdf
//
// # Which bmxx80 mode, and why
//
// bmxx80 offers two ways to measure (read in its bmxx80.go):
//
//   - Sense (forced mode): writes ctrl_meas to start one conversion, sleeps
//     the typical measurement time (37.5 ms at pressure ×16, temperature ×2),
//     then polls the status register in a loop without sleeping, then reads.
//     The caller blocks for the whole conversion, the IIR filter is never
//     enabled (bmxx80 only writes it in SenseContinuous), and Sense refuses to
//     run while continuous sensing is on.
//   - SenseContinuous (normal mode): writes config (standby chosen from
//     interval minus the measurement time, and the IIR filter) and ctrl_meas
//     normal; the chip then converts on its own, and a bmxx80 goroutine reads
//     the latest result every interval and sends it on an unbuffered channel.
//     Reading a result never waits for a conversion.
//
// Open uses normal mode: our own goroutine drains bmxx80's channel and keeps
// the latest reading, so Read returns at once with the freshest value (and
// its time stamp in Latest) and never touches the bus. The price: a goroutine
// pair per Baro, and readings up to one interval old. With DefaultOpts
// (pressure ×16, temperature ×2, IIR ×4, 40 ms) the chip picks the 0.5 ms
// standby and converts at about 26 Hz; RMS noise is about 0.2 Pa (~2 cm)
// before the filter.
//
// # What bmxx80 allocates and blocks on (honestly)
//
//   - Open (bmxx80.NewI2C) allocates, does 3 bus transactions to read the chip
//     id and calibration, and WRITES ctrl_meas and config (it puts the chip to
//     sleep, then Open switches it to normal mode). On a takeover this makes
//     the other controller's reader see one or two stale readings and restarts
//     the IIR filter; the barometer holds no state worth protecting, unlike
//     the IMU and the PWM chip, but call Open outside the tick loop.
//   - Every reading, in bmxx80's goroutine: one bus transaction of 1+6 bytes
//     (~0.2 ms at 400 kHz, which can delay an IMU read sharing the bus by as
//     much), and two small heap allocations (the register and data buffers
//     escape through the conn.Conn interface; measured: 2 allocations, about
//     20 bytes per reading). This is off the tick loop but not
//     allocation-free: at 25 Hz about 500 bytes per second of garbage.
//   - On any bus error bmxx80 logs through the global log package and stops
//     for good; Read then returns ErrStopped and the caller may Open again.
//   - Close calls bmxx80's Halt, which WRITES ctrl_meas sleep: it would stop
//     the barometer under another controller. A controller that hands over
//     must use Detach instead (no bus traffic; bmxx80's goroutine stays
//     blocked until the process exits).
//
// Read and Latest take a mutex and copy three numbers: they allocate nothing
// and never block on the bus. Still, the flight controller is expected to use
// the barometer from a goroutine at a lower rate than the control tick.
//
// This package knows no control; altitude fusion belongs to the estimator.
package baro
