#!/usr/bin/env bash
# XMPP interop suite for Sluice: real Prosody and ejabberd hand out XEP-0363 slots signed
# for Sluice; a slixmpp client uploads and downloads through Sluice and checks the results.
#
#   bash tests/interop/run.sh PATH_TO_SLUICE_BINARY
#
# Run as root from the repo root, no stdin. Installs what it needs with apt-get and pip,
# runs everything on 127.0.0.1 under a temp dir, stops everything it started on exit, and
# ends with the line `interop: N passed, M failed`. Exit status 0 only if M is 0.
# Besides the suite's Sluice it runs two more for the operations scenario (ops.py): "ops"
# (retention, cap, quota, admin, audit) and "full" (storage on a small tmpfs it mounts).
# The suite's Sluice also has an HTTPS listener ([[tls]]) with a certificate from a throwaway
# CA made here with openssl, for the HTTPS scenario (client.py over https, then tls.py:
# ALPN, verification, certificate renewals and SIGHUP).
# INTEROP_KEEP=1 keeps the temp dir (configs and logs) for inspection.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1   # ops.py imports client.py: no __pycache__ in the tree
T0=$(date +%s)

log() { printf '[interop %3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------------------- cleanup
WORK=""
SLUICE_PID=""
OPS_PID=""
FULL_PID=""
FULL_MOUNT=""
PROSODY_PID=""
EJ_STARTED=""
POLICY_RC_CREATED=""
PASSED=0
FAILED=0

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
  local pid=$1 name=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  log "$name ($pid) did not stop on TERM; killing"
  kill -KILL "$pid" 2>/dev/null || true
}

ejabberd_ctl() { timeout "${EJ_TIMEOUT:-60}" ejabberdctl "${EJCTL_ARGS[@]}" "$@"; }

stop_ejabberd() {
  [ -n "$EJ_STARTED" ] || return 0
  EJ_STARTED=""
  local pid=""
  [ -f "$WORK/ejabberd/ejabberd.pid" ] && pid=$(cat "$WORK/ejabberd/ejabberd.pid" 2>/dev/null || true)
  EJ_TIMEOUT=30 ejabberd_ctl stop >/dev/null 2>&1 || true
  if [ -n "$pid" ]; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "ejabberd ($pid) did not stop; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
}

# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$PROSODY_PID" ] && stop_pid "$PROSODY_PID" prosody
  stop_ejabberd
  [ -n "$SLUICE_PID" ] && stop_pid "$SLUICE_PID" sluice
  [ -n "$OPS_PID" ] && stop_pid "$OPS_PID" "sluice (ops)"
  [ -n "$FULL_PID" ] && stop_pid "$FULL_PID" "sluice (full)"
  if [ -n "$FULL_MOUNT" ]; then
    umount "$FULL_MOUNT" 2>/dev/null || umount -l "$FULL_MOUNT" || log "could not unmount $FULL_MOUNT"
  fi
  [ -n "$POLICY_RC_CREATED" ] && rm -f /usr/sbin/policy-rc.d
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
      for f in sluice/sluice.log:40 ops/sluice.log:20 full/sluice.log:20 prosody/prosody.log:15 \
               ejabberd/logs/ejabberd.log:15; do
        [ -s "$WORK/${f%:*}" ] || continue
        echo "----- last lines of $WORK/${f%:*}"
        tail -n "${f#*:}" "$WORK/${f%:*}" | sed 's/\x1b\[[0-9;]*m//g'
      done
    fi
    if [ -s "$WORK/summary.txt" ]; then
      echo "per scenario:"
      cat "$WORK/summary.txt"
    fi
    if [ "${INTEROP_KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  log "done in $(( $(date +%s) - T0 )) s"
  if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then FAILED=1; fi
  echo "interop: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ] && exit "$rc" || exit 1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

[ $# -eq 1 ] || die "usage: bash tests/interop/run.sh PATH_TO_SLUICE_BINARY"
[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, runs ejabberd as its user)"
SLUICE_BIN=$(realpath "$1") || die "no such file: $1"
[ -f "$SLUICE_BIN" ] || die "no such file: $SLUICE_BIN"
case "$SLUICE_BIN" in
  *.py) SLUICE_CMD=(/usr/bin/python3 "$SLUICE_BIN") ;;  # tests/interop/reference_server.py (harness self-test)
  *) [ -x "$SLUICE_BIN" ] || die "not executable: $SLUICE_BIN"; SLUICE_CMD=("$SLUICE_BIN") ;;
