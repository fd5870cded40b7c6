#!/usr/bin/env bash
# User-space instructions of Sluice serving 2000 random 64 KiB Range GETs of a 16 MiB file,
# counted by callgrind (repeatable on a noisy machine; collection starts after the upload).
#   bash benches/callgrind-range.sh PATH_TO_SLUICE OUT_FILE
#   callgrind_annotate OUT_FILE | head -40
# Note: valgrind hides SHA-NI, so the upload's hash runs in software under it (not collected).
set -u
BIN=$1; OUT=$2
rm -rf /tmp/cg/data
PORT=18777
cat > /tmp/cg/cfg.toml <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
url_prefix = "/upload"
[storage]
dir = "/tmp/cg/data"
durability = "none"
max_file_size = "1GiB"
[[auth.keys]]
id = "b"
secret = "callgrind-secret-0123456789abc"
CFG
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT --dump-instr=no $BIN --config /tmp/cg/cfg.toml > /tmp/cg/log 2>&1 & P=$!
for i in $(seq 1 300); do curl -fs http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.2; done
head -c $((16<<20)) /dev/urandom > /tmp/cg/f.bin
M=$(python3 /work/main/benches/benchlib.py sign callgrind-secret-0123456789abc b/f.bin $((16<<20)))
curl -fsS -o /dev/null -T /tmp/cg/f.bin "http://127.0.0.1:$PORT/upload/b/f.bin?v=$M"
callgrind_control -i on $P >/dev/null
python3 - $PORT <<'PY'
import http.client, random, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port)
random.seed(1)
for i in range(2000):
    off = random.randrange(0, (16 << 20) - 65536)
    c.request("GET", "/upload/b/f.bin", headers={"Range": f"bytes={off}-{off + 65535}"})
    r = c.getresponse(); body = r.read(); assert r.status == 206 and len(body) == 65536
PY
kill -INT $P; wait $P
