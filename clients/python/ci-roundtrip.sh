#!/usr/bin/env bash
# Proves that a Python client generated from proto/ talks to the real server: installs the
# pinned grpcio-tools into a virtualenv (clients/python/.venv, gitignored), generates the client,
# starts the switchbord binary on free loopback ports with a throw-away data directory (its own
# private PostgreSQL) and a test admin key, waits for /healthz, runs roundtrip.py, and always
# stops the server.
#
#     clients/python/ci-roundtrip.sh [path/to/switchbord]    # default: target/release/switchbord
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/target/release/switchbord}"
venv="${SWITCHBORD_PY_VENV:-$here/.venv}"

if [[ ! -x "$binary" ]]; then
  echo "roundtrip: no server binary at $binary (build it with cargo build --release -p switchbord)" >&2
  exit 1
fi

echo "roundtrip: Python client dependencies in ${venv#"$root"/}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
PYTHON="$venv/bin/python" "$here/generate.sh"

# PostgreSQL runs as its own user when we are root, so the directory must be reachable by it.
work="$(mktemp -d "${TMPDIR:-/tmp}/switchbord-roundtrip.XXXXXX")"
chmod 0755 "$work"
log="$work/server.log"
server_pid=""

stop_server() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      echo "roundtrip: the server ignored SIGTERM for a minute; killing it" >&2
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
  fi
  # A server that died hard leaves its PostgreSQL running; stop that too (immediate shutdown).
  local postmaster="$work/data/pgdata/postmaster.pid"
  if [[ -f "$postmaster" ]]; then
    local pg_pid
    pg_pid="$(head -n 1 "$postmaster")"
    if [[ "$pg_pid" =~ ^[0-9]+$ ]] && kill -0 "$pg_pid" 2>/dev/null; then
      kill -QUIT "$pg_pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pg_pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  fi
  if [[ $status -ne 0 && -f "$log" ]]; then
    echo "roundtrip: last lines of the server log:" >&2
    tail -n 40 "$log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port="$(free_port)"
http_port="$(free_port)"
while [[ "$http_port" == "$grpc_port" ]]; do http_port="$(free_port)"; done
api_key="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(20))')" # 40 characters

echo "roundtrip: starting $binary (gRPC 127.0.0.1:$grpc_port, HTTP 127.0.0.1:$http_port)"
env -u DATABASE_URL -u SWITCHBORD_KEY_PEPPER -u SWITCHBORD_CORE_URL \
  NO_COLOR=1 SWITCHBORD_DATA_DIR="$work/data" \
  SWITCHBORD_BOOTSTRAP_ADMIN_KEY="$api_key" \
  SWITCHBORD_GRPC_ADDR="127.0.0.1:$grpc_port" \
  SWITCHBORD_HTTP_ADDR="127.0.0.1:$http_port" \
  "$binary" </dev/null >"$log" 2>&1 &
server_pid=$!

# The gateway answers /healthz only after the core (and its database) is up.
ready=""
deadline=$((SECONDS + 120))
while ((SECONDS < deadline)); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "roundtrip: the server exited during start-up" >&2
    exit 1
  fi
  if "$venv/bin/python" - "$http_port" <<'PY' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2) as reply:
    sys.exit(0 if reply.status == 200 else 1)
PY
    ready=1
    break
  fi
  sleep 0.2
done
if [[ -z "$ready" ]]; then
  echo "roundtrip: the server was not ready within two minutes" >&2
  exit 1
fi

SWITCHBORD_API_KEY="$api_key" "$venv/bin/python" "$here/roundtrip.py" --target "127.0.0.1:$grpc_port"
