// Package pca9685 drives the NXP PCA9685 16-channel PWM chip (I2C address
// 0x40) that produces the ESC pulses of the four motors.
//
// Datasheet: https://www.nxp.com/docs/en/data-sheet/PCA9685.pdf (Rev. 4).
//
// Registers used:
//
//	MODE1      0x00  RESTART 0x80, EXTCLK 0x40, AI (auto-increment) 0x20, SLEEP 0x10, ALLCALL 0x01
//	MODE2      0x01  INVRT 0x10, OUTDRV (totem pole) 0x04
//	LEDn_ON_L  0x06 + 4n, then LEDn_ON_H, LEDn_OFF_L, LEDn_OFF_H (4 bytes per channel);
//	           bit 4 of LEDn_ON_H is full-on, bit 4 of LEDn_OFF_H is full-off
//	ALL_LED    0xFA..0xFD (ALL_LED_ON_L .. ALL_LED_OFF_H)
//	PRE_SCALE  0xFE  prescale = round(osc / (4096 * f)) - 1, writable only while SLEEP is set
//
// With the 25 MHz internal oscillator and 400 Hz asked, the prescale is 14:
// 406.9 Hz, a 2457.6 µs period, 0.6 µs per count (docs/conventions.md).
//
// Two ways in, and which one may run in the air:
//
//   - ColdInit, on the ground only: sleep, PRE_SCALE, MODE2 OUTDRV, every
//     motor channel at the disarmed pulse (written while the oscillator is
//     still asleep, so the first pulses out after waking are disarmed ones,
//     never stale throttle values from an earlier run), wake with
//     auto-increment, wait at least 500 µs for the oscillator, then RESTART
//     as the datasheet (7.3.1.1) says. Sleeping the chip stops every output.
//   - WarmAttach, for a takeover in the air: it only reads MODE1, MODE2 and
//     PRE_SCALE, checks them, and derives the µs-to-count conversion from the
//     prescale the chip really has. It writes nothing. The chip keeps
//     producing the last pulse widths by itself while controllers change.
//
// Never use periph's pca9685.NewI2C (periph.io/x/devices/v3/pca9685) on a
// path that can run in the air: it resets MODE1, zeroes every output and
// sleeps about 200 ms — the motors would stop mid-flight.
//
// WriteMotors writes all motor channels in one auto-increment burst and
// allocates nothing; it refuses with ErrNoAuthority unless the Dev's
// Authority (a pwmlock.Lock in production) is held at the time of the call.
// This package must never write MODE1, MODE2, PRE_SCALE or ALL_LED outside
// ColdInit, and knows nothing about control.
package pca9685
