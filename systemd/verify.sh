#!/usr/bin/env bash
# Check the systemd files of Sluice. CI runs it after installing the `systemd` package:
#
#   bash systemd/verify.sh PATH_TO_SLUICE_BINARY
#
# Installs nothing. `systemd-analyze verify` insists that ExecStart= names an existing
# executable, so the given binary is copied to /usr/local/bin/sluice if nothing is there yet,
# and removed again on exit. Fails when:
#   - sluice check-config rejects config/systemd.toml,
#   - systemd-sysusers rejects systemd/sluice.sysusers (applied to an empty temp root),
#   - systemd-analyze verify of sluice.service and sluice.socket exits non-zero or prints any
#     line mentioning either unit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG="$HERE/../config/systemd.toml"
TARGET=/usr/local/bin/sluice
COPIED=""
TMP=""

say() { printf '[systemd-verify] %s\n' "$*"; }
die() { say "FAIL: $*"; exit 1; }

cleanup() {
  if [ -n "$COPIED" ]; then rm -f "$TARGET"; fi
  if [ -n "$TMP" ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT

[ $# -eq 1 ] || die "usage: bash systemd/verify.sh PATH_TO_SLUICE_BINARY"
BIN=$1
if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then die "not an executable file: $BIN"; fi
command -v systemd-analyze >/dev/null || die "systemd-analyze not found (install the systemd package first)"

say "check-config config/systemd.toml"
out=$("$BIN" check-config "$CONFIG" 2>&1) \
  || { printf '%s\n' "$out"; die "check-config rejected config/systemd.toml"; }

if command -v systemd-sysusers >/dev/null; then
  say "systemd-sysusers on an empty root"
  TMP=$(mktemp -d)
  mkdir -p "$TMP/etc" "$TMP/usr/lib/sysusers.d"
  cp "$HERE/sluice.sysusers" "$TMP/usr/lib/sysusers.d/sluice.conf"
  out=$(systemd-sysusers --root="$TMP" 2>&1) \
    || { printf '%s\n' "$out"; die "systemd-sysusers rejected sluice.sysusers"; }
  grep -q '^sluice:' "$TMP/etc/passwd" || die "sluice.sysusers did not create the sluice user"
fi

if [ ! -e "$TARGET" ]; then
  say "copying $BIN to $TARGET for the check (removed on exit)"
  install -m 0755 "$BIN" "$TARGET"
  COPIED=1
fi

# Both units in one call: the socket's Service= and the service's After= resolve against
# each other (verify adds the directory of the named files to the unit search path).
say "systemd-analyze verify systemd/sluice.service systemd/sluice.socket"
rc=0
out=$(systemd-analyze verify "$HERE/sluice.service" "$HERE/sluice.socket" 2>&1) || rc=$?
[ -z "$out" ] || printf '%s\n' "$out"
if printf '%s\n' "$out" | grep -q 'sluice\.\(service\|socket\)'; then
  die "systemd-analyze verify reported problems with sluice.service or sluice.socket"
fi
[ "$rc" -eq 0 ] || die "systemd-analyze verify exited with status $rc"

# The socket must be the address the example config listens on, and the service must reload
# with SIGHUP (what `systemctl reload sluice` sends).
grep -qx 'ListenStream=127.0.0.1:8080' "$HERE/sluice.socket" || die "sluice.socket: ListenStream= is not 127.0.0.1:8080"
grep -q '^listen = \["127.0.0.1:8080"\]' "$CONFIG" || die "config/systemd.toml: listen differs from sluice.socket"
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$HERE/sluice.service" || die "sluice.service: no ExecReload sending SIGHUP"

# Informational only: the sandbox exposure score (needs systemd >= 250 for --offline).
systemd-analyze security --offline=yes "$HERE/sluice.service" 2>/dev/null | grep -F 'Overall exposure' || true

say "OK"
