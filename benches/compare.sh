#!/usr/bin/env bash
# Side-by-side load benchmark: Sluice against nginx (sendfile for GET, the dav module for PUT),
# both on 127.0.0.1, serving the same files.
#
#   bash benches/compare.sh PATH_TO_SLUICE [--quick] [--out FILE] [--keep]
#
#   --quick (or SMOKE=1)  small files (64 MiB instead of 1 GiB), 1 round, 2 s per wrk run; the CI
#                         smoke test. Under 2 minutes.
#   --out FILE            also write the result table as markdown (for BENCHMARKS.md)
#   --keep                keep the temporary directory (logs, configs) instead of deleting it
#   env ROUNDS, DUR       override the number of rounds and the seconds per wrk run
#   env OTHER_LIMIT, QUIET_RETRIES, QUIET_BUDGET   competing-load guard (see "Competing load"):
#                         a run during which other processes used more than OTHER_LIMIT % (10)
#                         of the CPUs is repeated up to QUIET_RETRIES times (full: 2, quick: 0)
#                         after waiting for a quiet machine, at most QUIET_BUDGET s in all (600)
#
# Every case runs A B A B ... (nginx, then Sluice, per round) and the table shows medians.
# Any failed request (a non-2xx/3xx status or socket error in wrk, a curl failure, a wrong
# status, size or SHA-256) makes the script exit non-zero after printing the table.
# Needs: nginx with http_dav_module, wrk, curl, python3, sha256sum.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB=(python3 "$HERE/benchlib.py")

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

