// Package physics is the rigid-body model of the bench drone: a 6-DoF X-frame
// quadcopter with first-order motor lag, thrust and yaw moment proportional
// to the square of motor speed, linear and angular drag, gravity, ground
// contact and an optional seeded wind-gust model.
//
// Frames, motor numbering and spin directions follow docs/conventions.md:
// world ENU, body FLU, motors indexed by PCA9685 channel (channel n drives
// motor n+1 of PX4's Iris numbering).
//
// The default airframe is a ~1.5 kg 450-class quad after PX4's Iris.
//
// Quad.Step must never allocate: it runs at 1 kHz or more in real time.
// This package knows nothing of chips, buses or controllers.
package physics
