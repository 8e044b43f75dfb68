// Package scripttest tests the scripts that put inflight onto a Raspberry Pi
// (scripts/install-pi.sh, scripts/prepare-sd.sh, deploy/pi-setup.sh) and the
// files they install (deploy/): against a disk image the test builds with
// sfdisk, mkfs.vfat and mkfs.ext4; against fake ssh, scp, sudo, systemctl,
// apt-get and docker commands that act on a directory standing for the Pi;
// with systemd-analyze verify and shellcheck.
//
// It must never touch the machine's own /etc, /boot or services: every test
// works in a temporary directory, and the loop devices and mounts
// prepare-sd.sh makes are checked to be gone afterwards.
package scripttest