SLUICE="" QUICK=0 OUT="" KEEP=0
case "${SMOKE:-0}" in "" | 0 | false | no) ;; *) QUICK=1 ;; esac
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) [ $# -ge 2 ] || usage; OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    --keep) KEEP=1 ;;
    -h | --help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$SLUICE" ] || usage; SLUICE=$1 ;;
  esac
  shift
done
[ -n "$SLUICE" ] || usage
[ -x "$SLUICE" ] || { echo "not an executable: $SLUICE" >&2; exit 2; }
SLUICE=$(realpath "$SLUICE")
[ -z "$OUT" ] || OUT=$(realpath -m "$OUT")

MIB=$((1 << 20))
if [ "$QUICK" = 1 ]; then
  ROUNDS=${ROUNDS:-1} DUR=${DUR:-2} BIG_MIB=64 MODE="quick (smoke)"
else
  ROUNDS=${ROUNDS:-3} DUR=${DUR:-5} BIG_MIB=1024 MODE="full"
fi
BIG_BYTES=$((BIG_MIB * MIB))
if [ "$BIG_MIB" -ge 1024 ]; then BIG_LABEL="$((BIG_MIB / 1024)) GiB"; else BIG_LABEL="$BIG_MIB MiB"; fi
MID_BYTES=$((64 * MIB))
RANGE_BLOCK=65536
# Signed URLs prepared per second of a 4 KiB PUT run (wrk stops with an error if they run out).
PUT_LIST_PER_S=${PUT_LIST_PER_S:-40000}
OTHER_LIMIT=${OTHER_LIMIT:-10}
if [ "$QUICK" = 1 ]; then
  QUIET_RETRIES=${QUIET_RETRIES:-0} QUIET_BUDGET=${QUIET_BUDGET:-0}
else
  QUIET_RETRIES=${QUIET_RETRIES:-2} QUIET_BUDGET=${QUIET_BUDGET:-600}
fi
SECRET="sluice-bench-secret-0123456789abcdef"

# ---------------------------------------------------------------- tools
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for t in "$NGINX" wrk curl python3 sha256sum; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
if ! "$NGINX" -V 2>&1 | grep -q http_dav_module; then
  echo "$NGINX lacks http_dav_module (needed for PUT); install nginx-light or nginx-full" >&2
  exit 2
fi

# ---------------------------------------------------------------- work dir, cleanup
TMPBASE=${TMPDIR:-/tmp}
if [ "$QUICK" = 1 ]; then need_mib=1024; else need_mib=$((BIG_MIB * 7 + 1024)); fi
avail_mib=$(($(df -Pk "$TMPBASE" | awk 'NR==2 {print $4}') / 1024))
if [ "$avail_mib" -lt "$need_mib" ]; then
  echo "need ${need_mib} MiB free under $TMPBASE, have ${avail_mib} MiB" >&2
  exit 2
fi
WORK=$(mktemp -d "$TMPBASE/sluice-bench.XXXXXX")
RES=$WORK/results.tsv
: >"$RES"
ERRORS=0
declare -A PORT PID

stop_pid() { # pid: TERM, wait up to 10 s, then KILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? p
  set +e
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do stop_pid "${PID[$name]}"; done
  for p in $(jobs -p); do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
say() { printf '%s\n' "$*"; }
show() { # print a command so that it can be pasted into a shell
  local a out='$'
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$out"
}
err() {
  printf 'ERROR: %s\n' "$*"
  ERRORS=$((ERRORS + 1))
}
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }
base() { printf 'http://127.0.0.1:%s' "${PORT[$1]}"; }
mac() { "${LIB[@]}" sign "$SECRET" "$1" "$2"; }
now_ns() { date +%s%N; }
mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.1f", b / (ns / 1e9) / 1e6 }'; }
alive() {
  local s
  for s in "$@"; do
    kill -0 "${PID[$s]}" 2>/dev/null || { err "$s (pid ${PID[$s]}) is no longer running"; exit 1; }
  done
}
stored_path() { # server path -> where the server keeps it
  case "$1" in
    nginx) printf '%s/nginx/www/upload/%s' "$WORK" "$2" ;;
    *) printf '%s/%s/store/files/%s' "$WORK" "$1" "$2" ;;
  esac
}
# The served copies are read once before a timed GET, so that both servers start from the page
# cache (a VM may page out cold page cache between cases; nginx serves a hard link of the source
# file, Sluice its own stored copy).
warm() { # server file
  cat "$(stored_path "$1" "bench/$2")" >/dev/null
}
remove_prefix() { # server prefix: delete uploaded benchmark files behind the server (unique names)
  case "$1" in
    nginx) rm -rf "$WORK/nginx/www/upload/$2" ;;
    *) rm -rf "$WORK/$1/store/files/$2" "$WORK/$1/store/meta/$2" ;;
  esac
}
# Competing load. This is a shared 2-CPU box: a compile next to the benchmark halves the
# numbers. Each measurement is timed together with the user-mode CPU ticks of the whole machine
# (plus the time the hypervisor stole) minus those of this script, its reaped children (wrk,
# curl, python) and the live servers.
# Kernel threads (writeback of our own uploads, softirq) are left out on purpose. A run in which
# other processes used more than OTHER_LIMIT % of the CPUs is repeated (up to QUIET_RETRIES
# times, after waiting for a quiet second, within a total waiting budget of QUIET_BUDGET s).
user_ticks() { awk '/^cpu / { print $2 + $3 + $9 }' /proc/stat; } # user + nice + steal
own_user_ticks() {
  local t p
  t=$(sed 's/.*) //' "/proc/$$/stat" | awk '{ print $12 + $14 }')
  for p in "${PID[@]}" $(pgrep -P "${PID[nginx]:-0}" 2>/dev/null || true); do
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 } END { if (!NR) print 0 }')))
  done
  printf '%s' "$t"
}
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
OTHER_MAX=0 DISTURBED=0 REPEATED=0 ATTEMPT=0
cpu_mark() { MARK_USER=$(user_ticks) MARK_OWN=$(own_user_ticks) MARK_NS=$(now_ns); }
other_pct() { # share of all CPUs that other processes used since cpu_mark, in %
  local u o ns
  u=$(($(user_ticks) - MARK_USER)) o=$(($(own_user_ticks) - MARK_OWN)) ns=$(($(now_ns) - MARK_NS))
  awk -v u="$u" -v o="$o" -v ns="$ns" -v hz="$HZ" -v n="$NCPU" \
    'BEGIN { x = (u - o) / (ns / 1e9 * hz * n) * 100; if (x < 0) x = 0; printf "%.0f", x }'
}
wait_quiet() { # wait (within the budget) until other processes use < 5% of the CPUs for 1 s
  local pct said=0
  while [ "$QUIET_BUDGET" -gt 0 ]; do
    cpu_mark
    sleep 1
    pct=$(other_pct)
    [ "$pct" -ge 5 ] || return 0
    QUIET_BUDGET=$((QUIET_BUDGET - 1))
    [ "$said" = 1 ] || say "      (waiting for a quiet machine: other processes use ${pct}% of the CPUs)"
    said=1
  done
  return 1
}
measure() { # run one measurement ("$@" records its results); repeat it if it was disturbed
  local lines pct
  for ATTEMPT in $(seq 0 "$QUIET_RETRIES"); do
    [ "$QUIET_RETRIES" = 0 ] || wait_quiet || true
    lines=$(wc -l <"$RES")
    cpu_mark
    "$@"
    pct=$(other_pct)
    if [ "$pct" -le "$OTHER_LIMIT" ]; then
      [ "$pct" -le "$OTHER_MAX" ] || OTHER_MAX=$pct
      return 0
    fi
    if [ "$ATTEMPT" -lt "$QUIET_RETRIES" ]; then
      say "      ^ disturbed: other processes used ${pct}% of the CPUs; repeating"
      head -n "$lines" "$RES" >"$RES.tmp"
      mv "$RES.tmp" "$RES"
      REPEATED=$((REPEATED + 1))
    else
      say "      ^ disturbed: other processes used ${pct}% of the CPUs; kept"
      [ "$pct" -le "$OTHER_MAX" ] || OTHER_MAX=$pct
      DISTURBED=$((DISTURBED + 1))
    fi
  done
}
wait_ready() { # server url
  local i code
  for i in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$2" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || break
    sleep 0.1
  done
  err "$1 did not become ready at $2"
  exit 1
}

