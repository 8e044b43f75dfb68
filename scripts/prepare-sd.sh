#!/bin/bash
# prepare-sd.sh — put the inflight agent into a Raspberry Pi OS SD-card image, offline.
set -euo pipefail
prog=prepare-sd.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
	cat <<EOF
usage: $prog IMAGE.img --drone-id ID --broker URL --keys FILE [options]

Writes into a Raspberry Pi OS image (before or after it is flashed: IMAGE may
be /dev/sdX too) the same files as install-pi.sh: the agent, its config, the
trusted keys, the systemd unit and its multi-user.target.wants symlink, I2C
on in config.txt, i2c-dev at boot, and a first-boot unit that installs Docker
when missing and loads the controller image (--image-tar). Needs root (loop
devices, mount), sfdisk, and mtools when this kernel cannot mount FAT.
Running it again changes only what differs. See docs/pi.md.

options:$common_help
  --fat auto|mount|mtools   how to edit the FAT boot partition (default auto:
                            mount when the kernel has vfat, else mtools)
  -h, --help                this help

The architecture defaults to the image's: 64-bit is arm64, 32-bit is armv6
(Raspberry Pi OS's 32-bit userland, which runs on every Pi).

example:
  go run ./images/build --version 1.0.0 --platform arm64 --out bin/images/flightctl-1.0.0-arm64.tar
  sudo $prog 2024-11-19-raspios-bookworm-arm64-lite.img --drone-id drone1 \\
      --broker tcp://ground.local:1883 --keys ~/.config/inflight/ground.pub \\
      --image-tar bin/images/flightctl-1.0.0-arm64.tar
EOF
}

img="" fat=auto
while [ $# -gt 0 ]; do
	common_option "$@"
	if [ "$shift_by" -gt 0 ]; then
		shift "$shift_by"
		continue
	fi
	case "$1" in
	-h | --help) usage; exit 0 ;;
	--fat) need_value "$@"; fat=$2; shift 2 ;;
	-*) usage_error "unknown option $1" ;;
	*)
		[ -z "$img" ] || usage_error "one image only (got $img and $1)"
		img=$1
		shift
		;;
	esac
done
[ -n "$img" ] || usage_error "say which image: IMAGE.img"
[ -e "$img" ] || die "$img: no such file"
case "$fat" in auto | mount | mtools) ;; *) usage_error "--fat: want auto, mount or mtools" ;; esac
command -v sfdisk >/dev/null 2>&1 || die "sfdisk is missing (apt-get install fdisk)"

# Partitions from sfdisk's dump: "img1 : start= 8192, size= 1048576, type=c".
sector=$(sfdisk -d "$img" | sed -n 's/^sector-size: *\([0-9]*\).*/\1/p')
sector=${sector:-512}
boot_start="" boot_size="" root_start="" root_size=""
while read -r start size type; do
	case "${type^^}" in
	B | C | E | EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 | C12A7328-F81F-11D2-BA4B-00A0C93EC93B)
		[ -n "$boot_start" ] || { boot_start=$start boot_size=$size; } ;;
	83 | 0FC63DAF-8483-4772-8E79-3D69D8477DE4)
		[ -n "$root_start" ] || { root_start=$start root_size=$size; } ;;
	esac
done < <(sfdisk -d "$img" | sed -n 's/.*start= *\([0-9]*\), *size= *\([0-9]*\), *type= *\([0-9A-Za-z-]*\).*/\1 \2 \3/p')
[ -n "$boot_start" ] || die "$img: no FAT boot partition (type c) in its partition table"
[ -n "$root_start" ] || die "$img: no Linux root partition (type 83) in its partition table"
boot_off=$((boot_start * sector)) root_off=$((root_start * sector))
echo "$prog: $img: boot (FAT) at $boot_off, $((boot_size * sector)) bytes; root (ext4) at $root_off, $((root_size * sector)) bytes"

