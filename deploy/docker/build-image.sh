#!/usr/bin/env bash
# Build the pubmesh image from a release binary built on this host (the
# Dockerfile's `prebuilt` path): faster than compiling inside the image, and
# what the container tests use. The binary must link against a glibc no newer
# than the runtime base's (build on Debian bookworm for a bookworm base).
#
#   deploy/docker/build-image.sh [--tag pubmesh:0.1.0] [--base debian:bookworm-slim] [--engine podman|docker]
#
# Leaves target/release/pubmesh.stripped (the shipped binary, no debug info)
# and target/release/pubmesh.debug (its debug info, linked by
# .gnu_debuglink: keep it to symbolise core dumps and profiles).
set -euo pipefail
cd "$(dirname "$0")/../.."

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
tag="pubmesh:${version}"
base="debian:bookworm-slim"
engine=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
engine_cmd=("$engine")
[ "$engine" = podman ] && engine_cmd=(podman --runtime runc --cgroup-manager cgroupfs)

cargo build --release --locked --bin pubmesh
bin=target/release/pubmesh
objcopy --only-keep-debug "$bin" "$bin.debug"
objcopy --strip-debug --add-gnu-debuglink="$bin.debug" "$bin" "$bin.stripped"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin.stripped" "$context/pubmesh"
format=()
# podman: the docker format keeps HEALTHCHECK.
[ "$engine" = podman ] && format=(--format docker)
"${engine_cmd[@]}" build "${format[@]}" -q -f deploy/docker/Dockerfile \
  --build-arg BINARY_STAGE=prebuilt --build-arg RUNTIME_IMAGE="$base" \
  -t "$tag" "$context" >/dev/null
# The engine keeps the prebuilt stage as an untagged image: remove it.
"${engine_cmd[@]}" image prune -f --filter label=io.pubmesh.stage=prebuilt >/dev/null 2>&1 || true
echo "built $tag ($(du -h "$bin.stripped" | cut -f1) binary; debug info in $bin.debug)"
