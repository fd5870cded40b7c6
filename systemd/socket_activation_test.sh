#!/usr/bin/env bash
# Socket activation across restarts: no request may fail while Sluice is restarted.
#
#   bash systemd/socket_activation_test.sh PATH_TO_SLUICE_BINARY
#
# What sluice.socket does under systemd, done by a small Python holder: it binds a listening
# socket on 127.0.0.1:<free port> and keeps it for the whole test, starting the binary with
# that socket as fd 3 (LISTEN_FDS=1, LISTEN_PID = the binary's pid, as systemd sets them).
# The config's [server] listen names the same address, so a binary that ignored LISTEN_FDS
# would fail to bind it. Client threads send GET /health (one connection per request) for
# about 10 s while the binary is stopped with SIGTERM, waited for, and started again, twice:
# connections made meanwhile wait in the holder's accept queue. Then SIGHUP (what
# `systemctl reload sluice` sends through ExecReload=) must leave the process running.
#
# Debian's systemd-socket-activate is not used: without --accept it execs the command in
# its own process, so the socket dies with the first exit and nothing holds it across a
# restart.
#
# Passes when every request got 200, both stops exited 0 and SIGHUP did not end the process.
# A failure is anything a client without retries would see: refused, reset, closed before
# the response (e.g. a connection the old process accepted but closed at shutdown before
# reading its request), a timeout or another status; the first few are printed.
# Prints: requests sent, failed, restarts, the slowest request. Needs python3; installs nothing.
set -euo pipefail

say() { printf '[socket-activation] %s\n' "$*"; }

[ $# -eq 1 ] || { say "usage: bash systemd/socket_activation_test.sh PATH_TO_SLUICE_BINARY"; exit 2; }
BIN=$(realpath "$1")
if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then say "FAIL: not an executable file: $1"; exit 1; fi
command -v python3 >/dev/null || { say "FAIL: python3 not found"; exit 1; }

# fd 3 is closed for python so that the held socket can take that number.
exec python3 - "$BIN" 3>&- <<'PY'
import http.client, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
DURATION = 10.0
RESTART_AT = (3.0, 6.5)
CLIENTS = 4

def say(msg):
    print(f"[socket-activation] {msg}", flush=True)

# The holder's socket, first thing (fd 3 is still free), or moved to fd 3: the child
# inherits it under that number.
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(4096)
port = sock.getsockname()[1]
if sock.fileno() != 3:
    try:
        os.fstat(3)
        say("FAIL: fd 3 is already in use")
        sys.exit(1)
    except OSError:
        pass
    os.dup2(sock.fileno(), 3, inheritable=False)
    sock.close()
    sock = socket.socket(fileno=3)

tmp = tempfile.mkdtemp(prefix="sluice-sockact-")
log = open(os.path.join(tmp, "sluice.log"), "wb")

cfg = os.path.join(tmp, "config.toml")
with open(cfg, "w") as f:
    f.write(f'''[server]
# The holder's address: binding it again would fail, so LISTEN_FDS must be used.
listen = ["127.0.0.1:{port}"]
shutdown_grace = "5s"

[storage]
dir = "{tmp}/data"
durability = "none"

[[auth.keys]]
id = "test"
secret = "socket-activation-test-secret"
''')

def start():
    env = dict(os.environ, LISTEN_FDS="1", SLUICE_LOG="info", NO_COLOR="1")
    env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDNAMES", None)
    # sh sets LISTEN_PID to its own pid and execs the binary, which keeps that pid.
    return subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"', BIN, "--config", cfg],
        env=env, pass_fds=(3,), stdin=subprocess.DEVNULL, stdout=log, stderr=log)

stop_load = threading.Event()
lock = threading.Lock()
stats = {"sent": 0, "failed": 0, "slowest": 0.0}
errors = []

def client():
    while not stop_load.is_set():
        t0 = time.monotonic()
        ok, err = False, None
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            c.request("GET", "/health", headers={"Connection": "close"})
            r = c.getresponse()
            body = r.read()
            c.close()
            ok = r.status == 200 and body == b"ok\n"
            if not ok:
                err = f"status {r.status} body {body[:40]!r}"
        except Exception as e:  # refused, reset, timeout: all failures
            err = f"{type(e).__name__}: {e}"
        dt = time.monotonic() - t0
        with lock:
            stats["sent"] += 1
            stats["slowest"] = max(stats["slowest"], dt)
            if not ok:
                stats["failed"] += 1
                if len(errors) < 10:
                    errors.append(err)
        time.sleep(0.005)

def alive_and_serving(proc):
    if proc.poll() is not None:
        return False
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health")
        return c.getresponse().status == 200
    except Exception:
        return False

problems = []
proc = start()
restarts, downtime = 0, []
def run():
    global proc, restarts
    if not alive_and_serving(proc):
        problems.append("the binary did not serve on the inherited socket")
        return
    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for at in RESTART_AT:
        time.sleep(max(0.0, t_start + at - time.monotonic()))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            problems.append("the binary did not exit within 20 s of SIGTERM")
            proc.kill()
            rc = proc.wait()
        if rc != 0:
            problems.append(f"the binary exited with status {rc} after SIGTERM")
        time.sleep(0.2)  # down for a moment: connections pile up in the accept queue
        proc = start()
        restarts += 1
        downtime.append(time.monotonic() - t0)
    time.sleep(max(0.0, t_start + DURATION - time.monotonic()))
    stop_load.set()
    for t in threads:
        t.join(timeout=20)

    # systemctl reload: SIGHUP must not end the process.
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    if not alive_and_serving(proc):
        rc = proc.poll()
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        problems.append(f"SIGHUP ended the process ({how}): `systemctl reload` would stop Sluice")

try:
    run()
finally:
    stop_load.set()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    sock.close()
    log.close()

say(f"requests sent: {stats['sent']}, failed: {stats['failed']}, restarts: {restarts}, "
    f"slowest request: {stats['slowest']*1000:.0f} ms, downtime per restart: "
    + ", ".join(f"{d*1000:.0f} ms" for d in downtime))
for e in errors:
    say(f"  failure: {e}")
if stats["failed"]:
    problems.append(f"{stats['failed']} of {stats['sent']} requests failed")
if restarts and stats["sent"] < 100:
    problems.append(f"only {stats['sent']} requests sent")
if problems:
    for p in problems:
        say(f"FAIL: {p}")
    with open(os.path.join(tmp, "sluice.log"), "rb") as f:
        tail = f.read().decode("utf-8", "replace").splitlines()[-15:]
    for line in tail:
        say(f"  log: {line}")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1)
shutil.rmtree(tmp, ignore_errors=True)
say("OK")
PY
