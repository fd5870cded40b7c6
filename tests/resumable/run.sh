#!/usr/bin/env bash
# Resumable-upload suite for Sluice with real tus clients: tuspy (Python) and tus-js-client
# (Node). Each client starts an upload, is interrupted half way, and a new client instance
# resumes it from the server's offset; the published file must match byte for byte.
#
#   bash tests/resumable/run.sh PATH_TO_SLUICE_BINARY
#
# Run as root from anywhere, no stdin. Installs what it needs (python3-venv and Node with
# apt-get only if missing; tuspy with pip into target/resumable-venv; tus-js-client with
# `npm ci` into tests/resumable/node/node_modules), runs Sluice on a free 127.0.0.1 port under a
# temp dir, stops it on exit, and ends with the line `resumable: N passed, M failed`.
# Exit status 0 only if M is 0. RESUMABLE_KEEP=1 keeps the temp dir (config, logs, files).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export npm_config_update_notifier=false
T0=$(date +%s)

log() { printf '[resumable %3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

# Exact versions the suite was written against.
TUSPY_VERSION=1.1.0
TUS_JS_VERSION=4.3.1   # pinned in node/package.json and node/package-lock.json
VENV="$REPO/target/resumable-venv"
NODE_DIR="$HERE/node"
SECRET="resumable-test-secret-0123456789"

# ----------------------------------------------------------------------------- cleanup
WORK=""
SLUICE_PID=""
PASSED=0
FAILED=0

# shellcheck disable=SC2317  # invoked from cleanup (the EXIT trap)
stop_pid() {  # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
  local pid=$1 name=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }; sleep 0.2; done
  log "$name ($pid) did not stop on TERM; killing"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$SLUICE_PID" ] && stop_pid "$SLUICE_PID" sluice
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if { [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; } && [ -s "$WORK/sluice.log" ]; then
      echo "----- last lines of $WORK/sluice.log"
      tail -n 40 "$WORK/sluice.log" | sed 's/\x1b\[[0-9;]*m//g'
    fi
    if [ "${RESUMABLE_KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  log "done in $(( $(date +%s) - T0 )) s"
  if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then FAILED=1; fi
  echo "resumable: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ] && exit "$rc" || exit 1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

[ $# -eq 1 ] || die "usage: bash tests/resumable/run.sh PATH_TO_SLUICE_BINARY"
SLUICE_BIN=$(realpath "$1") || die "no such file: $1"
case "$SLUICE_BIN" in
  *.py) SLUICE_CMD=(/usr/bin/python3 "$SLUICE_BIN") ;;  # reference_server.py (harness self-test)
  *) if [ ! -f "$SLUICE_BIN" ] || [ ! -x "$SLUICE_BIN" ]; then die "not an executable file: $SLUICE_BIN"; fi
     SLUICE_CMD=("$SLUICE_BIN") ;;
esac

# ----------------------------------------------------------------------------- install
apt_install() {  # apt_install PACKAGE...: only what is missing; needs root
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install $*"
  log "installing Debian packages: $*"
  timeout 300 apt-get update -qq || die "apt-get update failed"
  timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

PYTHON=/usr/bin/python3
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 18 ] || die "node $(node --version) is too old (tus-js-client $TUS_JS_VERSION needs >= 18)"

if [ "$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("tuspy"))' 2>/dev/null)" != "$TUSPY_VERSION" ]; then
  log "creating python venv $VENV (tuspy==$TUSPY_VERSION)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  timeout 120 "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed"
  timeout 300 "$VENV/bin/pip" install -q "tuspy==$TUSPY_VERSION" </dev/null || die "pip install tuspy==$TUSPY_VERSION failed"
fi
PY="$VENV/bin/python"

installed_js=$(node -p "require('$NODE_DIR/node_modules/tus-js-client/package.json').version" 2>/dev/null || true)
if [ "$installed_js" != "$TUS_JS_VERSION" ]; then
  log "installing tus-js-client $TUS_JS_VERSION into $NODE_DIR/node_modules (npm ci)"
  (cd "$NODE_DIR" && timeout 300 npm ci --no-audit --no-fund --loglevel=error </dev/null) \
    || die "npm ci in $NODE_DIR failed"
fi
installed_js=$(node -p "require('$NODE_DIR/node_modules/tus-js-client/package.json').version")
[ "$installed_js" = "$TUS_JS_VERSION" ] || die "tus-js-client $installed_js installed, expected $TUS_JS_VERSION"
log "tuspy $("$PY" -c 'from importlib.metadata import version; print(version("tuspy"))'), tus-js-client $installed_js, node $(node --version), sluice $(timeout 10 "${SLUICE_CMD[@]}" --version 2>/dev/null | head -n 1 || true)"

# ----------------------------------------------------------------------------- Sluice
WORK=$(mktemp -d /tmp/sluice-resumable.XXXXXX)
mkdir -p "$WORK/data" "$WORK/files"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$WORK/sluice.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
url_prefix = "/upload"

[storage]
dir = "$WORK/data"
max_file_size = "64MiB"
durability = "none"

[[auth.keys]]
id = "t"
secret = "$SECRET"
EOF
BASE="http://127.0.0.1:$PORT"

log "starting sluice: ${SLUICE_CMD[*]} --config $WORK/sluice.toml (port $PORT)"
timeout 900 "${SLUICE_CMD[@]}" --config "$WORK/sluice.toml" > "$WORK/sluice.log" 2>&1 </dev/null &
SLUICE_PID=$!
timeout 40 "$PY" - "$PORT" "$SLUICE_PID" <<'EOF' || die "sluice did not answer 200 on /health within 30 s"
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
end = time.time() + 30
while time.time() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("sluice exited")
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
log "sluice is up"

# ----------------------------------------------------------------------------- clients
run_client() {  # run_client LABEL COMMAND... ; adds to PASSED/FAILED
  local label=$1; shift
  local out="$WORK/client-$label.log" rc=0 result p f
  log "client: $label"
  timeout 300 "$@" --base "$BASE" --secret "$SECRET" --workdir "$WORK/files" </dev/null > "$out" 2>&1 || rc=$?
  grep -E '^(PASS|FAIL|INFO|     )' "$out" || true
  result=$(grep -E '^RESULT ' "$out" | tail -n 1 | cut -d' ' -f2- || true)
  if [ -z "$result" ]; then
    log "client $label crashed or timed out (exit $rc):"
    tail -n 30 "$out"
    FAILED=$((FAILED + 1))
    return 0
  fi
  p=$(printf '%s' "$result" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["passed"])')
  f=$(printf '%s' "$result" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["failed"])')
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then FAILED=$((FAILED + 1)); fi
  log "client $label: $result"
}

run_client tuspy "$PY" "$HERE/tus_py_test.py"
run_client tus-js-client node "$HERE/tus_js_test.mjs"
rm -rf "$WORK/files"

# Sluice must still be alive after all that.
kill -0 "$SLUICE_PID" 2>/dev/null || { log "sluice died during the run"; FAILED=$((FAILED + 1)); }
exit 0
