#!/usr/bin/env python3
"""Virtual-user chat load: nginx, then Sluice, serve the same seeded chat schedule (loopback only).

    python3 benches/chat.py --sluice BIN [--quick] [--out FILE] [--png FILE] [options]

Workload, identical for both servers (drawn from --seed before any server starts):
  --users U virtual users (250) join --join-interval s apart (0.25); each performs --actions A
  actions (40) with a think time uniform in --think MIN MAX s (2 6) between them:
    70 %  send    PUT a file of a chat size: 45 % image 50-500 KiB, 25 % small 1-50 KiB (voice,
                  text), 15 % photo 0.5-4 MiB, 10 % video 4-30 MiB, 5 % document 0.1-2 MiB
                  (all capped at --max-size); then 1-5 peers GET it at once (within 0.5 s)
    25 %  fetch   GET one of the last 50 files sent
     5 %  resume  GET one of the last 20 videos, drop the connection part-way (10-90 %), then
                  GET the rest with Range: bytes=N- and check the reassembled SHA-256
  Every request has its own connection (Connection: close). Every status is checked (PUT:
  201, or 201/204 from nginx's dav module; GET 200; resumed GET 206 with the right
  Content-Range) and every body length; the SHA-256 of every resumed file and of every
  --verify-every'th other GET (10) is compared with the uploaded bytes. Files that left both
  recent lists and have no reader left are deleted behind the server (disk stays bounded;
  --keep-files turns this off).

Servers, one after the other (--rounds N: nginx, sluice, nginx, sluice, ...), each fresh in its
own temporary directory on a free 127.0.0.1 port:
  nginx   benches/nginx.conf.in as compare.sh uses it (sendfile on, dav PUT, access_log off,
          worker_processes auto)
  sluice  url_prefix "/upload", durability = "none", otherwise the default configuration,
          SLUICE_LOG=warn
Measured per operation (put, get-peer, get-recent, resume): count, errors, p50/p90/p99/max
latency (connect to last body byte; a resume counts both requests); per server: CPU
(utime+stime, nginx master + workers) as % of one core over the run, peak RSS (VmHWM; nginx:
summed over master + workers), RSS sampled every 0.5 s. Also the client's own CPU, the CPU
other processes used, and the client's event-loop lag (large lag = the client is the
bottleneck, the run says so).

Options:
  --sluice BIN            Sluice binary (required)
  --nginx BIN             nginx binary (default: nginx on PATH, else /usr/sbin/nginx)
  --users N, --actions N, --think MIN MAX, --join-interval S, --seed N
  --max-size SIZE         cap on any file (30MiB); "30MiB", "512KiB" or bytes
  --quick                 40 users x 8 actions, think 0.5-1.5 s: under a minute (CI smoke);
                          explicit options still win
  --rounds N              alternate the servers N times (1); tables pool the rounds
  --max-seconds S         global deadline (900): the run stops there and reports what it has;
                          each server phase gets an equal share of what is left
  --timeout S             limit per request, connect to last byte (60)
  --verify-every N        SHA-256 on every Nth plain GET (10); 0 = only resumes
  --out FILE              also write the markdown report to FILE
  --png FILE              one PNG: p50/p90/p99 over sliding 5 s windows, and RSS, over time
                          (needs matplotlib; without it the PNG is skipped with a note)
  --keep                  keep the temporary directory (configs, logs)
  --keep-files            never delete sent files during the run

Exits 1 if any request failed (status, length, hash, timeout, connection error) or a server
answered 5xx, after printing the tables; 2 on a usage or setup problem.
"""
import argparse
import asyncio
import bisect
import collections
import hashlib
import http.client
import math
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "sluice-chat-bench-secret-0123456789"
KIB, MIB = 1024, 1024 * 1024
HZ = os.sysconf("SC_CLK_TCK")
OPS = ("put", "get-peer", "get-recent", "resume")
# (share, name, min bytes, max bytes, extension) of a sent file
CATEGORIES = [
    (0.45, "image", 50 * KIB, 500 * KIB, "jpg"),
    (0.25, "small", 1 * KIB, 50 * KIB, "m4a"),
    (0.15, "photo", 512 * KIB, 4 * MIB, "jpg"),
    (0.10, "video", 4 * MIB, 30 * MIB, "mp4"),
    (0.05, "document", 100 * KIB, 2 * MIB, "pdf"),
]
AGENTS = ["Conversations/2.16.7+free (Android 14)", "Monal/6.4.3 (iPhone; iOS 17.5)",
          "Gajim/1.9.3", "Dino/0.4.4", "Cheogram/2.15.3 (Android 13)"]
