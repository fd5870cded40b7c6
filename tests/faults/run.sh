#!/usr/bin/env bash
# Fault-injection and abuse suite for Sluice: crashes, power loss, injected I/O errors,
# descriptor exhaustion, slow clients, malformed HTTP/1.1, fuzzing, HTTP/2 floods and a soak.
#
#   bash tests/faults/run.sh PATH_TO_SLUICE_BINARY
#
# Run as root (mounts FUSE and tmpfs, attaches strace), no stdin. Installs what it needs with
# apt-get and pip (into a venv under the temp dir), runs everything on 127.0.0.1 under a temp
# dir, stops everything it started on exit, prints PASS/FAIL with a figure per result and ends
# with `faults: N passed, M failed` (exit 0 only if M is 0). See tests/faults/README.md.
#
# Environment: FAULTS_CASES=1,4,8 runs some cases only; SOAK_SECONDS (180) sets the soak's
# length; FUZZ_SCALE (1) scales the fuzzing counts; FAULTS_KEEP=1 keeps the temp dir.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$(date +%s)

log() { printf '[faults %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

WORK=""
HARNESS_PID=""

# Stop a process we started (its command line names our work dir or this directory).
stop_ours() {
  local pid=$1 cmd
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 0
  case "$cmd" in *"$WORK"*|*"$HERE"*) ;; *) return 0 ;; esac
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  local rc=$? passed=0 failed=0
  set +e
  trap - EXIT INT TERM
  [ -n "$HARNESS_PID" ] && stop_ours "$HARNESS_PID"
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ -f "$WORK/pids" ]; then
      while read -r pid; do [ -n "$pid" ] && stop_ours "$pid"; done < "$WORK/pids"
    fi
    # FUSE and tmpfs mounts left under the work dir, deepest first.
    awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
    if [ -s "$WORK/results.txt" ]; then
      passed=$(grep -c '^PASS ' "$WORK/results.txt" || true)
      failed=$(grep -c '^FAIL ' "$WORK/results.txt" || true)
      echo "per result:"
      sed 's/^/  /' "$WORK/results.txt" | cut -c1-220
    fi
    if [ "${FAULTS_KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  log "done in $(( $(date +%s) - T0 )) s"
  echo "faults: $passed passed, $failed failed"
  [ "$failed" -eq 0 ] && exit 0 || exit 1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

[ $# -eq 1 ] || die "usage: bash tests/faults/run.sh PATH_TO_SLUICE_BINARY"
[ "$(id -u)" -eq 0 ] || die "must run as root (mounts FUSE and tmpfs, attaches strace)"
SLUICE_BIN=$(realpath "$1") || die "no such file: $1"
[ -x "$SLUICE_BIN" ] || die "not executable: $SLUICE_BIN"

# ----------------------------------------------------------------------------- install
# strace: fsync injection; libfuse2: fusepy's library; util-linux: prlimit, mount.
DEB_PACKAGES=(python3 python3-venv strace libfuse2 util-linux mount)
PY_PACKAGES=(hypothesis==6.170.17 h2==4.4.1 fusepy==3.0.1)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  timeout 300 apt-get update -qq || die "apt-get update failed"
  timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
for c in strace prlimit mount umount; do command -v "$c" >/dev/null || die "$c not found after install"; done
[ -e /dev/fuse ] || log "warning: /dev/fuse is missing; case 4 (power loss) will fail"

WORK=$(mktemp -d /tmp/sluice-faults.XXXXXX)
chmod 755 "$WORK"
VENV="$WORK/venv"
log "creating python venv ($WORK/venv): ${PY_PACKAGES[*]}"
timeout 120 /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv failed"
timeout 300 "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}" >"$WORK/pip.log" 2>&1 \
  || { tail -n 20 "$WORK/pip.log"; die "pip install ${PY_PACKAGES[*]} failed"; }
log "sluice: $SLUICE_BIN; $(strace -V | head -n 1); python $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"

# ----------------------------------------------------------------------------- run
: > "$WORK/results.txt"
set +e
# Hard cap on the whole run: 15 minutes plus the soak's length.
LIMIT=$(( 900 + ${SOAK_SECONDS:-180} ))
timeout -k 10 "$LIMIT" "$VENV/bin/python" -u "$HERE/harness.py" "$SLUICE_BIN" "$WORK" "$WORK/results.txt" </dev/null &
HARNESS_PID=$!
wait "$HARNESS_PID"
hrc=$?
HARNESS_PID=""
set -e
if [ "$hrc" -ne 0 ]; then
  echo "FAIL harness: exited with status $hrc before finishing" >> "$WORK/results.txt"
  log "harness exited with status $hrc"
fi
exit 0
