#!/usr/bin/env bash
# A throwaway SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) for
# the S3 storage tests.
#
#   tests/services/seaweedfs.sh start DIR   # prints the S3 endpoint URL as its last line
#   tests/services/seaweedfs.sh stop DIR
#
# Every port is picked free and passed explicitly (weed mini opens about a dozen); the data,
# the log, the pid and (when DIR is short) the Unix sockets live under DIR. Credentials and the
# bucket come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and S3_BUCKET (defaults below: a
# test-only pair). The secret is never printed.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi

export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-sluicetest}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-sluicetestsecret0123456789}
export S3_BUCKET=${S3_BUCKET:-sluice-test}

# Print N free ports, then a pair P, P + 10000: weed mini's maintenance worker dials the admin
# server's gRPC at its HTTP port + 10000, whatever -admin.port.grpc says. All are bound at once
# and let go, so they are distinct and were free just now.
free_ports() {
    python3 -c '
import random, socket, sys
socks = []
def take(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    socks.append(s)
    return s.getsockname()[1]
ports = [take() for _ in range(int(sys.argv[1]))]
while True:
    n = random.randint(20000, 55000)
    try:
        ports += [take(n), take(n + 10000)]
        break
    except OSError:
        pass
print(" ".join(map(str, ports)))
' "$1"
}

stop() {
    local pidfile="$dir/weed.pid"
    [[ -f $pidfile ]] || return 0
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        # weed stops its parts one by one (a few seconds; longer after heavy writes).
        kill "$pid"
        for _ in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid"
        fi
    fi
    rm -f "$pidfile"
}

start() {
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    stop
    local s3 s3g master masterg volume volumeg filer filerg lance admin adming
    read -r s3 s3g master masterg volume volumeg filer filerg lance admin adming \
        <<<"$(free_ports 9)"
    local args=(
        mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1
        -webdav=false -admin.ui=false -s3.port.iceberg=0 -master.telemetry=false
        -s3.port="$s3" -s3.port.grpc="$s3g"
        -master.port="$master" -master.port.grpc="$masterg"
        -volume.port="$volume" -volume.port.grpc="$volumeg"
        -filer.port="$filer" -filer.port.grpc="$filerg"
        -admin.port="$admin" -admin.port.grpc="$adming"
        -s3.port.lance="$lance"
    )
    # Unix socket paths are limited to 107 bytes: under DIR when it is short enough, else
    # weed's default in /tmp (named after the port, so still distinct).
    if ((${#dir} < 80)); then
        args+=(-filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock")
    fi
    nohup weed "${args[@]}" >"$dir/weed.log" 2>&1 </dev/null &
    echo $! >"$dir/weed.pid"
    local url="http://127.0.0.1:$s3" code
    # Up when a signed HEAD of the bucket answers 200: S3 serves, the bucket exists and the
    # credentials are known.
    for _ in $(seq 600); do
        if ! kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
            echo "weed exited; last lines of $dir/weed.log:" >&2
            tail -n 20 "$dir/weed.log" >&2
            rm -f "$dir/weed.pid"
            exit 1
        fi
        # (The credentials go through stdin, not the command line.)
        code=$(printf 'user = "%s:%s"\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" |
            curl -K - -s -o /dev/null -w '%{http_code}' -I --max-time 2 \
                --aws-sigv4 "aws:amz:us-east-1:s3" "$url/$S3_BUCKET" || true)
        if [[ $code == 200 ]]; then
            echo "$url"
            return 0
        fi
        sleep 0.1
    done
    echo "SeaweedFS did not answer on $url within 60 s (log: $dir/weed.log)" >&2
    stop
    exit 1
}

case $cmd in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
