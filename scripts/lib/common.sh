# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts sourcing this file.)
# Shared by scripts/install-pi.sh and scripts/prepare-sd.sh: the options both
# take, and the staging tree of files both put onto the Pi (laid out as on
# the target, installed by deploy/pi-setup.sh).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
deploy=$repo/deploy

: "${prog:?set prog before sourcing common.sh}"
arch="" drone_id="" broker="" keys=() image="" image_tars=() agent_bin="" dry_run=0

die() {
	echo "$prog: $*" >&2
	exit 1
}
usage_error() {
	echo "$prog: $*" >&2
	echo "try: $prog --help" >&2
	exit 2
}

# common_option parses one of the shared options; it sets shift_by to the
# number of words used, 0 when the option is not a shared one.
common_option() {
	shift_by=2
	case "$1" in
	--arch) need_value "$@"; arch=$2 ;;
	--drone-id) need_value "$@"; drone_id=$2 ;;
	--broker) need_value "$@"; broker=$2 ;;
	--keys) need_value "$@"; keys+=("$2") ;;
	--image) need_value "$@"; image=$2 ;;
	--image-tar) need_value "$@"; image_tars+=("$2") ;;
	--agent-bin) need_value "$@"; agent_bin=$2 ;;
	--dry-run) dry_run=1; shift_by=1 ;;
	*) shift_by=0 ;;
	esac
}
need_value() {
	if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi
}

common_help='
  --arch arm64|armv7|armv6  the Pi'"'"'s platform (default: detected; 32-bit
                            Raspberry Pi OS is armv6 offline, the CPU'"'"'s own online)
  --drone-id ID             the drone'"'"'s id on MQTT (A-Z a-z 0-9 . _ -, up to 64)
  --broker URL              MQTT broker, tcp://host:1883 or ssl://host:8883
  --keys FILE               a trusted ground-station public key (groundctl keygen'"'"'s
                            ground.pub); repeat for several
  --image REF               the controller image started cold (default: the tag in
                            the first --image-tar, else inflight/flightctl:1.0.0)
  --image-tar FILE          a docker-archive of the image to load on the Pi
                            (go run ./images/build --platform armv6 --out FILE)
  --agent-bin FILE          the static inflight-agent (default bin/linux-<arch>/inflight-agent,
                            compiled with go when missing)
  --dry-run                 print what would be done, change nothing'

# normalize_arch accepts the spellings people use for the Pi platforms.
normalize_arch() {
	case "$1" in
	arm64 | aarch64 | linux/arm64) echo arm64 ;;
	armv7 | armv7l | arm/v7 | linux/arm/v7 | armhf) echo armv7 ;;
	armv6 | armv6l | arm/v6 | linux/arm/v6) echo armv6 ;;
	*) return 1 ;;
	esac
}

platform_of() {
	case "$1" in
	arm64) echo linux/arm64 ;;
	armv7) echo linux/arm/v7 ;;
	armv6) echo linux/arm/v6 ;;
	esac
}