# ---------------------------------------------------------------- machine facts
FACTS=$WORK/facts.md
{
  say "- mode: $MODE; rounds: $ROUNDS (A B order per round: nginx, sluice[, sluice-fsync]); wrk runs: ${DUR} s; big file: $BIG_LABEL"
  say "- machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  say "- temp dir filesystem: $(df -PT "$WORK" | awk 'NR==2 {print $2}')"
  say "- sluice: $("$SLUICE" --version) ($SLUICE, built $(date -u -r "$SLUICE" '+%Y-%m-%d %H:%M UTC'), sha256 $(sha256sum "$SLUICE" | cut -c1-12)), SLUICE_LOG=warn"
  say "- $("$NGINX" -v 2>&1 | head -1), worker_processes auto, sendfile on, tcp_nopush off, access_log off, dav PUT"
  say "- $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//'), $(curl --version | head -1 | cut -d' ' -f1-2), $(python3 --version)"
} >"$FACTS"
say "== Sluice vs nginx, $(date -u '+%Y-%m-%d %H:%M UTC')"
cat "$FACTS"
say "- work dir: $WORK"
say "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (the machine should be otherwise idle)"
T_START=$(date +%s)

# ---------------------------------------------------------------- test files
SRC=$WORK/src
mkdir -p "$SRC"
say
say "== test files"
say "\$ head -c 4096 /dev/urandom > $SRC/f4k.bin"
head -c 4096 /dev/urandom >"$SRC/f4k.bin"
say "\$ head -c $MID_BYTES /dev/urandom > $SRC/f64m.bin"
head -c "$MID_BYTES" /dev/urandom >"$SRC/f64m.bin"
FILES=(f4k.bin f64m.bin)
if [ "$QUICK" = 1 ]; then
  BIG=f64m.bin
else
  BIG=f1g.bin
  say "\$ head -c $BIG_BYTES /dev/urandom > $SRC/$BIG"
  head -c "$BIG_BYTES" /dev/urandom >"$SRC/$BIG"
  FILES+=("$BIG")
fi
declare -A SHA
for f in "${FILES[@]}"; do SHA[$f]=$(sha256sum "$SRC/$f" | cut -d' ' -f1); done

# ---------------------------------------------------------------- nginx
NG=$WORK/nginx
mkdir -p "$NG"/www/upload/bench "$NG"/{body,proxy,fastcgi,uwsgi,scgi}
for f in "${FILES[@]}"; do ln "$SRC/$f" "$NG/www/upload/bench/$f" 2>/dev/null || cp "$SRC/$f" "$NG/www/upload/bench/$f"; done
PORT[nginx]=$("${LIB[@]}" port)
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root root;"
sed -e "s|@WORK@|$NG|g" -e "s|@PORT@|${PORT[nginx]}|g" -e "s|@USER@|$user_line|" \
  "$HERE/nginx.conf.in" >"$NG/nginx.conf"
