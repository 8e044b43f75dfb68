#!/bin/bash
# pi-setup.sh — install staged inflight files onto a Raspberry Pi OS system.
#
# It runs on the Pi as root (scripts/install-pi.sh ships it over SSH), or on
# the build machine against a mounted SD-card root (scripts/prepare-sd.sh,
# --offline). Every step is idempotent: a file is written only when its
# content differs, and the agent is restarted only when something changed.
#
# usage: pi-setup.sh --stage DIR [--root DIR] [--offline] [--config-txt FILE]
#                    [--image REF] [--dry-run]
#
#   --stage DIR       files laid out as on the target (usr/local/bin/inflight-agent,
#                     etc/inflight/agent.toml with @GROUP_ADD@ still to fill, ...)
#   --root DIR        the target's root (default /)
#   --offline         the target is not running: no systemctl, apt, docker;
#                     units are enabled with symlinks, Docker by the first-boot unit
#   --config-txt FILE the firmware's config.txt to enable I2C in (default
#                     <root>/boot/firmware/config.txt, else <root>/boot/config.txt)
#   --image REF       the controller image, loaded from the staged tarballs when missing
#   --dry-run         say what would change, change nothing
set -euo pipefail

stage="" root="/" offline=0 config_txt="" image="" dry=0 reboot=0
while [ $# -gt 0 ]; do
	case "$1" in
	--stage) stage=$2; shift 2 ;;
	--root) root=$2; shift 2 ;;
	--offline) offline=1; shift ;;
	--config-txt) config_txt=$2; shift 2 ;;
	--image) image=$2; shift 2 ;;
	--dry-run) dry=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "pi-setup: unknown argument $1" >&2; exit 2 ;;
	esac
done
if [ -z "$stage" ] || [ ! -d "$stage" ]; then
	echo "pi-setup: --stage DIR is required" >&2
	exit 2
fi
root=${root%/}
changed=0

say() { echo "pi-setup: $*"; }
# act runs a command, or only shows it with --dry-run.
act() {
	if [ "$dry" = 1 ]; then
		echo "pi-setup: would run: $*"
	else
		say "run: $*"
		"$@"
	fi
}

