#!/bin/bash
# install-pi.sh — put the inflight agent onto a running Raspberry Pi over SSH.
set -euo pipefail
prog=install-pi.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
	cat <<EOF
usage: $prog user@host --broker URL --keys FILE [options]

Copies the cross-built inflight agent, its config (/etc/inflight/agent.toml),
the trusted ground-station keys and the systemd unit onto the Pi over SSH;
turns I2C on (raspi-config, else config.txt + i2c-dev); installs Docker when
missing; loads the controller image when given as a tarball; enables and
starts inflight-agent.service. Running it again changes only what differs,
and restarts the agent only then. See docs/pi.md.

options:$common_help
  --ssh-opts "OPTS"         extra ssh/scp options, e.g. "-i ~/.ssh/drone -p 2222"
                            (-p is passed to scp as -P)
  --sudo CMD                how to become root on the Pi (default sudo, none as root)
  --root DIR                install under DIR on the Pi instead of / (for tests)
  -h, --help                this help

The drone id defaults to the Pi's host name, the architecture to what the Pi
runs (dpkg --print-architecture and uname -m).

example:
  go run ./images/build --version 1.0.0 --platform arm64 --out bin/images/flightctl-1.0.0-arm64.tar
  $prog pi@drone1.local --broker tcp://ground.local:1883 --keys ~/.config/inflight/ground.pub \\
      --image-tar bin/images/flightctl-1.0.0-arm64.tar
EOF
}

target="" ssh_opts="" sudo_cmd="" sudo_set=0 remote_root=""
while [ $# -gt 0 ]; do
	common_option "$@"
	if [ "$shift_by" -gt 0 ]; then
		shift "$shift_by"
		continue
	fi
	case "$1" in
	-h | --help) usage; exit 0 ;;
	--ssh-opts) need_value "$@"; ssh_opts=$2; shift 2 ;;
	--sudo) [ $# -ge 2 ] || usage_error "--sudo needs a value"; sudo_cmd=$2; sudo_set=1; shift 2 ;;
	--root) need_value "$@"; remote_root=$2; shift 2 ;;
	-*) usage_error "unknown option $1" ;;
	*)
		[ -z "$target" ] || usage_error "one target only (got $target and $1)"
		target=$1
		shift
		;;
	esac
done
[ -n "$target" ] || usage_error "say which Pi: user@host"

read -r -a ssh_args <<<"$ssh_opts"
scp_args=()
for ((i = 0; i < ${#ssh_args[@]}; i++)); do
	if [ "${ssh_args[$i]}" = -p ]; then scp_args+=(-P); else scp_args+=("${ssh_args[$i]}"); fi
done
if [ "$sudo_set" = 0 ]; then
	case "$target" in root@*) sudo_cmd="" ;; *) sudo_cmd=sudo ;; esac
fi

# show prints a command the way a shell would read it.
show() {
	local out="" w
	for w in "$@"; do out+=" $(printf '%q' "$w")"; done
	echo "${out# }"
}
remote() {
	# shellcheck disable=SC2029 # the command is meant for the remote shell
	ssh "${ssh_args[@]}" "$target" "$@"
}

# Probe the Pi for what was not given.
if [ -z "$arch" ] || [ -z "$drone_id" ]; then
	if [ "$dry_run" = 1 ]; then
		echo "$prog: would probe the Pi: $(show ssh "${ssh_args[@]}" "$target" 'uname -m; dpkg --print-architecture; hostname')"
		[ -n "$arch" ] || arch=arm64
		[ -n "$drone_id" ] || drone_id=HOSTNAME-OF-THE-PI
		echo "$prog: assuming --arch $arch --drone-id $drone_id for the listing below"
	else
		probe=$(remote 'uname -m; dpkg --print-architecture 2>/dev/null || echo unknown; hostname') ||
			die "cannot reach $target over ssh"
		machine=$(sed -n 1p <<<"$probe")
		dpkg_arch=$(sed -n 2p <<<"$probe")
		host=$(sed -n 3p <<<"$probe")
		if [ -z "$arch" ]; then
			case "$dpkg_arch/$machine" in
			arm64/*) arch=arm64 ;;
			armhf/armv6l | armel/*) arch=armv6 ;;
			armhf/*) arch=armv7 ;;
			*/aarch64) arch=arm64 ;;
			*/armv7l) arch=armv7 ;;
			*/armv6l) arch=armv6 ;;
			*) die "the Pi runs $dpkg_arch on $machine: give --arch arm64, armv7 or armv6" ;;
			esac
			echo "$prog: $target runs $dpkg_arch on $machine: --arch $arch"
		fi
		[ -n "$drone_id" ] || drone_id=$host
	fi
fi
check_common
find_agent

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make_stage "$work/stage" 0
cp "$deploy/pi-setup.sh" "$work/pi-setup.sh"

setup_args=(--stage "@TMP@/stage" --image "$image")
[ -z "$remote_root" ] || setup_args+=(--root "$remote_root")

if [ "$dry_run" = 1 ]; then
	echo "$prog: would copy to $target (drone $drone_id, $(platform_of "$arch"), image $image):"
	show_stage "$work/stage"
	echo "$prog: would run:"
	echo "  $(show ssh "${ssh_args[@]}" "$target" mktemp -d /tmp/inflight-install.XXXXXX)"
	echo "  $(show scp "${scp_args[@]}" -q -r "$work/stage" "$work/pi-setup.sh" "$target:@TMP@/")"
	# shellcheck disable=SC2086 # sudo_cmd is one word or none
	echo "  $(show ssh "${ssh_args[@]}" "$target" $sudo_cmd bash @TMP@/pi-setup.sh "${setup_args[@]}")"
	echo "$prog: where pi-setup.sh would, on the Pi: install the files that differ, turn I2C on"
	echo "  (raspi-config nonint do_i2c 0, config.txt dtparam=i2c_arm=on), install docker.io when"
	echo "  missing, docker load the image tarballs when $image is absent, enable and (re)start"
	echo "  inflight-agent.service"
	exit 0
fi

rtmp=$(remote mktemp -d /tmp/inflight-install.XXXXXX) || die "cannot make a temporary directory on $target"
cleanup_remote() { remote rm -rf "$rtmp" || true; }
trap 'cleanup_remote; rm -rf "$work"' EXIT
echo "$prog: copying to $target:$rtmp"
scp "${scp_args[@]}" -q -r "$work/stage" "$work/pi-setup.sh" "$target:$rtmp/"
cmd=()
[ -z "$sudo_cmd" ] || cmd+=("$sudo_cmd")
cmd+=(bash "$rtmp/pi-setup.sh")
for a in "${setup_args[@]}"; do cmd+=("${a//@TMP@/$rtmp}"); done
# ssh joins its arguments with spaces for the remote shell: quote each one.
remote "$(show "${cmd[@]}")"
echo "$prog: $target is set up as drone $drone_id; watch it with: groundctl status"
