#!/bin/sh
# Runs once on the Pi (inflight-firstboot.service): install Docker when
# missing, load the controller images shipped in /var/lib/inflight/images,
# start the agent. Safe to run again.
set -eu
state=/var/lib/inflight
if ! command -v dockerd >/dev/null 2>&1; then
	echo "inflight-firstboot: installing docker.io"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y docker.io
fi
systemctl enable --now docker.service
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
for t in "$state"/images/*.tar; do
	[ -e "$t" ] || continue
	echo "inflight-firstboot: docker load -i $t"
	docker load -i "$t"
done
touch "$state/firstboot.done"
systemctl --no-block start inflight-agent.service