say
say "== servers"
"$NGINX" -t -q -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" || { err "nginx -t failed"; exit 1; }
show "$NGINX" -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log"
"$NGINX" -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" >"$NG/stdout.log" 2>&1 &
PID[nginx]=$!
wait_ready nginx "$(base nginx)/upload/bench/f4k.bin"

# ---------------------------------------------------------------- sluice (durability none and fsync)
start_sluice() { # name durability
  local name=$1 dur=$2 dir=$WORK/$1
  mkdir -p "$dir"
  PORT[$name]=$("${LIB[@]}" port)
  cat >"$dir/config.toml" <<EOF
[server]
listen = ["127.0.0.1:${PORT[$name]}"]
url_prefix = "/upload"
shutdown_grace = "5s"

[storage]
dir = "$dir/store"
durability = "$dur"
max_file_size = "2GiB"

[[auth.keys]]
id = "bench"
secret = "$SECRET"
EOF
  "$SLUICE" check-config "$dir/config.toml" >/dev/null 2>"$dir/check.log" || {
    cat "$dir/check.log"
    err "sluice check-config failed"
    exit 1
  }
  show env SLUICE_LOG=warn "$SLUICE" --config "$dir/config.toml"
  SLUICE_LOG=warn "$SLUICE" --config "$dir/config.toml" >"$dir/log" 2>&1 &
  PID[$name]=$!
  wait_ready "$name" "$(base "$name")/health"
}
# Two instances side by side instead of restarting one: "sluice" (durability = "none") serves
# every GET case and the none-PUT cases, "sluice-fsync" only the fsync-PUT cases.
start_sluice sluice none
start_sluice sluice-fsync fsync
say "config ($WORK/sluice/config.toml):"
sed 's/^/    /' "$WORK/sluice/config.toml"

# ---------------------------------------------------------------- upload to Sluice, verify both
say
say "== upload the test files to Sluice with signed PUTs, then verify both servers"
for f in "${FILES[@]}"; do
  size=$(stat -c %s "$SRC/$f")
  url="$(base sluice)/upload/bench/$f?v=$(mac "bench/$f" "$size")"
  show curl -sS -o /dev/null -w '%{http_code}' -T "$SRC/$f" "$url"
  code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$SRC/$f" "$url") || true
  [ "$code" = 201 ] || { err "PUT bench/$f to sluice: HTTP $code"; exit 1; }
done
for srv in nginx sluice; do
  for f in "${FILES[@]}"; do
    got=$(set -o pipefail; curl -sS -f "$(base "$srv")/upload/bench/$f" | sha256sum | cut -d' ' -f1) ||
      got="curl failed"
    [ "$got" = "${SHA[$f]}" ] || err "$srv GET bench/$f: sha256 $got, want ${SHA[$f]}"
  done
  for k in 0 517 1023; do
    a=$((k * RANGE_BLOCK)) b=$((k * RANGE_BLOCK + RANGE_BLOCK - 1))
    code=$(curl -sS -o "$WORK/range.out" -w '%{http_code}' -r "$a-$b" "$(base "$srv")/upload/bench/f64m.bin") || true
    want=$(dd if="$SRC/f64m.bin" bs="$RANGE_BLOCK" skip="$k" count=1 status=none | sha256sum | cut -d' ' -f1)
    got=$(sha256sum "$WORK/range.out" | cut -d' ' -f1)
    if [ "$code" != 206 ] || [ "$got" != "$want" ]; then
      err "$srv Range bytes=$a-$b: HTTP $code, sha256 $got, want $want"
    fi
  done
done
say "verified: SHA-256 of every file and of 3 ranges from both servers"
[ "$ERRORS" = 0 ] || exit 1

