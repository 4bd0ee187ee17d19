#!/usr/bin/env bash
# Start, inspect and stop a local pubmesh cluster: one redis-server and N nodes
# on loopback ports, no Docker.
#
#   deploy/local/cluster.sh start [N]   # default 3 nodes on ports 8001..800N
#   deploy/local/cluster.sh status
#   deploy/local/cluster.sh stop
#
# Environment: PUBMESH_LOCAL_DIR (state, logs, pids; default .local-cluster),
# PUBMESH_LOCAL_REDIS_PORT (default 6390), PUBMESH_LOCAL_BASE_PORT (default 8000),
# PUBMESH_API_KEY (default local-dev-key), PUBMESH_CONFIG (a TOML file for every node),
# PUBMESH_BIN (default target/release/pubmesh, built when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE=${PUBMESH_LOCAL_DIR:-.local-cluster}
REDIS_PORT=${PUBMESH_LOCAL_REDIS_PORT:-6390}
BASE_PORT=${PUBMESH_LOCAL_BASE_PORT:-8000}
API_KEY=${PUBMESH_API_KEY:-local-dev-key}
BIN=${PUBMESH_BIN:-target/release/pubmesh}

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_ready() { # url, seconds
  local url=$1 deadline=$((SECONDS + $2))
  until curl -fsS "$url" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then return 1; fi
    sleep 0.2
  done
}

start() {
  local n=${1:-3}
  mkdir -p "$STATE"
  local dir; dir=$(cd "$STATE" && pwd)
  if [ ! -x "$BIN" ]; then
    echo "building $BIN ..."
    cargo build --release --bin pubmesh
  fi
  command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)"; exit 1; }
  if alive "$STATE/redis.pid"; then
    echo "redis already running (pid $(cat "$STATE/redis.pid"))"
  else
    if in_use "$REDIS_PORT"; then echo "port $REDIS_PORT is taken; set PUBMESH_LOCAL_REDIS_PORT"; exit 1; fi
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  local config_args=()
  if [ -n "${PUBMESH_CONFIG:-}" ]; then config_args=(--config "$PUBMESH_CONFIG"); fi
  for i in $(seq 1 "$n"); do
    local port=$((BASE_PORT + i)) pid="$STATE/node$i.pid"
    if alive "$pid"; then echo "node$i already running"; continue; fi
    if in_use "$port"; then echo "port $port is taken; set PUBMESH_LOCAL_BASE_PORT"; exit 1; fi
    nohup "$BIN" --listen "127.0.0.1:$port" --node-id "node$i" --api-key "$API_KEY" \
      --redis-url "redis://127.0.0.1:$REDIS_PORT" --drain-seconds 2 "${config_args[@]}" \
      >"$STATE/node$i.log" 2>&1 &
    echo $! >"$pid"
  done
  for i in $(seq 1 "$n"); do
    wait_ready "http://127.0.0.1:$((BASE_PORT + i))/readyz" 20 || { echo "node$i did not become ready; see $STATE/node$i.log"; exit 1; }
  done
  echo "redis:   redis://127.0.0.1:$REDIS_PORT"
  for i in $(seq 1 "$n"); do
    echo "node$i:   ws://127.0.0.1:$((BASE_PORT + i))/websocket   http://127.0.0.1:$((BASE_PORT + i))/api/nodes"
  done
  echo "api key: $API_KEY"
  echo "logs:    $STATE/"
}

status() {
  if alive "$STATE/redis.pid"; then echo "redis: running (pid $(cat "$STATE/redis.pid"))"; else echo "redis: stopped"; fi
  for pid in "$STATE"/node*.pid; do
    [ -e "$pid" ] || continue
    local name; name=$(basename "$pid" .pid)
    if alive "$pid"; then echo "$name: running (pid $(cat "$pid"))"; else echo "$name: stopped"; fi
  done
}

stop() {
  for pid in "$STATE"/node*.pid; do
    [ -e "$pid" ] || continue
    if alive "$pid"; then kill -TERM "$(cat "$pid")"; fi
  done
  for pid in "$STATE"/node*.pid; do
    [ -e "$pid" ] || continue
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$(cat "$pid")"; fi
    rm -f "$pid"
  done
  if alive "$STATE/redis.pid"; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$STATE/redis.pid")"
  fi
  rm -f "$STATE/redis.pid"
  echo "stopped"
}

case "${1:-}" in
  start) start "${2:-3}" ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start [N] | status | stop"; exit 2 ;;
esac