# check_common validates the shared options once arch is known.
check_common() {
	arch=$(normalize_arch "$arch") || usage_error "--arch: want arm64, armv7 or armv6"
	[ -n "$drone_id" ] || usage_error "--drone-id is required"
	[[ "$drone_id" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || usage_error "--drone-id $drone_id: 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
	[ -n "$broker" ] || usage_error "--broker is required (e.g. tcp://ground.local:1883)"
	[[ "$broker" == *://* ]] || usage_error "--broker $broker: want a URL such as tcp://host:1883"
	[ ${#keys[@]} -gt 0 ] || usage_error "--keys is required: the ground station's public key (groundctl keygen)"
	local k
	for k in "${keys[@]}"; do
		[ -f "$k" ] || die "--keys $k: no such file"
		if grep -q "PRIVATE KEY" "$k"; then
			die "--keys $k holds a PRIVATE key: give the public one (ground.pub); the private key never leaves the ground station"
		fi
		grep -q "BEGIN PUBLIC KEY" "$k" || die "--keys $k: not a PEM public key"
	done
	local t
	for t in "${image_tars[@]}"; do
		[ -f "$t" ] || die "--image-tar $t: no such file"
	done
	if [ -z "$image" ] && [ ${#image_tars[@]} -gt 0 ]; then
		image=$(tar -xOf "${image_tars[0]}" manifest.json 2>/dev/null | sed -n 's/.*"RepoTags":\["\([^"]*\)".*/\1/p')
	fi
	[ -n "$image" ] || image=inflight/flightctl:1.0.0
}

# find_agent sets agent_bin, compiling the agent when it is not built yet.
find_agent() {
	if [ -n "$agent_bin" ]; then
		[ -f "$agent_bin" ] || die "--agent-bin $agent_bin: no such file"
		return
	fi
	agent_bin=$repo/bin/linux-$arch/inflight-agent
	[ -f "$agent_bin" ] && return
	if [ "$dry_run" = 1 ]; then
		echo "$prog: would compile $agent_bin (go build ./cmd/inflight-agent)"
		return
	fi
	command -v go >/dev/null 2>&1 || die "$agent_bin is missing: run make cross (or give --agent-bin)"
	local goarch=$arch goarm=""
	case "$arch" in armv7) goarch=arm goarm=7 ;; armv6) goarch=arm goarm=6 ;; esac
	echo "$prog: compiling $agent_bin"
	(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm go build -trimpath \
		-ldflags "-s -w -X github.com/inflight-ota/inflight/internal/buildinfo.Version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)" \
		-o "$agent_bin" ./cmd/inflight-agent) || die "compiling the agent failed"
}

# render_config writes the agent's config; @GROUP_ADD@ is left for
# pi-setup.sh, which knows the gid of the Pi's i2c group.
render_config() {
	local esc_broker esc_image
	esc_broker=$(printf '%s' "$broker" | sed 's/[\\"]/\\&/g; s/[&|]/\\&/g')
	esc_image=$(printf '%s' "$image" | sed 's/[\\"]/\\&/g; s/[&|]/\\&/g')
	sed -e "s|@DRONE_ID@|$drone_id|" -e "s|@PLATFORM@|$(platform_of "$arch")|" \
		-e "s|@BROKER@|$esc_broker|" -e "s|@IMAGE@|$esc_image|" "$deploy/agent.toml.tmpl" >"$1"
}

# make_stage fills DIR with the files for the Pi; FIRSTBOOT=1 adds the
# first-boot unit that installs Docker on an offline-prepared card.
make_stage() {
	local s=$1 firstboot=${2:-0} k t
	mkdir -p "$s/usr/local/bin" "$s/etc/inflight/keys" "$s/etc/systemd/system" "$s/etc/tmpfiles.d" \
		"$s/etc/modules-load.d" "$s/etc/udev/rules.d"
	if [ -f "$agent_bin" ]; then
		cp "$agent_bin" "$s/usr/local/bin/inflight-agent"
	fi
	render_config "$s/etc/inflight/agent.toml"
	for k in "${keys[@]}"; do
		cp "$k" "$s/etc/inflight/keys/$(basename "$k" .pem | sed 's/\.pub$//').pub"
	done
	cp "$deploy/inflight-agent.service" "$s/etc/systemd/system/"
	cp "$deploy/tmpfiles.d/inflight.conf" "$s/etc/tmpfiles.d/inflight.conf"
	cp "$deploy/modules-load.d/inflight-i2c.conf" "$s/etc/modules-load.d/inflight-i2c.conf"
	cp "$deploy/udev/60-inflight-i2c.rules" "$s/etc/udev/rules.d/60-inflight-i2c.rules"
	if [ ${#image_tars[@]} -gt 0 ]; then
		mkdir -p "$s/var/lib/inflight/images"
		for t in "${image_tars[@]}"; do
			cp "$t" "$s/var/lib/inflight/images/$(basename "$t")"
		done
	fi
	if [ "$firstboot" = 1 ]; then
		cp "$deploy/inflight-firstboot.service" "$s/etc/systemd/system/"
		mkdir -p "$s/usr/local/lib/inflight"
		cp "$deploy/firstboot.sh" "$s/usr/local/lib/inflight/firstboot.sh"
	fi
}

# show_stage lists what goes onto the Pi.
show_stage() {
	(cd "$1" && find . -type f | sort | sed 's|^\.|  |')
}