# ---------------------------------------------------------------- wrk cases
run_wrk() { # metric server concurrency wrk-args... (URL and script last)
  local metric=$1 srv=$2 c=$3
  shift 3
  local t=$((c < 2 ? c : 2))
  local cmd=(wrk -t"$t" -c"$c" -d"${DUR}s" --latency "$@")
  show "${cmd[@]}"
  "${cmd[@]}" >"$WORK/wrk.out" 2>&1 || err "wrk exited non-zero ($srv $metric)"
  local rps p99 errs avg
  read -r rps p99 errs avg < <("${LIB[@]}" wrk "$WORK/wrk.out")
  record "${metric}_rps" "$srv" "$rps"
  record "${metric}_p99" "$srv" "$p99"
  printf '    %-12s %10s req/s  p99 %8s ms  errors %s\n' "$srv" "$rps" "$p99" "$errs"
  if [ "$errs" != 0 ]; then
    err "$srv $metric: $errs failed requests (wrk output below)"
    sed 's/^/      | /' "$WORK/wrk.out"
  fi
  LAST_AVG=$avg
}

say
say "== warm-up (1 s per server, not recorded)"
for srv in nginx sluice; do
  wrk -t2 -c16 -d1s "$(base "$srv")/upload/bench/f4k.bin" >/dev/null 2>&1 || true
done

say
say "== case 1: GET 4 KiB, wrk"
for c in 1 16 128; do
  say "  -- concurrency $c"
  for r in $(seq "$ROUNDS"); do
    for srv in nginx sluice; do
      measure run_wrk "get4k_c$c" "$srv" "$c" "$(base "$srv")/upload/bench/f4k.bin"
    done
  done
done
alive nginx sluice

range_run() { # server
  warm "$1" f64m.bin
  run_wrk range64k "$1" 16 -s "$HERE/range.lua" "$(base "$1")/upload/bench/f64m.bin" -- "$MID_BYTES" "$RANGE_BLOCK"
  if ! awk -v a="$LAST_AVG" -v b="$RANGE_BLOCK" 'BEGIN { exit !(a >= b) }'; then
    err "$1 range responses average $LAST_AVG bytes, less than $RANGE_BLOCK"
  fi
}
say
say "== case 2: Range GET 64 KiB at random aligned offsets of the 64 MiB file, concurrency 16"
for r in $(seq "$ROUNDS"); do
  for srv in nginx sluice; do measure range_run "$srv"; done
done
alive nginx sluice

# ---------------------------------------------------------------- bulk GET / PUT with curl
bulk_get() { # server streams
  local srv=$1 n=$2 i t0 t1 url
  url="$(base "$srv")/upload/bench/$BIG"
  warm "$srv" "$BIG"
  show curl -sS -o /dev/null -w '%{http_code} %{size_download}' "$url"
  say "  ($n stream(s) at once, wall time from the first start to the last exit)"
  local pids=()
  t0=$(now_ns)
  for i in $(seq "$n"); do
    curl -sS -o /dev/null -w '%{http_code} %{size_download}' "$url" >"$WORK/get.$i" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || err "$srv GET stream $((i + 1)): curl failed: $(cat "$WORK/get.$((i + 1))")"; done
  t1=$(now_ns)
  for i in $(seq "$n"); do
    [ "$(cat "$WORK/get.$i")" = "200 $BIG_BYTES" ] || err "$srv GET stream $i: got '$(cat "$WORK/get.$i")', want '200 $BIG_BYTES'"
  done
  local v
  v=$(mbps $((n * BIG_BYTES)) $((t1 - t0)))
  record "getbig_$n" "$srv" "$v"
  printf '    %-12s %10s MB/s  (%d x %s in %.2f s)\n' "$srv" "$v" "$n" "$BIG_LABEL" "$(awk -v ns=$((t1 - t0)) 'BEGIN { print ns / 1e9 }')"
}

