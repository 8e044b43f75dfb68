// Package hw is the drone's hardware layer over periph.io: it opens the I2C
// bus and holds the drivers of the three chips on it (subpackages mpu6050,
// baro and pca9685) and the PWM authority lock (pwmlock).
//
// OpenBus gives an i2c.BusCloser for either a real bus ("/dev/i2c-1", through
// periph.io/x/host/v3) or the bench simulator's socket bus
// ("unix:///run/inflight/bus.sock", package simbus). Everything above it sees
// only an i2c.Bus, so the same drivers and the same controller run in the air
// and on the bench.
//
// What hw must never do:
//   - A takeover never re-initialises a chip. The attach paths used in the air
//     (mpu6050.Attach, pca9685.WarmAttach) only read registers: no IMU reset,
//     no write to PCA9685 MODE1, PRE_SCALE or ALL_LED. Cold initialisation
//     (mpu6050.New, pca9685.ColdInit) is for the ground only.
//   - Write PWM without the authority: pca9685.Dev refuses to write unless its
//     Authority (a pwmlock.Lock) says it is held.
//   - Know about control or updates. hw has no estimator, no mixer, no roles
//     and no handoff; it moves register bytes and converts units.
package hw