esac

# Exact versions the suite was written against (client.py uses slixmpp's connection flags).
PY_PACKAGES=(slixmpp==1.17.0 aiohttp==3.14.5)
DEB_PACKAGES=(prosody prosody-modules ejabberd python3-venv openssl curl)
VENV="$REPO/target/interop-venv"

# ----------------------------------------------------------------------------- install
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  timeout 300 apt-get update -qq || die "apt-get update failed"
  for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    case "$cand" in ''|'(none)') die "Debian package $p is not available" ;; esac
  done
  # Keep the packages' own services from starting at install (we run our own instances).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  if [ -n "$POLICY_RC_CREATED" ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=""; fi
fi
for c in prosody prosodyctl ejabberdctl openssl curl; do command -v "$c" >/dev/null || die "$c not found after install"; done
[ -f /usr/lib/prosody/modules/mod_http_upload_external/mod_http_upload_external.lua ] \
  || die "mod_http_upload_external (prosody-modules) not found"

if ! "$VENV/bin/python" -c 'import slixmpp, aiohttp' 2>/dev/null \
   || [ "$("$VENV/bin/python" -c 'import slixmpp; print(slixmpp.__version__)' 2>/dev/null)" != "${PY_PACKAGES[0]#slixmpp==}" ]; then
  log "creating python venv $VENV (${PY_PACKAGES[*]})"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  timeout 120 /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv failed"
  timeout 300 "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}" || die "pip install ${PY_PACKAGES[*]} failed"
fi
PY="$VENV/bin/python"

PROSODY_VERSION=$(dpkg-query -W -f='${Version}' prosody)
EJABBERD_VERSION=$(dpkg-query -W -f='${Version}' ejabberd)
SLIXMPP_VERSION=$("$PY" -c 'import slixmpp; print(slixmpp.__version__)')
log "prosody $PROSODY_VERSION, prosody-modules $(dpkg-query -W -f='${Version}' prosody-modules), ejabberd $EJABBERD_VERSION, slixmpp $SLIXMPP_VERSION"

# ----------------------------------------------------------------------------- config
WORK=$(mktemp -d /tmp/sluice-interop.XXXXXX)
chmod 755 "$WORK"   # ejabberd runs as its own user and must reach its dir
mkdir -p "$WORK"/sluice/data "$WORK"/prosody/data "$WORK"/prosody/certs \
         "$WORK"/ejabberd/spool "$WORK"/ejabberd/logs "$WORK"/ejabberd/upload-docroot \
         "$WORK"/ops/data "$WORK"/full/data "$WORK"/tls/live "$WORK"/tls/archive

read -r SLUICE_PORT PROSODY_C2S_PORT PROSODY_HTTP_PORT EJABBERD_C2S_PORT EJABBERD_DIST_PORT \
        OPS_PORT OPS_ADMIN_PORT FULL_PORT FULL_ADMIN_PORT TLS_PORT < <(
  "$PY" - <<'EOF'
import socket
socks = []
for _ in range(10):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
EOF
)
SECRET="interop-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
ADMIN_TOKEN="admin-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
SLUICE_BASE_URL="http://127.0.0.1:$SLUICE_PORT/upload"
OPS_BASE_URL="http://127.0.0.1:$OPS_PORT/ops"   # ejabberd: not the same host+path as another vhost's put_url
FULL_BASE_URL="http://127.0.0.1:$FULL_PORT/full"
TLS_BASE_URL="https://localhost:$TLS_PORT/upload"   # the suite's Sluice, [[tls]] listener
sha1() { printf '%s' "$1" | sha1sum | cut -d' ' -f1; }

