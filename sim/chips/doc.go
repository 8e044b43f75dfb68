// Package chips emulates, at register level, the three I2C chips of the
// bench drone: the MPU-6050 IMU (0x68), the BMP280 barometer (0x76) and the
// PCA9685 PWM controller (0x40), so closely that a real driver — ours in hw/
// or periph's bmxx80 and pca9685 — cannot tell them from the real parts.
//
// Each chip is a Device: the simulator feeds it the drone's true state once
// per physics step (Step) and hands it every bus transaction (Tx). A
// transaction reports its Effect — whether it wrote PWM outputs, whether it
// re-initialised the chip — so the simulator can count what must never
// happen in the air. This package never decides what is allowed: it only
// says what a transaction did.
//
// Datasheets:
//   - MPU-6000/MPU-6050 Register Map and Descriptions, RM-MPU-6000A-00 rev 4.2
//   - BMP280 datasheet, BST-BMP280-DS001 (compensation formulas, section 3.11 and 8.2)
//   - PCA9685 product data sheet rev. 4 (NXP)
//
// Devices are not safe for concurrent use; the simulator serialises them.
package chips