if [ "$fat" = auto ]; then
	if grep -qw vfat /proc/filesystems || { command -v modprobe >/dev/null 2>&1 && modprobe vfat 2>/dev/null; }; then
		fat=mount
	elif command -v mcopy >/dev/null 2>&1; then
		fat=mtools
	else
		die "this kernel cannot mount FAT and mtools is missing (apt-get install mtools)"
	fi
fi

if [ "$dry_run" = 1 ]; then
	[ -n "$arch" ] || { arch=armv6; echo "$prog: would read the architecture from the image; assuming $arch"; }
	check_common
	find_agent
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	make_stage "$work/stage" 1
	echo "$prog: would attach: losetup --find --show --offset $root_off --sizelimit $((root_size * sector)) $img, mount it (ext4)"
	echo "$prog: would edit the boot partition's config.txt with $fat (dtparam=i2c_arm=on)"
	echo "$prog: would install (drone $drone_id, $(platform_of "$arch"), image $image):"
	show_stage "$work/stage"
	echo "$prog: would enable inflight-agent.service and inflight-firstboot.service (multi-user.target.wants symlinks)"
	echo "$prog: would unmount and detach"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (losetup, mount): sudo $0 ..."

# Everything acquired is released by cleanup, on success, error or signal.
work=$(mktemp -d)
mounts=() loops=()
cleanup() {
	local rc=$? i
	set +e
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		umount "${mounts[$i]}" 2>/dev/null || { sleep 1; umount "${mounts[$i]}" 2>/dev/null; } ||
			umount -l "${mounts[$i]}" || echo "$prog: could not unmount ${mounts[$i]}" >&2
	done
	for i in "${loops[@]}"; do
		losetup -d "$i" || echo "$prog: could not detach $i" >&2
	done
	rm -rf "$work"
	if [ "$rc" != 0 ]; then echo "$prog: failed; $img is unmounted and detached" >&2; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# attach sets dev to a new loop device for one partition. Partition loop
# devices (losetup -P) need udev to appear in containers; offsets do not.
attach() {
	dev=$(losetup --find --show --offset "$1" --sizelimit "$2" "$img") || die "losetup failed: are loop devices available?"
	loops+=("$dev")
}

attach "$root_off" $((root_size * sector))
mkdir -p "$work/root"
mount -t ext4 "$dev" "$work/root" || die "mounting the root partition ($dev) failed"
mounts+=("$work/root")

if [ -z "$arch" ]; then
	elf=""
	for f in usr/bin/dpkg bin/sh usr/bin/bash; do
		if [ -f "$work/root/$f" ]; then elf=$work/root/$f; break; fi
	done
	[ -n "$elf" ] || die "cannot tell the image's architecture: give --arch"
	class=$(od -An -tu1 -j4 -N1 "$elf" | tr -d ' ')
	machine=$(od -An -tu2 -j18 -N2 "$elf" | tr -d ' ')
	case "$class/$machine" in
	2/183) arch=arm64 ;;
	1/40) arch=armv6 ;;
	*) die "the image's $f is ELF class $class machine $machine, not a Pi: give --arch" ;;
	esac
	echo "$prog: the image is $(platform_of "$arch")"
fi
check_common
find_agent
make_stage "$work/stage" 1

config_txt=$work/config.txt
case "$fat" in
mount)
	attach "$boot_off" $((boot_size * sector))
	mkdir -p "$work/boot"
	mount -t vfat "$dev" "$work/boot" || die "mounting the boot partition ($dev) failed"
	mounts+=("$work/boot")
	config_txt=$work/boot/config.txt
	[ -f "$config_txt" ] || : >"$config_txt"
	;;
mtools)
	export MTOOLS_SKIP_CHECK=1
	mcopy -n -i "$img@@$boot_off" ::/config.txt "$config_txt" 2>/dev/null || : >"$config_txt"
	;;
esac

bash "$deploy/pi-setup.sh" --offline --root "$work/root" --stage "$work/stage" --config-txt "$config_txt" --image "$image"

if [ "$fat" = mtools ]; then
	mcopy -o -i "$img@@$boot_off" "$config_txt" ::/config.txt
fi
sync
echo "$prog: $img is ready for drone $drone_id; flash it and boot (the first boot installs Docker when missing)"
