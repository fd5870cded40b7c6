#!/usr/bin/env bash
# System calls per request of a running Sluice, counted with `strace -c -f` over a short wrk
# run (repeatable on a noisy machine, unlike timings; strace itself slows the server, so the
# request rate printed is not a benchmark).
#
#   bash benches/strace-per-request.sh PATH_TO_SLUICE range|put [SECONDS]
#
#   range  64 KiB random Range GETs of a 64 MiB file (benches/range.lua), 4 connections
#   put    4 KiB PUTs to new signed names (benches/put.lua), 4 connections
# Durability "none". Prints the calls per request, most frequent first.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(realpath "$1"); MODE=$2; SECS=${3:-3}
W=$(mktemp -d /tmp/sluice-strace.XXXXXX)
PORT=$(python3 "$HERE/benchlib.py" port)
SECRET="strace-bench-secret-0123456789"
cat > "$W/cfg.toml" <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
url_prefix = "/upload"
[storage]
dir = "$W/data"
durability = "none"
max_file_size = "1GiB"
[[auth.keys]]
id = "b"
secret = "$SECRET"
CFG
"$BIN" --config "$W/cfg.toml" > "$W/log" 2>&1 & P=$!
trap 'kill $P 2>/dev/null; wait $P 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT/upload"
case "$MODE" in
  range)
    head -c $((64 << 20)) /dev/urandom > "$W/f.bin"
    M=$(python3 "$HERE/benchlib.py" sign "$SECRET" b/f.bin $((64 << 20)))
    curl -fsS -o /dev/null -T "$W/f.bin" "$URL/b/f.bin?v=$M"
    ARGS=(-s "$HERE/range.lua" "$URL/b/f.bin" -- $((64 << 20)) 65536)
    WARM=("${ARGS[@]}") ;;
  put)
    head -c 4096 /dev/urandom > "$W/f.bin"
    python3 "$HERE/benchlib.py" putlist "$SECRET" warm 4096 40000 "$W/warm.txt"
    python3 "$HERE/benchlib.py" putlist "$SECRET" run 4096 40000 "$W/list.txt"
    WARM=(-s "$HERE/put.lua" "$URL/" -- "$W/warm.txt" "$W/f.bin" 1)
    ARGS=(-s "$HERE/put.lua" "$URL/" -- "$W/list.txt" "$W/f.bin" 1) ;;
  *) echo "mode: range or put" >&2; exit 2 ;;
esac
wrk -t1 -c4 -d1s "${WARM[@]}" > /dev/null
strace -c -f -p "$P" -o "$W/strace.txt" 2>/dev/null & S=$!
sleep 1
N=$(wrk -t1 -c4 -d"${SECS}s" "${ARGS[@]}" | awk '/requests in/ {print $1}')
sleep 0.5
kill -INT "$S"; wait "$S" 2>/dev/null || true
echo "$MODE: $N requests under strace"
awk -v n="$N" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {printf "%-16s %7.2f per request\n", $NF, $4 / n}' "$W/strace.txt" | sort -k2 -rn | head -15
