#!/usr/bin/env bash
# Make a minimal Debian bookworm base image locally, without a registry:
# debootstrap (minbase + ca-certificates) from this machine's Debian mirror,
# imported into podman as localhost/debian-base. Does nothing when the image
# already exists. Needs root, podman and debootstrap.
#
#   deploy/docker/base-image.sh [IMAGE]      # default localhost/debian-base
set -euo pipefail

image="${1:-localhost/debian-base}"
podman_cmd=(podman --runtime runc --cgroup-manager cgroupfs)

if "${podman_cmd[@]}" image exists "$image"; then
  echo "$image exists"
  exit 0
fi

# The mirror apt already uses (deb822 or one-line sources), else deb.debian.org.
mirror="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
  | head -n1 | grep -oE 'https?://[^ ]+' || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

root="$(mktemp -d /var/tmp/pubmesh-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -n 30 "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Nothing the image does not need at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | "${podman_cmd[@]}" import \
  --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image built"