RECENT, RECENT_VIDEOS, PEER_JITTER = 50, 20, 0.5
WCHUNK = RCHUNK = 256 * KIB
SLACK = 4 * MIB  # file contents start at a random offset into one shared random buffer


def parse_size(s):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r}")
    mult = {None: 1, "B": 1, "K": KIB, "KiB": KIB, "M": MIB, "MiB": MIB, "G": 1 << 30, "GiB": 1 << 30}
    return int(float(m.group(1)) * mult[m.group(2)])


def parse_args():
    p = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(__doc__)
        sys.exit(0)
    p.add_argument("--sluice", required=True)
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--users", type=int)
    p.add_argument("--actions", type=int)
    p.add_argument("--think", type=float, nargs=2, metavar=("MIN", "MAX"))
    p.add_argument("--join-interval", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=363)
    p.add_argument("--max-size", type=parse_size, default=30 * MIB)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--verify-every", type=int, default=10)
    p.add_argument("--out")
    p.add_argument("--png")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--keep-files", action="store_true")
    a = p.parse_args()
    q = a.quick
    a.users = a.users if a.users is not None else (40 if q else 250)
    a.actions = a.actions if a.actions is not None else (8 if q else 40)
    a.think = a.think or ([0.5, 1.5] if q else [2.0, 6.0])
    if a.users < 1 or a.actions < 1 or a.rounds < 1 or a.max_size < KIB or not 0 <= a.think[0] <= a.think[1]:
        p.error("need --users, --actions, --rounds >= 1, --max-size >= 1KiB, 0 <= think MIN <= MAX")
    return a


# ---------------------------------------------------------------- schedule (seeded, server-independent)
def build_schedule(a):
    """Per user: (User-Agent, [(think_before_s, kind, params)]). Runtime choices among recent
    files use pre-drawn fractions, so both servers get the same draws."""
    import random
    rng = random.Random(a.seed)
    users = []
    for u in range(a.users):
        ua = rng.choice(AGENTS)
        acts = []
        for k in range(a.actions):
            think = rng.uniform(*a.think) if k else 0.0
            x = rng.random()
            if x < 0.70:
                y, acc = rng.random(), 0.0
                for share, cat, lo, hi, ext in CATEGORIES:
                    acc += share
                    if y < acc:
                        break
                size = min(rng.randint(lo, hi), a.max_size)
                path = f"{rng.getrandbits(128):032x}/{cat}-{u}-{k}.{ext}"
                peers = [(rng.uniform(0, PEER_JITTER), rng.choice(AGENTS)) for _ in range(rng.randint(1, 5))]
                acts.append((think, "send", (path, size, cat, rng.randrange(SLACK), peers)))
            elif x < 0.95:
                acts.append((think, "fetch", rng.random()))
            else:
                acts.append((think, "resume", (rng.random(), rng.uniform(0.1, 0.9))))
        users.append((ua, acts))
    return users


def mac(path, size):
    return benchlib.mac(SECRET, path, size)


# ---------------------------------------------------------------- minimal HTTP/1.1 client
class HttpError(Exception):
    pass


