#!/bin/bash
# Counts the file-system syscalls of N sequential 4 KiB PUTs (fresh slot directories) with
# strace -c on a running server: repeatable on a noisy machine, unlike timings.
#   bash benches/syscalls.sh PATH_TO_SLUICE fsync|none [N]
set -u
BIN=$1; DUR=$2; N=${3:-200}
W=$(mktemp -d); PORT=$((20000 + RANDOM % 20000))
printf '[server]\nlisten = ["127.0.0.1:%s"]\n[storage]\ndir = "%s/data"\ndurability = "%s"\n[[auth.keys]]\nid = "b"\nsecret = "benchmark-secret-0123456789"\n' $PORT $W $DUR > $W/c.toml
$BIN --config $W/c.toml >/dev/null 2>&1 &
SP=$!
for i in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/health" && break; sleep 0.1; done
timeout 60 strace -f -c -o $W/strace.txt -e trace=fsync,fdatasync,openat,linkat,mkdir,rename,renameat,unlink,unlinkat,pwrite64,write -p $SP 2>/dev/null &
TP=$!
sleep 1
python3 - "$PORT" "$N" <<'P'
import hmac, hashlib, sys, uuid, http.client, os, time
port, n = int(sys.argv[1]), int(sys.argv[2])
body = os.urandom(4096)
c = http.client.HTTPConnection('127.0.0.1', port)
ok = 0; t0 = time.time()
for i in range(n):
    path = f"{uuid.uuid4()}/f{i}.bin"
    mac = hmac.new(b"benchmark-secret-0123456789", f"{path} {len(body)}".encode(), hashlib.sha256).hexdigest()
    c.request('PUT', f"/{path}?v={mac}", body=body, headers={'Content-Length': str(len(body))})
    r = c.getresponse(); r.read(); ok += r.status == 201
print(f"201s: {ok}/{n} in {time.time()-t0:.2f} s")
P
kill -INT $TP; wait $TP 2>/dev/null
kill $SP; wait $SP 2>/dev/null
awk 'NR>2 && $NF!="total" && NF>=5 {printf "%s=%.2f/PUT ", $NF, $4/'"$N"'} END {print ""}' $W/strace.txt
rm -rf $W
