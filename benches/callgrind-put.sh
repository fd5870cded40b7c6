#!/usr/bin/env bash
# User-space instructions of Sluice storing 1000 small PUTs (4 KiB, new names, durability none,
# one keep-alive connection), counted by callgrind (repeatable on a noisy machine; collection
# starts after start-up). All threads are counted (the catalog writer and the blocking pool too).
#   bash benches/callgrind-put.sh PATH_TO_SLUICE OUT_FILE [N]
#   callgrind_annotate OUT_FILE | head -40
# Note: valgrind hides SHA-NI, so SHA-256 runs in software under it (about 4x its real cost).
set -u
BIN=$1; OUT=$2; N=${3:-1000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d /tmp/cg-put.XXXXXX)
trap 'rm -rf "$W"' EXIT
PORT=$(python3 "$HERE/benchlib.py" port)
SECRET=callgrind-secret-0123456789abc
cat > "$W/cfg.toml" <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
url_prefix = "/upload"
[storage]
dir = "$W/data"
durability = "none"
[[auth.keys]]
id = "b"
secret = "$SECRET"
CFG
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" --dump-instr=no \
  "$BIN" --config "$W/cfg.toml" > "$W/log" 2>&1 &
P=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
python3 "$HERE/benchlib.py" putlist "$SECRET" cg 4096 "$N" "$W/urls"
callgrind_control -i on $P >/dev/null
python3 - "$PORT" "$W/urls" <<'PY'
import http.client, sys
port, urls = int(sys.argv[1]), open(sys.argv[2]).read().split()
c = http.client.HTTPConnection("127.0.0.1", port)
body = b"x" * 4096
for u in urls:
    c.request("PUT", u, body=body, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse(); r.read(); assert r.status == 201, (r.status, u)
PY
kill -INT $P; wait $P