async def request(port, method, target, ua, body=None, extra=(), hasher=None, stop_at=None):
    """One request on its own connection. Returns (status, headers, body bytes read, declared
    length). With stop_at, stops reading after that many body bytes and aborts the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=RCHUNK)
    got, length = 0, None
    try:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.transport.set_write_buffer_limits(high=2 * WCHUNK)
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"User-Agent: {ua}",
                 "Connection: close", *extra]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if body is not None:
            for i in range(0, len(body), WCHUNK):
                writer.write(body[i:i + WCHUNK])
                await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        first, *rest = head[:-4].decode("latin-1").split("\r\n")
        parts = first.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"bad status line {first!r}")
        status = int(parts[1])
        hdrs = {}
        for line in rest:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if method == "HEAD" or status in (204, 304) or status < 200:
            length = 0
        elif "content-length" in hdrs:
            length = int(hdrs["content-length"])
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            while True:  # only small (error) bodies come chunked; count them, keep nothing
                n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if n == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return status, hdrs, got, got
                data = await reader.readexactly(n + 2)
                got += n
                if hasher:
                    hasher.update(data[:-2])
        want = length if stop_at is None or length is None else min(length, stop_at)
        while want is None or got < want:
            chunk = await reader.read(RCHUNK if want is None else min(RCHUNK, want - got))
            if not chunk:
                break
            got += len(chunk)
            if hasher:
                hasher.update(chunk)
        return status, hdrs, got, length if length is not None else got
    finally:
        if stop_at is not None and length is not None and got < length:
            writer.transport.abort()  # a dropped mobile connection: RST with data unread
        else:
            writer.close()


NET_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError, ValueError)


# ---------------------------------------------------------------- servers
def proc_stat(pid):
    """(utime, stime) ticks and (VmRSS, VmHWM) bytes of one process; zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        mem = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    mem[line[:5]] = int(line.split()[1]) * KIB
        return int(fields[11]), int(fields[12]), mem.get("VmRSS", 0), mem.get("VmHWM", 0)
    except (OSError, IndexError, ValueError):
        return 0, 0, 0, 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def probe(port, path, want=200):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path)
        ok = c.getresponse().status == want
        c.close()
        return ok
    except OSError:
        return False


class Server:
    name, put_ok = "?", (201,)

    def __init__(self, binary, work, rnd):
        self.binary, self.dir, self.port, self.proc = binary, os.path.join(work, f"{self.name}-r{rnd}"), benchlib.free_port(), None
        os.makedirs(self.dir)

    def launch(self, cmd, ready_path, env=None):
        self.log = open(os.path.join(self.dir, "stdout.log"), "wb")
        print("$ " + shlex.join(cmd), flush=True)
        # Own session: a Ctrl-C reaches this script only, which stops the server itself.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        for _ in range(100):
            if probe(self.port, ready_path):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not become ready on port {self.port} (see {self.dir})")

    def pids(self):
        return [self.proc.pid]

    def stat(self):
        """utime, stime (ticks), RSS, HWM (bytes), summed over the server's processes."""
        return [sum(v) for v in zip(*(proc_stat(p) for p in self.pids()))]

    def remove(self, path):
        full = self.stored(path)
        try:
            os.unlink(full)
            os.rmdir(os.path.dirname(full))
        except OSError:
            pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()