bulk_put() { # server streams round
  local srv=$1 n=$2 r=$3 i t0 t1 prefix path url
  prefix="pbig/$srv-r$r-x$n-a$ATTEMPT"
  local pids=() urls=()
  for i in $(seq "$n"); do
    path="$prefix/$i.bin"
    urls+=("$(base "$srv")/upload/$path?v=$(mac "$path" "$BIG_BYTES")")
  done
  show curl -sS -o /dev/null -w '%{http_code}' -T "$SRC/$BIG" "${urls[0]}"
  say "  ($n stream(s) at once to $prefix/1..$n.bin, each signed, wall time)"
  sync
  t0=$(now_ns)
  for i in $(seq "$n"); do
    curl -sS -o /dev/null -w '%{http_code}' -T "$SRC/$BIG" "${urls[$((i - 1))]}" >"$WORK/put.$i" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || err "$srv PUT stream $((i + 1)): curl failed: $(cat "$WORK/put.$((i + 1))")"; done
  t1=$(now_ns)
  for i in $(seq "$n"); do
    local code sp
    code=$(cat "$WORK/put.$i")
    sp=$(stored_path "$srv" "$prefix/$i.bin")
    [ "$code" = 201 ] || err "$srv PUT stream $i: HTTP '$code', want 201"
    [ "$(stat -c %s "$sp" 2>/dev/null)" = "$BIG_BYTES" ] || err "$srv PUT stream $i: stored file $sp missing or wrong size"
  done
  local got
  got=$(sha256sum "$(stored_path "$srv" "$prefix/1.bin")" 2>/dev/null | cut -d' ' -f1)
  [ "$got" = "${SHA[$BIG]}" ] || err "$srv PUT stream 1: stored sha256 $got, want ${SHA[$BIG]}"
  local v
  v=$(mbps $((n * BIG_BYTES)) $((t1 - t0)))
  record "putbig_$n" "$srv" "$v"
  printf '    %-12s %10s MB/s  (%d x %s in %.2f s)\n' "$srv" "$v" "$n" "$BIG_LABEL" "$(awk -v ns=$((t1 - t0)) 'BEGIN { print ns / 1e9 }')"
  remove_prefix "$srv" "$prefix"
  sync
}

say
say "== case 3: GET $BIG_LABEL, curl -o /dev/null, 1 and 4 parallel streams (wall time)"
for n in 1 4; do
  say "  -- $n stream(s)"
  for r in $(seq "$ROUNDS"); do
    for srv in nginx sluice; do measure bulk_get "$srv" "$n"; done
  done
done
alive nginx sluice

say
say "== case 4: PUT $BIG_LABEL, curl -T, 1 and 4 parallel streams, unique names (sync before, delete + sync after)"
for n in 1 4; do
  say "  -- $n stream(s)"
  for r in $(seq "$ROUNDS"); do
    for srv in nginx sluice sluice-fsync; do measure bulk_put "$srv" "$n" "$r"; done
  done
done
alive nginx sluice sluice-fsync

put4k_run() { # server round
  local prefix="p4k/$1-r$2-a$ATTEMPT"
  "${LIB[@]}" putlist "$SECRET" "$prefix" 4096 $((DUR * PUT_LIST_PER_S)) "$WORK/putlist.txt"
  run_wrk put4k "$1" 16 -s "$HERE/put.lua" "$(base "$1")/upload/" -- "$WORK/putlist.txt" "$SRC/f4k.bin" 2
  remove_prefix "$1" "$prefix"
  sync
}
say
say "== case 5: PUT 4 KiB, wrk with pre-signed unique URLs (put.lua), concurrency 16"
# Creating tens of thousands of small files is bound by filesystem metadata; the first run after
# the bulk cases is much faster than the steady state that follows (ext4 journal), which would
# favour whichever server runs first. One unrecorded run brings the disk to the steady state.
say "  (warm-up: one unrecorded nginx run)"
ATTEMPT=w lines=$(wc -l <"$RES")
put4k_run nginx 0 >/dev/null
head -n "$lines" "$RES" >"$RES.tmp"
mv "$RES.tmp" "$RES"
for r in $(seq "$ROUNDS"); do
  for srv in nginx sluice sluice-fsync; do measure put4k_run "$srv" "$r"; done
done
alive nginx sluice sluice-fsync

# ---------------------------------------------------------------- peak RSS
say
say "== case 6: peak RSS (VmHWM) at the end of the run"
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
total=$(hwm_kib "${PID[nginx]}")
detail="master $((total / 1024)) MiB"
for w in $(pgrep -P "${PID[nginx]}" || true); do
  k=$(hwm_kib "$w")
  total=$((total + k))
  detail="$detail + worker $((k / 1024)) MiB"
done
record rss nginx "$(awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }')"
say "    nginx        $(awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }') MiB ($detail, summed)"
for srv in sluice sluice-fsync; do
  k=$(hwm_kib "${PID[$srv]}")
  record rss "$srv" "$(awk -v k="$k" 'BEGIN { printf "%.1f", k / 1024 }')"
  say "    $(printf '%-12s' "$srv") $(awk -v k="$k" 'BEGIN { printf "%.1f", k / 1024 }') MiB"
done

