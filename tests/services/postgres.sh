#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the catalog tests (src/catalog/postgres.rs).
#
#   tests/services/postgres.sh start DIR   initdb a cluster in DIR (created if missing), start it
#                                          on 127.0.0.1 at a free port and print its URL,
#                                          postgres://sluice:PASSWORD@127.0.0.1:PORT/sluice,
#                                          as the last line of stdout
#   tests/services/postgres.sh stop DIR    stop it (DIR is left for the caller to remove)
#
# The role `sluice` logs in with a random password (scram-sha-256) and may create databases
# (each test makes its own); the superuser `postgres` is reachable only through the unix
# socket in DIR. Durability is off: the cluster is for tests only.
#
# Binaries: $PG_BIN, else the newest /usr/lib/postgresql/*/bin (Debian and Ubuntu's
# postgresql package), else whatever is on PATH. Run as root, the cluster belongs to the
# `postgres` system user (initdb refuses root): DIR is chowned to it, and its parents must
# be searchable by that user (mktemp -d under /tmp is fine). Locale: $PG_LOCALE, else
# C.UTF-8 where it exists.
#
# Example:
#   dir=$(mktemp -d) && chmod 755 "$dir"
#   export SLUICE_TEST_POSTGRES_URL=$(tests/services/postgres.sh start "$dir" | tail -n1)
#   cargo test --lib catalog::postgres
#   tests/services/postgres.sh stop "$dir" && rm -rf "$dir"
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}

pg_bin() {
    if [ -n "${PG_BIN:-}" ]; then
        echo "$PG_BIN"
        return
    fi
    local best="" d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] || continue
        # Highest major version wins (sort -V orders 9.6 < 15 < 16).
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n1)" = "$d" ]; then
            best=$d
        fi
    done
    if [ -n "$best" ]; then
        echo "$best"
    elif command -v initdb >/dev/null; then
        dirname "$(command -v initdb)"
    else
        echo "postgres.sh: no PostgreSQL binaries (set PG_BIN, or apt-get install postgresql)" >&2
        exit 1
    fi
}

# Run a command as the cluster's owner: the `postgres` user when we are root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A TCP port nothing listens on now (the server start retries if it is taken meanwhile).
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "postgres.sh: no free port found" >&2
    exit 1
}

pick_locale() {
    if [ -n "${PG_LOCALE:-}" ]; then
        echo "$PG_LOCALE"
    elif locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then
        echo "C.UTF-8"
    else
        echo "C"
    fi
}

start() {
    local dir=$1 bin data password port locale
    bin=$(pg_bin)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    data=$dir/data
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
    fi
    if [ -e "$data" ]; then
        echo "postgres.sh: $data exists (stop and remove the old cluster first)" >&2
        exit 1
    fi
    locale=$(pick_locale)
    as_owner "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale="$locale" \
        --auth-local=trust --auth-host=reject >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # Loopback TCP: only `sluice`, with its password. Unix socket: trust (setup, stop).
    as_owner sh -c "cat > '$data/pg_hba.conf'" <<HBA
local all all trust
host all sluice 127.0.0.1/32 scram-sha-256
HBA
    local started=""
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        as_owner sh -c "cat >> '$data/postgresql.conf'" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
CONF
        if as_owner "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 start >/dev/null; then
            started=1
            break
        fi
        # Most likely the port was taken between the check and the start: try another.
        as_owner sed -i '/^port = /d' "$data/postgresql.conf"
    done
    if [ -z "$started" ]; then
        tail -n 20 "$dir/postgres.log" >&2 || true
        echo "postgres.sh: the server did not start" >&2
        exit 1
    fi
    echo "$port" >"$dir/port"
    as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE ROLE sluice LOGIN CREATEDB PASSWORD '$password'" \
        -c "CREATE DATABASE sluice OWNER sluice" >&2
    echo "postgres://sluice:$password@127.0.0.1:$port/sluice"
}

stop() {
    local dir=$1 bin
    bin=$(pg_bin)
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
}

[ $# -eq 2 ] || usage
case $1 in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) usage ;;
esac