class Nginx(Server):
    name, put_ok = "nginx", (201, 204)

    def start(self):
        if "http_dav_module" not in subprocess.run([self.binary, "-V"], capture_output=True, text=True).stderr:
            raise SystemExit(f"{self.binary} lacks http_dav_module (needed for PUT)")
        for d in ("www/upload", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        with open(os.path.join(self.dir, "www/upload/probe.txt"), "w") as f:
            f.write("ok\n")
        conf = open(os.path.join(HERE, "nginx.conf.in")).read()
        conf = conf.replace("@WORK@", self.dir).replace("@PORT@", str(self.port))
        conf = conf.replace("@USER@", "user root root;" if os.getuid() == 0 else "")
        cfg = os.path.join(self.dir, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(conf)
        cmd = [self.binary, "-p", self.dir, "-c", cfg, "-e", os.path.join(self.dir, "error.log")]
        t = subprocess.run(cmd[:1] + ["-t", "-q"] + cmd[1:], capture_output=True, text=True)
        if t.returncode:
            raise SystemExit(f"nginx -t failed: {t.stderr}")
        self.launch(cmd, "/upload/probe.txt")

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stored(self, path):
        return os.path.join(self.dir, "www/upload", path)

    def complaints(self):
        try:
            lines = [l.rstrip() for l in open(os.path.join(self.dir, "error.log"))
                     if re.search(r"\[(error|crit|alert|emerg)\]", l)]
        except OSError:
            lines = []
        return lines, []


class Sluice(Server):
    name = "sluice"

    def start(self, max_size):
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'[server]\nlisten = ["127.0.0.1:{self.port}"]\nurl_prefix = "/upload"\n\n'
                    f'[storage]\ndir = "{self.dir}/store"\ndurability = "none"\n'
                    + (f'max_file_size = "{max_size}B"\n' if max_size > 100 * MIB else "")
                    + f'\n[[auth.keys]]\nid = "bench"\nsecret = "{SECRET}"\n')
        t = subprocess.run([self.binary, "check-config", cfg], capture_output=True, text=True)
        if t.returncode:
            raise SystemExit(f"sluice check-config failed: {t.stderr}")
        self.launch([self.binary, "--config", cfg], "/health", env=dict(os.environ, SLUICE_LOG="warn"))
        print(f"  (env SLUICE_LOG=warn; config {cfg}: " + open(cfg).read().replace("\n", " ").strip() + ")")

    def stored(self, path):
        return os.path.join(self.dir, "store/files", path)

    def complaints(self):
        try:
            lines = [l.rstrip() for l in open(os.path.join(self.dir, "stdout.log"), errors="replace")
                     if re.search(r"WARN|ERROR", l)]
        except OSError:
            lines = []
        fivexx = []
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            fivexx = [l for l in text.splitlines() if l.startswith("sluice_http_requests_total") and "5xx" in l
                      and not l.rstrip().endswith(" 0")]
        except OSError as e:
            fivexx = [f"(metrics not readable: {e})"]
        return lines, fivexx


# ---------------------------------------------------------------- one server phase
class File:
    __slots__ = ("path", "size", "body", "cat", "pins", "readers", "sha", "gone")

    def __init__(self, path, size, body, cat):
        self.path, self.size, self.body, self.cat = path, size, body, cat
        self.pins = self.readers = 0
        self.sha, self.gone = None, False

    async def digest(self):
        if self.sha is None:
            self.sha = await asyncio.to_thread(lambda: hashlib.sha256(self.body).hexdigest())
        return self.sha


def machine_user_ticks():
    with open("/proc/stat") as f:
        v = f.readline().split()
    return int(v[1]) + int(v[2]) + int(v[8])  # user + nice + steal, as compare.sh counts


class Phase:
    def __init__(self, srv, schedule, a, data, rnd):
        self.srv, self.schedule, self.a, self.data, self.rnd = srv, schedule, a, data, rnd
        self.label = f"{srv.name} r{rnd}" if a.rounds > 1 else srv.name
        self.recent, self.videos = collections.deque(), collections.deque()
        self.lat = {op: [] for op in OPS}
        self.nerr = collections.Counter()
        self.mib = collections.Counter()
        self.events = []  # (t_end_s, ms) of every successful operation, in completion order
        self.errors = []
        # (t_s, server utime+stime ticks, rss, hwm, client cpu s, machine user ticks, server utime
        # ticks, client user s)
        self.samples = []
        self.lags = []
        self.peer_tasks = set()
        self.gets = self.skipped = self.cancelled = 0
        self.deadline_hit = False

    # -- bookkeeping
    def record(self, op, t0, ok, nbytes=0, msg=None):
        t1 = time.perf_counter()
        if ok:
            self.lat[op].append((t1 - t0) * 1000)
            self.events.append((t1 - self.t0, (t1 - t0) * 1000))
            self.mib[op] += nbytes / MIB
        else:
            self.nerr[op] += 1
            if len(self.errors) < 40:
                self.errors.append(f"{op} at t={t1 - self.t0:.1f}s: {msg}")

    def fail(self, op, t0, e):
        self.record(op, t0, False, msg=f"{type(e).__name__}: {e}" if isinstance(e, BaseException) else e)

    def pin(self, q, f, cap):
        q.append(f)
        f.pins += 1
        if len(q) > cap:
            old = q.popleft()
            old.pins -= 1
            self.release(old)

    def release(self, f):
        if not self.a.keep_files and f.pins == 0 and f.readers == 0 and not f.gone:
            f.gone = True
            self.srv.remove(f.path)

    # -- actions
    async def send(self, ua, p):
        path, size, cat, off, peers = p
        f = File(path, size, self.data[off:off + size], cat)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.a.timeout):
                st, _, _, _ = await request(self.srv.port, "PUT", f"/upload/{path}?v={mac(path, size)}", ua, body=f.body)
        except NET_ERRORS as e:
            return self.fail("put", t0, f"PUT {path} ({size} B): {type(e).__name__}: {e}")
        if st not in self.srv.put_ok:
            return self.fail("put", t0, f"PUT {path} ({size} B): HTTP {st}")
        self.record("put", t0, True, size)
        self.pin(self.recent, f, RECENT)
        if cat == "video":
            self.pin(self.videos, f, RECENT_VIDEOS)
        for delay, pua in peers:
            f.readers += 1
            t = asyncio.create_task(self.get("get-peer", f, pua, delay))
            self.peer_tasks.add(t)
            t.add_done_callback(self.peer_done)

    def peer_done(self, t):
        self.peer_tasks.discard(t)
        if not t.cancelled() and t.exception():
            self.internal(t.exception())

    def internal(self, e):
        """A bug in this script is a failure, never a silent gap."""
        self.errors.append("internal: " + "".join(traceback.format_exception(e)).strip())
        self.nerr["internal"] += 1

    async def get(self, op, f, ua, delay=0.0, cut=None):
        """GET f whole, or (cut) the first `cut` bytes, a dropped connection, then the rest with
        Range. The caller has counted f.readers up; this counts it down."""
        try:
            if delay:
                await asyncio.sleep(delay)
            self.gets += 1
            hasher = hashlib.sha256() if cut is not None or (self.a.verify_every and self.gets % self.a.verify_every == 0) else None
            t0 = time.perf_counter()
            target = f"/upload/{f.path}"
            try:
                async with asyncio.timeout(self.a.timeout):
                    if cut is None:
                        st, _, got, length = await request(self.srv.port, "GET", target, ua, hasher=hasher)
                        if st != 200 or got != f.size or length != f.size:
                            return self.fail(op, t0, f"GET {f.path}: HTTP {st}, {got} of {length} bytes read, want 200 and {f.size}")
                    else:
                        st, _, got, length = await request(self.srv.port, "GET", target, ua, hasher=hasher, stop_at=cut)
                        if st != 200 or got != cut or length != f.size:
                            return self.fail(op, t0, f"GET {f.path} (to drop at {cut}): HTTP {st}, {got} bytes read of {length}, size {f.size}")
                        want_cr = f"bytes {cut}-{f.size - 1}/{f.size}"
                        st, h, got, length = await request(self.srv.port, "GET", target, ua, extra=[f"Range: bytes={cut}-"], hasher=hasher)
                        if st != 206 or h.get("content-range") != want_cr or got != f.size - cut or length != f.size - cut:
                            return self.fail(op, t0, f"GET {f.path} Range bytes={cut}-: HTTP {st}, Content-Range {h.get('content-range')!r} "
                                                     f"(want {want_cr!r}), {got} of {length} bytes, want {f.size - cut}")
            except NET_ERRORS as e:
                return self.fail(op, t0, f"GET {f.path}{'' if cut is None else f' (resume at {cut})'}: {type(e).__name__}: {e}")
            t1 = time.perf_counter()
            if hasher and hasher.hexdigest() != await f.digest():
                return self.fail(op, t0, f"GET {f.path}{'' if cut is None else f' (resumed at {cut})'}: SHA-256 mismatch")
            self.lat[op].append((t1 - t0) * 1000)
            self.events.append((t1 - self.t0, (t1 - t0) * 1000))
            self.mib[op] += f.size / MIB
        finally:
            f.readers -= 1
            self.release(f)

    async def user(self, uid, ua, acts):
        await asyncio.sleep(max(0.0, self.t0 + uid * self.a.join_interval - time.perf_counter()))
        for think, kind, p in acts:
            if think:
                await asyncio.sleep(think)
            if kind == "send":
                await self.send(ua, p)
                continue
            if kind == "fetch":
                pool, frac, cut = self.recent, p, None
            else:
                frac, cut_frac = p
                pool = self.videos or self.recent
            if not pool:
                self.skipped += 1
                continue
            f = pool[min(int(frac * len(pool)), len(pool) - 1)]
            if kind == "resume":
                cut = max(1, min(f.size - 1, int(f.size * cut_frac)))
            f.readers += 1
            await self.get("get-recent" if kind == "fetch" else "resume", f, ua, cut=cut)

    # -- measurement
    def sample(self):
        ut, st, rss, hwm = self.srv.stat()
        c = os.times()
        self.samples.append((time.perf_counter() - self.t0, ut + st, rss, hwm, c.user + c.system,
                             machine_user_ticks(), ut, c.user))

    async def sampler(self):
        nxt = time.perf_counter()
        while True:
            self.sample()
            s = self.samples[-1]
            if len(self.samples) % 20 == 1 and len(self.samples) > 1:
                done = sum(len(v) for v in self.lat.values())
                print(f"  [{self.label}] t={s[0]:5.0f}s  ops done {done}, failed {sum(self.nerr.values())}, "
                      f"RSS {s[2] / MIB:.1f} MiB", flush=True)
            nxt += 0.5
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            self.lags.append(max(0.0, time.perf_counter() - nxt) * 1000)

    async def run(self, deadline):
        self.t0 = time.perf_counter()
        sampler = asyncio.create_task(self.sampler())
        users = [asyncio.create_task(self.user(i, ua, acts)) for i, (ua, acts) in enumerate(self.schedule)]
        _, pending = await asyncio.wait(users, timeout=max(0.0, deadline - time.time()))
        if not pending and self.peer_tasks:
            await asyncio.wait(set(self.peer_tasks), timeout=max(0.0, deadline - time.time()))
        left = pending | set(self.peer_tasks)
        if left:
            self.deadline_hit, self.cancelled = True, len(left)
            for t in left:
                t.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        self.t_end = time.perf_counter()
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        self.sample()
        for t in users:
            if not t.cancelled() and t.exception():
                self.internal(t.exception())

    def summary(self):
        s0, s1 = self.samples[0], self.samples[-1]
        wall = max(1e-9, self.t_end - self.t0)
        ncpu = os.cpu_count() or 1
        # Other processes: user ticks of the machine minus the server's and the client's (kernel
        # time is left out: writeback of the uploads would count as someone else's).
        other = ((s1[5] - s0[5]) / HZ - (s1[6] - s0[6]) / HZ - (s1[7] - s0[7])) / (wall * ncpu) * 100
        lags = sorted(self.lags)
        return {"wall": wall, "cpu": (s1[1] - s0[1]) / HZ / wall * 100, "hwm": max(s[3] for s in self.samples),
                "client": (s1[4] - s0[4]) / wall * 100, "other": max(0.0, other),
                "lag99": pct(lags, 99) or 0.0, "lagmax": lags[-1] if lags else 0.0}