# mode_of gives the mode a staged file is installed with.
mode_of() {
	case "$1" in
	usr/local/bin/* | usr/local/lib/inflight/*.sh) echo 0755 ;;
	etc/inflight/agent.toml) echo 0640 ;;
	*) echo 0644 ;;
	esac
}

# The group owning /dev/i2c-N: Raspberry Pi OS has "i2c"; make it elsewhere.
i2c_gid() {
	local group_file=$root/etc/group gid
	if [ "$root" = "" ] && [ "$offline" = 0 ] && command -v getent >/dev/null 2>&1; then
		if ! getent group i2c >/dev/null; then
			act groupadd --system i2c >&2
		fi
		getent group i2c | cut -d: -f3
		return
	fi
	gid=$(awk -F: '$1 == "i2c" { print $3 }' "$group_file" 2>/dev/null || true)
	if [ -z "$gid" ]; then
		# A free system gid, counting down from 999 as groupadd --system does.
		gid=999
		while awk -F: -v g="$gid" '$3 == g { found = 1 } END { exit !found }' "$group_file" 2>/dev/null; do
			gid=$((gid - 1))
		done
		if [ "$dry" = 1 ]; then
			say "would add group i2c ($gid) to $group_file" >&2
		else
			say "adding group i2c ($gid) to $group_file" >&2
			echo "i2c:x:$gid:" >>"$group_file"
			if [ -f "$root/etc/gshadow" ]; then echo "i2c:!::" >>"$root/etc/gshadow"; fi
		fi
	fi
	echo "$gid"
}

# install_file copies stage/REL to root/REL when the content or mode differs.
install_file() {
	local rel=$1 src=$2 dest=$root/$1 mode
	mode=$(mode_of "$rel")
	if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
		return
	fi
	changed=1
	if [ "$dry" = 1 ]; then
		say "would install /$rel ($mode)"
		return
	fi
	if [ "$rel" = etc/inflight/agent.toml ] && [ -f "$dest" ] && ! cmp -s "$src" "$dest"; then
		cp -p "$dest" "$dest.bak"
		say "kept the previous /$rel as /$rel.bak"
	fi
	install -D -m "$mode" -o 0 -g 0 "$src" "$dest"
	say "installed /$rel ($mode)"
}

# set_config sets KEY=VALUE in config.txt (KEY such as dtparam=i2c_arm):
# uncomments or rewrites the first line setting KEY, else appends it in an
# [all] section so that no conditional filter above applies to it.
set_config() {
	local file=$1 key=$2 value=$3 tmp
	if grep -Eq "^[[:space:]]*${key}=${value}[[:space:]]*$" "$file"; then
		return
	fi
	changed=1 reboot=1
	if [ "$dry" = 1 ]; then
		say "would set $key=$value in $file"
		return
	fi
	tmp=$(mktemp)
	if grep -Eq "^[[:space:]]*#?[[:space:]]*$key=" "$file"; then
		awk -v k="$key" -v v="$value" '
			!done && $0 ~ "^[[:space:]]*#?[[:space:]]*" k "=" { print k "=" v; done = 1; next }
			{ print }' "$file" >"$tmp"
	else
		cp "$file" "$tmp"
		if [ -s "$tmp" ] && [ "$(tail -c1 "$tmp" | od -An -c | tr -d ' ')" != '\n' ]; then echo >>"$tmp"; fi
		printf '\n[all]\n%s=%s\n' "$key" "$value" >>"$tmp"
	fi
	cat "$tmp" >"$file" # keep the file's owner and mode (FAT has none anyway)
	rm -f "$tmp"
	say "set $key=$value in $file"
}

# 1. Files.
gid=$(i2c_gid)
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
while IFS= read -r -d '' f; do
	rel=${f#"$stage"/}
	src=$f
	if [ "$rel" = etc/inflight/agent.toml ]; then
		src=$rendered/agent.toml
		sed "s/@GROUP_ADD@/\"$gid\"/" "$f" >"$src"
	fi
	install_file "$rel" "$src"
done < <(find "$stage" -type f -print0 | sort -z)
# A key no longer given is no longer trusted.
keydir=etc/inflight/keys
for k in "$root/$keydir"/*; do
	[ -e "$k" ] || continue
	if [ ! -e "$stage/$keydir/$(basename "$k")" ]; then
		changed=1
		if [ "$dry" = 1 ]; then say "would remove untrusted ${k#"$root"}"; else rm -f "$k"; say "removed ${k#"$root"}"; fi
	fi
done

# 2. I2C on: config.txt, plus i2c-dev at boot (modules-load.d, staged).
if [ -z "$config_txt" ]; then
	for c in "$root/boot/firmware/config.txt" "$root/boot/config.txt"; do
		if [ -f "$c" ]; then config_txt=$c; break; fi
	done
fi
if [ "$offline" = 0 ] && [ "$root" = "" ] && command -v raspi-config >/dev/null 2>&1; then
	act raspi-config nonint do_i2c 0
fi
if [ -n "$config_txt" ] && [ -f "$config_txt" ]; then
	set_config "$config_txt" dtparam=i2c_arm on
	if ! grep -Eq '^[[:space:]]*dtparam=i2c_arm_baudrate=' "$config_txt"; then
		set_config "$config_txt" dtparam=i2c_arm_baudrate 400000
	fi
else
	say "warning: no config.txt found (not a Raspberry Pi OS root?): enable I2C by hand (dtparam=i2c_arm=on)"
fi

units=(inflight-agent.service)
if [ -f "$stage/etc/systemd/system/inflight-firstboot.service" ]; then
	units=(inflight-firstboot.service "${units[@]}")
fi

if [ "$offline" = 1 ]; then
	# 3. Enable the units as `systemctl enable` would: WantedBy=multi-user.target.
	for u in "${units[@]}"; do
		link=$root/etc/systemd/system/multi-user.target.wants/$u
		if [ "$(readlink "$link" 2>/dev/null)" != "/etc/systemd/system/$u" ]; then
			if [ "$dry" = 1 ]; then
				say "would enable $u (multi-user.target.wants symlink)"
			else
				mkdir -p "$(dirname "$link")"
				ln -sfn "/etc/systemd/system/$u" "$link"
				say "enabled $u"
			fi
		fi
	done
	[ "$dry" = 1 ] || mkdir -p "$root/var/lib/inflight"
	[ "$changed" = 1 ] || say "nothing changed"
	say "done (offline): the first boot sets Docker up and loads the image"
	exit 0
fi

# 3. Online: kernel module, device group, run dir, Docker, image, unit.
act modprobe i2c-dev || say "warning: modprobe i2c-dev failed (loaded at next boot)"
act systemd-tmpfiles --create /etc/tmpfiles.d/inflight.conf
act udevadm control --reload || true
act udevadm trigger --subsystem-match=i2c-dev || true
if ! command -v dockerd >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	act apt-get update
	act apt-get install -y docker.io
fi
act systemctl enable --now docker.service
if [ "$dry" = 0 ]; then
	for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if [ -n "$image" ] && ! docker image inspect "$image" >/dev/null 2>&1; then
	for t in "$root"/var/lib/inflight/images/*.tar; do
		[ -e "$t" ] || continue
		act docker load -i "$t"
	done
	if [ "$dry" = 0 ] && ! docker image inspect "$image" >/dev/null 2>&1; then
		say "note: image $image is not here yet; the agent pulls it if it is a registry reference"
	fi
fi
act systemctl daemon-reload
act systemctl enable inflight-agent.service
if [ "$changed" = 1 ]; then
	act systemctl restart inflight-agent.service
else
	act systemctl start inflight-agent.service
	say "nothing changed"
fi
if [ "$reboot" = 1 ]; then
	say "reboot the Pi to turn I2C on (config.txt changed)"
fi
say "done"