# ---------------------------------------------------------------- server-side complaints
say
say "== server logs and metrics"
for srv in sluice sluice-fsync; do
  n=$(grep -c -E 'WARN|ERROR' "$WORK/$srv/log" || true)
  say "  $srv log: $n WARN/ERROR lines"
  [ "$n" = 0 ] || grep -E 'WARN|ERROR' "$WORK/$srv/log" | head -20 | sed 's/^/    | /'
  fivexx=$(curl -s "$(base "$srv")/metrics" | grep '^sluice_http_requests_total' | grep '5xx' || true)
  if [ -n "$fivexx" ]; then
    err "$srv answered 5xx:"
    printf '%s\n' "$fivexx" | sed 's/^/    | /'
  fi
done
n=$(grep -c -E '\[(error|crit|alert|emerg)\]' "$NG/error.log" 2>/dev/null || true)
say "  nginx error.log: ${n:-0} error lines"
[ "${n:-0}" = 0 ] || grep -E '\[(error|crit|alert|emerg)\]' "$NG/error.log" | head -20 | sed 's/^/    | /'

# ---------------------------------------------------------------- table
ROWS=$WORK/rows.tsv
{
  for c in 1 16 128; do
    printf 'GET 4 KiB, c=%s, req/s\tget4k_c%s_rps\tnginx\tsluice\n' "$c" "$c"
    printf 'GET 4 KiB, c=%s, p99 ms\tget4k_c%s_p99\tnginx\tsluice\n' "$c" "$c"
  done
  printf 'Range GET 64 KiB random, c=16, req/s\trange64k_rps\tnginx\tsluice\n'
  printf 'Range GET 64 KiB random, c=16, p99 ms\trange64k_p99\tnginx\tsluice\n'
  for n in 1 4; do printf 'GET %s, %s parallel, MB/s\tgetbig_%s\tnginx\tsluice\n' "$BIG_LABEL" "$n" "$n"; done
  for n in 1 4; do
    printf 'PUT %s, %s parallel, MB/s (sluice durability=none)\tputbig_%s\tnginx\tsluice\n' "$BIG_LABEL" "$n" "$n"
    printf 'PUT %s, %s parallel, MB/s (sluice durability=fsync)\tputbig_%s\tnginx\tsluice-fsync\n' "$BIG_LABEL" "$n" "$n"
  done
  printf 'PUT 4 KiB, c=16, req/s (sluice durability=none)\tput4k_rps\tnginx\tsluice\n'
  printf 'PUT 4 KiB, c=16, req/s (sluice durability=fsync)\tput4k_rps\tnginx\tsluice-fsync\n'
  printf 'PUT 4 KiB, c=16, p99 ms (sluice durability=none)\tput4k_p99\tnginx\tsluice\n'
  printf 'PUT 4 KiB, c=16, p99 ms (sluice durability=fsync)\tput4k_p99\tnginx\tsluice-fsync\n'
  printf 'peak RSS MiB (nginx: master+workers; sluice none instance)\trss\tnginx\tsluice\n'
  printf 'peak RSS MiB (sluice fsync instance, PUT cases only)\trss\tnginx\tsluice-fsync\n'
} >"$ROWS"
T_END=$(date +%s)
say "- run time: $((T_END - T_START)) s; other processes used at most ${OTHER_MAX}% of the CPUs during a kept run; $REPEATED run(s) repeated because of competing load, $DISTURBED disturbed run(s) kept" >>"$FACTS"
tail -1 "$FACTS"
if [ "$DISTURBED" != 0 ]; then
  say "WARNING: $DISTURBED run(s) had competing load above ${OTHER_LIMIT}% of the CPUs: rerun on a quiet machine"
fi
say
say "== results (medians of $ROUNDS round(s); run time $((T_END - T_START)) s)"
report=("${LIB[@]}" report "$RES" "$ROWS")
[ -z "$OUT" ] || report+=(--out "$OUT" --title "Sluice vs nginx ($MODE, $(date -u '+%Y-%m-%d'))" --facts "$FACTS")
"${report[@]}"
[ -z "$OUT" ] || say "markdown table written to $OUT"

if [ "$ERRORS" != 0 ]; then
  say "FAILED: $ERRORS error(s), see ERROR lines above"
  exit 1
fi
say "OK: no request failed"