# ---------------------------------------------------------------- report
def pct(v, p):
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)] if v else None


def ms(x):
    return "n/a" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def ratio(a, b):
    return f"{b / a:.2f}" if a and b is not None else "n/a"


def server_stats(phases):
    """Pool a server's rounds: per op (count, errors, p50, p90, p99, max, MiB) + run figures."""
    ops = {}
    for op in OPS:
        v = sorted(x for ph in phases for x in ph.lat[op])
        err = sum(ph.nerr[op] for ph in phases)
        ops[op] = (len(v) + err, err, pct(v, 50), pct(v, 90), pct(v, 99), v[-1] if v else None,
                   sum(ph.mib[op] for ph in phases))
    sums = [ph.summary() for ph in phases]
    med = lambda k: sorted(s[k] for s in sums)[len(sums) // 2]
    run = {k: med(k) for k in ("wall", "cpu", "client", "other", "lag99")}
    run.update(hwm=max(s["hwm"] for s in sums), lagmax=max(s["lagmax"] for s in sums),
               failed=sum(sum(ph.nerr.values()) for ph in phases), skipped=sum(ph.skipped for ph in phases),
               cancelled=sum(ph.cancelled for ph in phases), deadline=any(ph.deadline_hit for ph in phases),
               errors=[e for ph in phases for e in ph.errors])
    return ops, run


def report(a, phases, facts):
    out = []
    stats = {}
    for name in ("nginx", "sluice"):
        mine = [ph for ph in phases if ph.srv.name == name]
        if not mine:
            continue
        ops, run = stats[name] = server_stats(mine)
        out += [f"### {name}" + (f" ({len(mine)} rounds pooled)" if len(mine) > 1 else ""), "",
                "| op | count | errors | p50 ms | p90 ms | p99 ms | max ms | MiB moved |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for op, (n, err, p50, p90, p99, mx, mib) in ops.items():
            out.append(f"| {op} | {n} | {err} | {ms(p50)} | {ms(p90)} | {ms(p99)} | {ms(mx)} | {mib:,.0f} |")
        rss_note = "master + workers, summed" if name == "nginx" else "VmHWM"
        out += ["", f"- run {run['wall']:.0f} s{' (stopped at the deadline; ' + str(run['cancelled']) + ' tasks cancelled)' if run['deadline'] else ''}; "
                    f"server CPU {run['cpu']:.0f} % of one core; peak RSS {run['hwm'] / MIB:.1f} MiB ({rss_note})",
                f"- client CPU {run['client']:.0f} % of one core, event-loop lag p99 {run['lag99']:.0f} ms / max {run['lagmax']:.0f} ms; "
                f"other processes {run['other']:.0f} % of the CPUs; actions skipped (nothing sent yet) {run['skipped']}"]
        if run["lag99"] > 250:
            out.append("- WARNING: the client's event loop lagged: latencies include client delay")
        if run["other"] > 10:
            out.append(f"- WARNING: other processes used {run['other']:.0f} % of the CPUs during this run: "
                       "compare on a quiet machine")
        if run["errors"]:
            out += ["", "<details><summary>failures (first 40)</summary>", ""] + [f"- {e}" for e in run["errors"][:40]] + ["", "</details>"]
        out.append("")
    if len(stats) == 2:
        (no, nr), (so, sr) = stats["nginx"], stats["sluice"]
        out += ["### side by side", "", "| metric | nginx | sluice | ratio sluice/nginx |", "|---|---:|---:|---:|"]
        for op in OPS:
            for i, p in ((2, "p50"), (3, "p90"), (4, "p99")):
                out.append(f"| {op} {p} ms | {ms(no[op][i])} | {ms(so[op][i])} | {ratio(no[op][i], so[op][i])} |")
        out += [f"| server CPU, % of one core | {nr['cpu']:.1f} | {sr['cpu']:.1f} | {ratio(nr['cpu'], sr['cpu'])} |",
                f"| peak RSS MiB | {nr['hwm'] / MIB:.1f} | {sr['hwm'] / MIB:.1f} | {ratio(nr['hwm'], sr['hwm'])} |",
                f"| failed requests | {nr['failed']} | {sr['failed']} | |", "",
                "Lower is better everywhere. Latency: connect to last body byte, own connection per request.", ""]
    text = "\n".join(facts + [""] + out)
    print("\n" + text, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"## Chat load: Sluice vs nginx ({'quick' if a.quick else 'full'}, {time.strftime('%Y-%m-%d', time.gmtime())})\n\n{text}\n")
        print(f"markdown written to {a.out}")


def windows(ph, width=5.0, step=1.0):
    ev = ph.events[:]
    ev.sort()
    ts = [e[0] for e in ev]
    xs, rows = [], []
    t = step
    end = ph.t_end - ph.t0
    while t <= end + step:
        lo, hi = bisect.bisect_right(ts, t - width), bisect.bisect_right(ts, t)
        v = sorted(e[1] for e in ev[lo:hi])
        if v:
            xs.append(t)
            rows.append((pct(v, 50), pct(v, 90), pct(v, 99)))
        t += step
    return xs, rows


def plot(a, phases):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no PNG (pip install matplotlib)")
        return
    colour = {"nginx": "tab:green", "sluice": "tab:orange"}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for ph in phases:
        xs, rows = windows(ph)
        for i, (p, style) in enumerate((("p50", "-"), ("p90", "--"), ("p99", ":"))):
            ax1.plot(xs, [r[i] for r in rows], style, color=colour[ph.srv.name], lw=1.3,
                     label=f"{ph.label} {p}", alpha=1.0 if ph.rnd == 1 else 0.5)
        ax2.plot([s[0] for s in ph.samples], [s[2] / MIB for s in ph.samples], color=colour[ph.srv.name],
                 label=f"{ph.label} RSS" + (" (master + workers)" if ph.srv.name == "nginx" else ""),
                 alpha=1.0 if ph.rnd == 1 else 0.5)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency, ms (all ops, sliding 5 s window)")
    ax1.set_title(f"chat load: {a.users} users x {a.actions} actions, think {a.think[0]:g}-{a.think[1]:g} s, seed {a.seed}")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8, ncol=2)
    ax2.set_ylabel("RSS, MiB")
    ax2.set_xlabel("seconds since the first user joined")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)
    print(f"PNG written to {a.png}")