render() {  # render TEMPLATE OUT
  sed -e "s|@WORK@|$WORK|g" \
      -e "s|@SECRET@|$SECRET|g" \
      -e "s|@SLUICE_PORT@|$SLUICE_PORT|g" \
      -e "s|@SLUICE_BASE_URL@|$SLUICE_BASE_URL|g" \
      -e "s|@PROSODY_C2S_PORT@|$PROSODY_C2S_PORT|g" \
      -e "s|@PROSODY_HTTP_PORT@|$PROSODY_HTTP_PORT|g" \
      -e "s|@EJABBERD_C2S_PORT@|$EJABBERD_C2S_PORT|g" \
      -e "s|@EJABBERD_DIST_PORT@|$EJABBERD_DIST_PORT|g" \
      -e "s|@OPS_PORT@|$OPS_PORT|g" -e "s|@OPS_ADMIN_PORT@|$OPS_ADMIN_PORT|g" \
      -e "s|@FULL_PORT@|$FULL_PORT|g" -e "s|@FULL_ADMIN_PORT@|$FULL_ADMIN_PORT|g" \
      -e "s|@OPS_BASE_URL@|$OPS_BASE_URL|g" -e "s|@FULL_BASE_URL@|$FULL_BASE_URL|g" \
      -e "s|@ADMIN_TOKEN@|$ADMIN_TOKEN|g" \
      -e "s|@TLS_PORT@|$TLS_PORT|g" -e "s|@TLS_BASE_URL@|$TLS_BASE_URL|g" \
      -e "s|@DAVE_SHA1@|$(sha1 dave@ops.localhost)|g" -e "s|@ERIN_SHA1@|$(sha1 erin@ops.localhost)|g" \
      "$HERE/$1" > "$2"
  if grep -q '@[A-Z_]*@' "$2"; then die "unfilled placeholder in $2"; fi
}
# ----------------------------------------------------------------------------- certificates
# A throwaway CA and three leaves for localhost + 127.0.0.1 (each its own key and serial):
#   1  the certificate Sluice starts with (EC P-256, SEC1 key), copied to tls/live/
#   2  the first renewal (RSA 2048, PKCS#8 key, CN "localhost renewal 2"): tls.py writes it
#      over tls/live/ (write + rename), after a refused half-renewal (cert 2, key 1)
#   3  the second renewal (EC P-256, PKCS#8, CN "localhost renewal 3"), certbot-style: the
#      live/ names become symlinks to archive/ files
# Files: tls/ca.pem; tls/archive/{fullchain,privkey}N.pem (fullchain = leaf + CA).
TLS="$WORK/tls"
tls_leaf() {  # tls_leaf N CN KEYKIND(ec-sec1|rsa|ec)
  local n=$1 cn=$2 key="$TLS/archive/privkey$1.pem"
  case "$3" in
    ec-sec1) openssl ecparam -name prime256v1 -genkey -noout -out "$key" ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key" ;;
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" ;;
  esac
  openssl req -new -key "$key" -subj "/CN=$cn" -out "$TLS/leaf$n.csr"
  openssl x509 -req -in "$TLS/leaf$n.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
    -set_serial "0x$(openssl rand -hex 12)" -days 2 -sha256 -extfile "$TLS/leaf.ext" \
    -out "$TLS/archive/cert$n.pem"
  cat "$TLS/archive/cert$n.pem" "$TLS/ca.pem" > "$TLS/archive/fullchain$n.pem"
}
{
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$TLS/ca.key" -out "$TLS/ca.pem" -days 2 -sha256 \
    -subj "/CN=Sluice interop throwaway CA $(date +%s)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" > "$TLS/leaf.ext"
  tls_leaf 1 localhost ec-sec1
  tls_leaf 2 "localhost renewal 2" rsa
  tls_leaf 3 "localhost renewal 3" ec
  for n in 1 2 3; do openssl verify -CAfile "$TLS/ca.pem" "$TLS/archive/cert$n.pem"; done
} > "$TLS/openssl.log" 2>&1 || { cat "$TLS/openssl.log"; die "making the test certificates failed"; }
cp "$TLS/archive/fullchain1.pem" "$TLS/live/fullchain.pem"
cp "$TLS/archive/privkey1.pem" "$TLS/live/privkey.pem"
chmod 600 "$TLS"/ca.key "$TLS"/archive/privkey*.pem "$TLS/live/privkey.pem"
log "test CA and certificates made in $TLS ($(openssl x509 -in "$TLS/archive/cert1.pem" -noout -serial))"

