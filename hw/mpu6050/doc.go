// Package mpu6050 drives the InvenSense MPU-6050 6-axis IMU (I2C address
// 0x68) over any i2c.Bus: the real /dev/i2c-1 or the bench's socket bus.
//
// Datasheet: PS-MPU-6000A-00 rev 3.4,
// https://invensense.tdk.com/wp-content/uploads/2015/02/MPU-6000-Datasheet1.pdf
// Register map: RM-MPU-6000A-00 rev 4.2,
// https://invensense.tdk.com/wp-content/uploads/2015/02/MPU-6000-Register-Map1.pdf
//
// Registers used:
//
//	SMPLRT_DIV    0x19  sample rate = gyro output rate / (1 + div); gyro output rate is
//	                    8 kHz with DLPF_CFG 0 or 7, else 1 kHz
//	CONFIG        0x1A  DLPF_CFG in bits 2:0 (EXT_SYNC_SET left 0)
//	GYRO_CONFIG   0x1B  FS_SEL in bits 4:3 (±250, 500, 1000, 2000 °/s); self-test bits 7:5 left 0
//	ACCEL_CONFIG  0x1C  AFS_SEL in bits 4:3 (±2, 4, 8, 16 g); self-test bits 7:5 left 0
//	ACCEL_XOUT_H  0x3B  burst of 14: accel X,Y,Z, TEMP, gyro X,Y,Z, each int16 big-endian
//	PWR_MGMT_1    0x6B  DEVICE_RESET 0x80, SLEEP 0x40, CYCLE 0x20, CLKSEL bits 2:0 (1: PLL with gyro X)
//	WHO_AM_I      0x75  reads 0x68 (MPU-6500/9250 clones read otherwise and are refused)
//
// Scaling: accel LSB/g 16384, 8192, 4096, 2048; gyro LSB/(°/s) 131, 65.5,
// 32.8, 16.4; temperature °C = raw/340 + 36.53. Samples come out in the body
// frame of docs/conventions.md (the chip is mounted with its axes on body x,
// y, z): accel in m/s² of specific force (level at rest: 0, 0, +9.81), gyro in
// rad/s.
//
// Two ways in:
//   - New: cold init on the ground: WHO_AM_I, DEVICE_RESET, 100 ms, wake with
//     the PLL clock, configure, wait the 30 ms gyro start-up, verify.
//   - Attach: for a takeover in the air. It reads WHO_AM_I, PWR_MGMT_1 and the
//     four config registers, checks them against Opts and writes NOTHING (a
//     reset in the air would blank the IMU for over 100 ms).
//
// Read is one 14-byte burst and allocates nothing. A Dev is not safe for
// concurrent use: one goroutine (the control loop) owns it. This package
// knows no control: the gyro bias from CalibrateGyro is returned to the
// caller, never applied inside the driver.
package mpu6050