# ---------------------------------------------------------------- main
def facts_lines(a, sluice_bin, nginx_bin, work):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    ver = subprocess.run([sluice_bin, "--version"], capture_output=True, text=True).stdout.strip()
    sha = hashlib.sha256(open(sluice_bin, "rb").read()).hexdigest()[:12]
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(sluice_bin)))
    ngv = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip().splitlines()[0]
    fs = subprocess.run(["df", "-PT", work], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    return [
        "$ " + shlex.join(["python3"] + sys.argv),
        "",
        f"- workload: {a.users} users joining {a.join_interval:g} s apart, {a.actions} actions each, think "
        f"{a.think[0]:g}-{a.think[1]:g} s, seed {a.seed}, files capped at {a.max_size / MIB:g} MiB, "
        f"SHA-256 on every resume and every {a.verify_every}th other GET; rounds {a.rounds} (nginx, then sluice)",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem / 1048576:.1f} GiB RAM, kernel {os.uname().release}; "
        f"temp dir filesystem: {fs}",
        f"- sluice: {ver} ({sluice_bin}, built {built}, sha256 {sha}), durability none, SLUICE_LOG=warn",
        f"- {ngv}, worker_processes auto, sendfile on, access_log off, dav PUT; client: Python {sys.version.split()[0]} asyncio",
    ]