render sluice.toml.in "$WORK/sluice/sluice.toml"
render sluice-ops.toml.in "$WORK/ops/sluice.toml"
render sluice-full.toml.in "$WORK/full/sluice.toml"
render prosody.cfg.lua.in "$WORK/prosody/prosody.cfg.lua"
render ejabberd.yml.in "$WORK/ejabberd/ejabberd.yml"
render ejabberdctl.cfg.in "$WORK/ejabberd/ejabberdctl.cfg"
cp /etc/ejabberd/inetrc "$WORK/ejabberd/inetrc" 2>/dev/null || printf '{lookup,["file","native"]}.\n' > "$WORK/ejabberd/inetrc"
chown -R ejabberd:ejabberd "$WORK/ejabberd"
EJCTL_ARGS=(--config-dir "$WORK/ejabberd" --ctl-config "$WORK/ejabberd/ejabberdctl.cfg"
            --spool "$WORK/ejabberd/spool" --logs "$WORK/ejabberd/logs")

wait_port() {  # wait_port PORT NAME PID_OR_EMPTY SECONDS
  "$PY" - "$1" "$4" <<'EOF' || die "$2 did not open 127.0.0.1:$1"
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
end = time.time() + limit
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
EOF
}

run_script() {  # run_script LABEL SCRIPT ARGS... ; adds to PASSED/FAILED
  local label=$1 script=$2; shift 2
  local out="$WORK/client-$label.log" rc=0
  log "client: $label"
  timeout 300 "$PY" "$HERE/$script" --label "$label" --secret "$SECRET" "$@" > "$out" 2>&1 || rc=$?
  grep -E '^(PASS|FAIL|SKIP|INFO|     )' "$out" | grep -vE '^INFO .* slot for ' || true
  grep -E '^SCENARIO ' "$out" | sed 's/^SCENARIO /  /' >> "$WORK/summary.txt" || true
  local result p f
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
run_client() { local label=$1; shift; run_script "$label" client.py --base-url "$SLUICE_BASE_URL/" "$@"; }

# ----------------------------------------------------------------------------- Sluice
wait_health() {  # wait_health PORT PID: until GET /health answers 200 (30 s at most)
  "$PY" - "$1" "$2" <<'EOF'
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
}
start_sluice() {  # start_sluice NAME PORT PID_VAR: runs $WORK/NAME/sluice.toml, waits for /health
  local name=$1 port=$2
  log "starting sluice: ${SLUICE_CMD[*]} --config $WORK/$name/sluice.toml (port $port)"
  timeout 900 "${SLUICE_CMD[@]}" --config "$WORK/$name/sluice.toml" > "$WORK/$name/sluice.log" 2>&1 &
  printf -v "$3" '%s' "$!"
  wait_health "$port" "$!" || die "sluice ($name) did not answer 200 on /health within 30 s"
}
start_sluice sluice "$SLUICE_PORT" SLUICE_PID
# The operations scenario needs the real binary (`sluice admin`).
OPS=""
if [ "${SLUICE_CMD[0]}" = "$SLUICE_BIN" ]; then
  OPS=1
  start_sluice ops "$OPS_PORT" OPS_PID
  if mount -t tmpfs -o size=8m,mode=0755 tmpfs "$WORK/full/data"; then
    FULL_MOUNT="$WORK/full/data"
    start_sluice full "$FULL_PORT" FULL_PID
  else
    log "cannot mount a tmpfs: the full-disk checks are skipped"
  fi
fi
log "sluice is up"

# ----------------------------------------------------------------------------- Prosody
# One Prosody serves scenarios 1-3 as three components of the host `localhost`:
#   upload-v1.localhost  mod_http_upload_external, protocol "v1"
#   upload-v2.localhost  mod_http_upload_external, protocol "v2"
#   share.localhost      mod_http_file_share with http_file_share_base_url (JWT)
# and three more for the operations scenario (ops.py); it runs until that is done.
PCFG="$WORK/prosody/prosody.cfg.lua"
timeout 60 prosodyctl --config "$PCFG" register alice localhost alice-pw >/dev/null 2>&1 \
  || die "prosodyctl register failed"
log "starting prosody (c2s port $PROSODY_C2S_PORT)"
timeout 900 prosody --config "$PCFG" -F > "$WORK/prosody/stdout.log" 2>&1 &
PROSODY_PID=$!
wait_port "$PROSODY_C2S_PORT" prosody "$PROSODY_PID" 30
run_client prosody --jid alice@localhost --password alice-pw --server "127.0.0.1:$PROSODY_C2S_PORT" \
  --service upload-v1.localhost=v1 --service upload-v2.localhost=v2 --service share.localhost=jwt

# ----------------------------------------------------------------------------- HTTPS
# Sluice's own TLS listener: scenarios 2 and 3 again with https base URLs (verified against
# the test CA), then tls.py: ALPN, verification failures, renewals, SIGHUP.
if [ "${SLUICE_CMD[0]}" = "$SLUICE_BIN" ]; then
  run_script prosody-tls client.py --base-url "$TLS_BASE_URL/" --cafile "$TLS/ca.pem" \
    --jid alice@localhost --password alice-pw --server "127.0.0.1:$PROSODY_C2S_PORT" \
    --service upload-tls.localhost=v2 --service share-tls.localhost=jwt
  # The Sluice process itself (SLUICE_PID is its `timeout` wrapper), for the SIGHUP.
  SLUICE_MAIN_PID=$(cat "/proc/$SLUICE_PID/task/$SLUICE_PID/children" 2>/dev/null || pgrep -P "$SLUICE_PID" || true)
  SLUICE_MAIN_PID=${SLUICE_MAIN_PID%% *}
  exe=$(readlink "/proc/${SLUICE_MAIN_PID:-0}/exe" 2>/dev/null || true)
  if [ "${exe% (deleted)}" = "$SLUICE_BIN" ]; then   # "(deleted)": rebuilt during the run
    run_script tls tls.py --base-url "$TLS_BASE_URL/" --tls-dir "$TLS" --sluice-pid "$SLUICE_MAIN_PID" \
      --sluice-log "$WORK/sluice/sluice.log" --sluice-config "$WORK/sluice/sluice.toml" \
      --metrics-url "http://127.0.0.1:$SLUICE_PORT/metrics" \
      --prosody "127.0.0.1:$PROSODY_C2S_PORT"
  else
    log "cannot find the sluice process under its timeout wrapper ($SLUICE_PID): tls.py not run"
    FAILED=$((FAILED + 1))
  fi
else
  log "HTTPS scenario skipped (needs the sluice binary)"
fi

# ----------------------------------------------------------------------------- ejabberd
log "starting ejabberd (c2s port $EJABBERD_C2S_PORT)"
EJ_STARTED=1
ejabberd_ctl start >/dev/null || die "ejabberdctl start failed"
EJ_TIMEOUT=90 ejabberd_ctl started >/dev/null || die "ejabberd did not start"
for u in bob@localhost carol@ops.localhost dave@ops.localhost erin@ops.localhost; do
  ejabberd_ctl register "${u%@*}" "${u#*@}" "${u%@*}-pw" >/dev/null || die "ejabberdctl register $u failed"
done
wait_port "$EJABBERD_C2S_PORT" ejabberd "" 30
run_client ejabberd --jid bob@localhost --password bob-pw --server "127.0.0.1:$EJABBERD_C2S_PORT" \
  --service upload.localhost=ejabberd

# ----------------------------------------------------------------------------- operations
# Retention, cap, quota, takedown and a full disk, through both XMPP servers (ops.py).
if [ -n "$OPS" ]; then
  run_script ops ops.py --sluice "$SLUICE_BIN" --ops-config "$WORK/ops/sluice.toml" \
    ${FULL_MOUNT:+--full-config "$WORK/full/sluice.toml"} \
    --prosody "127.0.0.1:$PROSODY_C2S_PORT" --ejabberd "127.0.0.1:$EJABBERD_C2S_PORT"
else
  log "operations scenario skipped (needs the sluice binary)"
fi
stop_pid "$PROSODY_PID" prosody
PROSODY_PID=""
stop_ejabberd

# The Sluices must still be alive after all that.
for p in "sluice:$SLUICE_PID" "sluice (ops):$OPS_PID" "sluice (full):$FULL_PID"; do
  [ -n "${p#*:}" ] || continue
  kill -0 "${p#*:}" 2>/dev/null || { log "${p%%:*} died during the run"; FAILED=$((FAILED + 1)); }
done
exit 0