def on_sigterm(*_):
    raise KeyboardInterrupt  # the same cleanup as Ctrl-C


def main():
    a = parse_args()
    if sys.version_info < (3, 11):
        sys.exit("needs Python 3.11 or newer (asyncio.timeout)")
    sluice_bin = os.path.realpath(a.sluice)
    if not os.access(sluice_bin, os.X_OK):
        sys.exit(f"not an executable: {a.sluice}")
    if not shutil.which(a.nginx):
        sys.exit(f"nginx not found: {a.nginx}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # each request has its own socket
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ValueError, OSError):
        print(f"note: open-file limit stays at {soft}")
    signal.signal(signal.SIGTERM, on_sigterm)
    t_start, deadline = time.time(), time.time() + a.max_seconds
    work = tempfile.mkdtemp(prefix="sluice-chat.")
    schedule = build_schedule(a)
    sends = sum(1 for _, acts in schedule for x in acts if x[1] == "send")
    print(f"schedule: {a.users} users x {a.actions} actions ({sends} sends, "
          f"{sum(x[2][1] for _, acts in schedule for x in acts if x[1] == 'send') / MIB:,.0f} MiB uploaded per server); work dir {work}",
          flush=True)
    data = memoryview(os.urandom(a.max_size + SLACK))
    facts = facts_lines(a, sluice_bin, a.nginx, work)
    phases, failed, srv, rc = [], 0, None, 0
    try:
        order = [(r, n) for r in range(1, a.rounds + 1) for n in ("nginx", "sluice")]
        for i, (rnd, name) in enumerate(order):
            left = deadline - time.time()
            if left <= 1:
                print(f"global deadline reached: {name} round {rnd} not run")
                break
            phase_deadline = time.time() + left / (len(order) - i)
            print(f"\n== {name}" + (f" (round {rnd})" if a.rounds > 1 else ""), flush=True)
            srv = Nginx(a.nginx, work, rnd) if name == "nginx" else Sluice(sluice_bin, work, rnd)
            srv.start(*(() if name == "nginx" else (a.max_size,)))
            ph = Phase(srv, schedule, a, data, rnd)
            asyncio.run(ph.run(phase_deadline))
            logs, fivexx = srv.complaints()
            if srv.proc.poll() is not None:
                ph.errors.append(f"{name} exited during the run (code {srv.proc.returncode})")
                ph.nerr["exited"] += 1
            print(f"  {name}: {sum(len(v) for v in ph.lat.values())} operations ok, {sum(ph.nerr.values())} failed, "
                  f"{ph.t_end - ph.t0:.0f} s; server log: {len(logs)} complaint line(s)")
            for line in logs[:10]:
                print("    | " + line)
            if fivexx:
                ph.errors.append(f"{name} answered 5xx: " + "; ".join(fivexx))
                ph.nerr["5xx"] += 1
            srv.stop()
            srv = None
            phases.append(ph)
            failed += sum(ph.nerr.values())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        rc = 130
    finally:
        if srv:
            srv.stop()
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if rc:
        sys.exit(rc)
    facts.append(f"- run time: {time.time() - t_start:.0f} s")
    report(a, phases, facts)
    if a.png and phases:
        plot(a, phases)
    if failed:
        print(f"FAILED: {failed} failed request(s) or server problem(s), see above")
        sys.exit(1)
    cut = any(ph.deadline_hit for ph in phases) or len(phases) < 2 * a.rounds
    print("OK: no request failed" + (" (the run was cut short by --max-seconds)" if cut else ""))


if __name__ == "__main__":
    main()
