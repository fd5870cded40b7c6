#!/usr/bin/env python3
"""Adaptive I/O against fixed buffer sizes, on loopback and on shaped links (run as root).

    python3 benches/shaped.py SLUICE_BINARY [--quick] [--rounds N] [--out FILE]
                              [--links loopback,1000mbit,100mbit,10mbit] [--only single,small,many]
                              [--engines adaptive,fixed-32K,...] [--budget MINUTES]

Engines (one Sluice per measurement, fresh temp dir, durability = "none", SLUICE_LOG=warn):
  adaptive     the default [engine] (adaptive sizing over the tiers 16K/64K/256K/1M)
  fixed-SIZE   [engine] mode = "fixed", fixed_buffer = SIZE, with tiers 16K/32K/64K/256K/1M
               (32KiB is the seed's buffer; fixed mode needs it among the tiers)
  Default: adaptive and fixed 16K, 32K, 64K, 256K, 1M; --quick: adaptive, fixed-32K, fixed-1M.
  The 40-slow case always runs adaptive, fixed-32K and fixed-1M.

Links:
  loopback     client and server on 127.0.0.1, no shaping
  Nmbit        a veth pair between the root namespace (server on 10.77.0.1) and the namespace
               "sluice-shaped" (curl on 10.77.0.2, through `ip netns exec`), each end's egress
               shaped with `tbf rate N mbit burst max(32KiB, 1 ms) latency 50ms` (so uploads
               and downloads both see the rate). Set up and torn down by this script (also on
               SIGINT/SIGTERM, which report what was measured); leftovers of an earlier run are
               removed first.

Cases (curl clients; every status and size is checked, any error aborts the run):
  single       one client (User-Agent curl/8.0): one PUT, then one GET, of a large file sized to
               take a few seconds at the link rate (loopback 2 GiB, 1000mbit 256 MiB, 100mbit
               64 MiB, 10mbit 8 MiB; --quick: 256, 48, 8 and 1 MiB)
  small        one client (curl/8.0): 256 KiB files one after the other on one connection
               (8 to 256 of them, by link rate)
  many         40 concurrent curl processes sharing the 100 Mbit link, 4 MiB each (--quick:
               768 KiB), uploads then downloads (separately), for each User-Agent: curl/8.0
               ("server" strategy), Firefox ("desktop"), Conversations ("mobile")
PUTs go without `Expect: 100-continue` (curl would otherwise wait for the interim response).
Downloads are seeded through an unshaped connection, then the server is restarted on the same
data directory, so the measured process (its CPU time and VmHWM) only served the downloads.

Measures per run: throughput in MB/s (10^6 bytes; bytes over the sum of curl's time_total for
one client, aggregate bytes over wall time for the 40), server CPU seconds per GiB moved (the
process's threads' schedstat run time, in ns; utime+stime ticks if a thread exited meanwhile),
peak RSS (VmHWM of a server that did nothing else), idle RSS after start, peak leased pool bytes
(sluice_pool_in_use_bytes sampled every 200 ms) and the mean engine buffer
(sluice_engine_buffer_size_bytes sum/count). Ratios within ±5 % count as ties.
--rounds N repeats every measurement N times (rounds interleaved) and reports medians; one round
on a 2-CPU machine leaves loopback figures noisy (±30 %), the shaped links much less so.
--budget (default 45 min, --quick 3) bounds the total time: runs that would start after it are
skipped and listed; every curl has a --max-time of 6× its time at the link rate + 20 s (≥ 60 s).
--quick uses smaller files and fewer engines and finishes in about two minutes.
Prints markdown; --out also writes it to FILE. Python standard library only.
"""
import argparse
import hashlib
import http.client
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import benchlib

SECRET = "shaped-bench-secret-0123456789"
KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
NS, VETH_ROOT, VETH_NS = "sluice-shaped", "slsh0", "slsh1"
ROOT_IP, NS_IP = "10.77.0.1", "10.77.0.2"
TIERS = '["16KiB", "32KiB", "64KiB", "256KiB", "1MiB"]'
FIXED = {"fixed-16K": "16KiB", "fixed-32K": "32KiB", "fixed-64K": "64KiB", "fixed-256K": "256KiB", "fixed-1M": "1MiB"}
UAS = [
    ("server", "curl/8.0"),
    ("desktop", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"),
    ("mobile", "Conversations/2.13.4"),
]
SINGLE_UA = "curl/8.0"
MANY_N, MANY_LINK = 40, "100mbit"
# Large file per link: (full, quick). A few seconds at the link rate.
SINGLE_SIZE = {"loopback": (2048 * MIB, 256 * MIB), "1000mbit": (256 * MIB, 48 * MIB),
               "100mbit": (64 * MIB, 8 * MIB), "10mbit": (8 * MIB, 1 * MIB)}
SMALL_SIZE = 256 * KIB
SMALL_N = {"loopback": (256, 64), "1000mbit": (128, 32), "100mbit": (48, 12), "10mbit": (8, 4)}
MANY_SIZE = (4 * MIB, 768 * KIB)
TBF_LATENCY = "50ms"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(args, check=True):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def human(n):
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n // KIB} KiB"


def link_rate(link):
    """Link rate in bit/s, None for loopback."""
    if link == "loopback":
        return None
    m = re.fullmatch(r"(\d+)mbit", link)
    if not m:
        raise SystemExit(f"unknown link {link!r} (loopback or <N>mbit)")
    return int(m.group(1)) * 1_000_000


# ---------------------------------------------------------------- network namespace and tbf

class Net:
    """The veth pair into NS; shape() sets the tbf on both ends' egress."""

    def __init__(self):
        self.up = False
        self.rate = None

    @staticmethod
    def teardown():
        sh(["ip", "netns", "del", NS], check=False)  # takes the ns end (and so the pair) along
        sh(["ip", "link", "del", VETH_ROOT], check=False)

    def setup(self):
        self.teardown()
        routes = sh(["ip", "-4", "route", "show", "to", "match", ROOT_IP]).stdout
        if re.search(r"^10\.77\.0\.", routes, re.M):
            raise RuntimeError(f"10.77.0.0/24 is already routed here: {routes.strip()}")
        sh(["ip", "netns", "add", NS])
        self.up = True
        sh(["ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_NS, "netns", NS])
        sh(["ip", "addr", "add", f"{ROOT_IP}/24", "dev", VETH_ROOT])
        sh(["ip", "link", "set", VETH_ROOT, "up"])
        sh(["ip", "-n", NS, "addr", "add", f"{NS_IP}/24", "dev", VETH_NS])
        sh(["ip", "-n", NS, "link", "set", VETH_NS, "up"])
        sh(["ip", "-n", NS, "link", "set", "lo", "up"])

    @staticmethod
    def tbf_args(rate):
        # burst: 1 ms at the rate, at least 32 KiB. Smaller buckets cost a single 1 Gbit/s flow
        # 10-20 % here (tbf splits GSO packets larger than the bucket); larger ones let a small
        # file pass unshaped after an idle moment.
        burst = max(32 * KIB, rate // 8 // 1000)
        return ["tbf", "rate", f"{rate // 1_000_000}mbit", "burst", str(burst), "latency", TBF_LATENCY]

    def shape(self, rate):
        if rate == self.rate:
            return
        sh(["tc", "qdisc", "replace", "dev", VETH_ROOT, "root"] + self.tbf_args(rate))
        sh(["tc", "-n", NS, "qdisc", "replace", "dev", VETH_NS, "root"] + self.tbf_args(rate))
        self.rate = rate

    @staticmethod
    def describe(rate):
        return " ".join(Net.tbf_args(rate))


# ---------------------------------------------------------------- Sluice

def engine_toml(engine):
    if engine == "adaptive":
        return ""
    return f'[engine]\nmode = "fixed"\ntiers = {TIERS}\nfixed_buffer = "{FIXED[engine]}"\n'


class Server:
    def __init__(self, binary, engine, addr, workdir):
        self.addr, self.dir = addr, workdir
        self.port = benchlib.free_port(addr)
        cfg = os.path.join(workdir, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                f'[server]\nlisten = ["{addr}:{self.port}"]\nbody_idle_timeout = "30s"\n'
                f'[storage]\ndir = "{workdir}/data"\nmax_file_size = "2GiB"\ndurability = "none"\n'
                f'[[auth.keys]]\nsecret = "{SECRET}"\n{engine_toml(engine)}'
            )
        self.errlog = open(os.path.join(workdir, "server.log"), "ab")
        env = dict(os.environ, SLUICE_LOG="warn")
        self.proc = subprocess.Popen([binary, "--config", cfg], stdout=self.errlog, stderr=self.errlog, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited ({self.proc.returncode}) at start: {self.log_tail()}")
            try:
                c = http.client.HTTPConnection(addr, self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sluice did not start within 20 s")

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "server.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def metrics(self):
        c = http.client.HTTPConnection(self.addr, self.port, timeout=5)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()

    def status_kib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def cpu_ticks(self):
        """utime+stime of the process (dead threads included), in seconds; 10 ms resolution."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_snapshot(self):
        """(ticks, {tid: ns on CPU}): per-thread schedstat has ns resolution but forgets threads
        that exit (idle blocking-pool threads); cpu_delta falls back to ticks when one did."""
        per = {}
        base = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    per[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return self.cpu_ticks(), per

    def cpu_delta(self, before):
        ticks0, per0 = before
        ticks1, per1 = self.cpu_snapshot()
        if not per0 or set(per0) - set(per1):
            return ticks1 - ticks0
        return sum(ns - per0.get(tid, 0) for tid, ns in per1.items()) / 1e9

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


def metric(text, name, labels=""):
    m = re.search(r"^" + re.escape(name) + re.escape(labels) + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def signed(path, size):
    return f"/{path}?v={benchlib.mac(SECRET, path, size)}"


# ---------------------------------------------------------------- clients

W_FMT = "%{http_code} %{size_upload} %{size_download} %{time_total}\\n"


def curl_cmd(netns, ua, max_time, base, items, direction, src):
    """One curl process doing `items` (path, size) transfers one after the other (keep-alive)."""
    cmd = (["ip", "netns", "exec", NS] if netns else []) + [
        "curl", "-sS", "--max-time", str(int(max_time)), "-A", ua, "-H", "Expect:", "-w", W_FMT]
    for path, size in items:
        if direction == "up":
            cmd += ["-T", src, "-o", "/dev/null", base + signed(path, size)]
        else:
            cmd += ["-o", "/dev/null", base + "/" + path]
    return cmd


def check_curl(proc_out, rc, items, direction, what):
    lines = proc_out[0].strip().splitlines()
    if rc != 0 or len(lines) != len(items):
        raise RuntimeError(f"{what}: curl exit {rc}, {len(lines)}/{len(items)} results; stderr: {proc_out[1].strip()[:500]}")
    secs = 0.0
    for line, (path, size) in zip(lines, items):
        code, up, down, t = line.split()
        want_code, got = ("201", int(up)) if direction == "up" else ("200", int(down))
        if code != want_code or got != size:
            raise RuntimeError(f"{what}: {path}: HTTP {code}, {got} of {size} bytes (want {want_code})")
        secs += float(t)
    return secs


def run_curls(cmds, items_per, direction, max_time, what):
    """Start every curl at once; wait; check; return (wall seconds, sum of curl time_total)."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max_time + 30))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - t0
    curl_secs = sum(check_curl(o, p.returncode, items, direction, what) for o, p, items in zip(outs, procs, items_per))
    return wall, curl_secs


class Sampler(threading.Thread):
    def __init__(self, srv):
        super().__init__(daemon=True)
        self.srv, self.stop_ev, self.pool = srv, threading.Event(), 0.0

    def run(self):
        while not self.stop_ev.is_set():
            try:
                v = metric(self.srv.metrics(), "sluice_pool_in_use_bytes")
                self.pool = max(self.pool, v or 0.0)
            except OSError:
                pass
            self.stop_ev.wait(0.2)

    def finish(self):
        self.stop_ev.set()
        self.join()
        return self.pool


# ---------------------------------------------------------------- one measurement

class Bench:
    def __init__(self, args):
        self.args = args
        self.binary = os.path.abspath(args.binary)
        self.tmp = tempfile.mkdtemp(prefix="sluice-shaped-")
        self.net = Net()
        self.srcs = {}
        self.deadline = time.monotonic() + args.budget * 60
        self.skipped = []
        self.interrupted = False

    def src(self, size):
        """A client-side file of `size` bytes (random 16 MiB block repeated)."""
        if size not in self.srcs:
            path = os.path.join(self.tmp, f"src-{size}.bin")
            block = os.urandom(min(size, 16 * MIB))
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, len(block))
                    f.write(block[:n])
                    left -= n
            self.srcs[size] = path
        return self.srcs[size]

    def max_time(self, link, total_bytes):
        rate = link_rate(link) or 400_000_000  # loopback: assume >= 50 MB/s
        return max(60, 6 * total_bytes * 8 / rate + 20)

    def measure(self, case, link, engine, direction, ua, size, n_files, concurrent):
        """Start a Sluice, move n_files × size (concurrently or one after another), measure."""
        netns = link != "loopback"
        addr = ROOT_IP if netns else "127.0.0.1"
        if netns:
            self.net.shape(link_rate(link))
        work = tempfile.mkdtemp(prefix="run-", dir=self.tmp)
        items = [(f"{case}/{i}.bin", size) for i in range(n_files)]
        src = self.src(size)
        max_time = self.max_time(link, size * n_files)
        what = f"{case} {link} {engine} {direction} {ua[:12]}"
        srv = None
        try:
            if direction == "down":
                # Seed from the root namespace (unshaped), then measure a restarted server.
                seed = Server(self.binary, engine, addr, work)
                try:
                    cmds = [curl_cmd(False, "seed/1", max_time, f"http://{addr}:{seed.port}", items[i::8], "up", src)
                            for i in range(min(8, n_files))]
                    run_curls(cmds, [items[i::8] for i in range(min(8, n_files))], "up", max_time, what + " seed")
                finally:
                    seed.stop()
            srv = Server(self.binary, engine, addr, work)
            base = f"http://{addr}:{srv.port}"
            idle_rss = srv.status_kib("VmRSS") * KIB
            sampler = Sampler(srv)
            sampler.start()
            cpu0 = srv.cpu_snapshot()
            if concurrent:
                groups = [[it] for it in items]
            else:
                groups = [items]
            cmds = [curl_cmd(netns, ua, max_time, base, g, direction, src) for g in groups]
            wall, curl_secs = run_curls(cmds, groups, direction, max_time, what)
            cpu = srv.cpu_delta(cpu0)
            pool = sampler.finish()
            hwm = srv.status_kib("VmHWM") * KIB
            text = srv.metrics()
            dl = "download" if direction == "down" else "upload"
            bsum = metric(text, "sluice_engine_buffer_size_bytes_sum", f'{{direction="{dl}"}}')
            bcnt = metric(text, "sluice_engine_buffer_size_bytes_count", f'{{direction="{dl}"}}')
            stalls = metric(text, "sluice_engine_stalls_total", f'{{direction="{dl}"}}')
            if srv.proc.poll() is not None:
                raise RuntimeError(f"{what}: sluice died: {srv.log_tail()}")
            total = size * n_files
            secs = wall if concurrent else curl_secs
            return {
                "mbs": total / secs / 1e6,
                "cpu_gib": cpu / (total / GIB),
                "hwm": hwm, "idle": idle_rss, "pool": pool,
                "buf": (bsum / bcnt) if bsum is not None and bcnt else None,
                "stalls": stalls,
            }
        except Exception:
            if srv is not None:
                log(f"--- server log tail ({what}):\n{srv.log_tail()}")
            raise
        finally:
            if srv is not None:
                srv.stop()
            shutil.rmtree(work, ignore_errors=True)

    def plan(self):
        a, q = self.args, self.args.quick
        runs = []
        for link in a.links:
            if "single" in a.only:
                size = SINGLE_SIZE.get(link, (64 * MIB, 8 * MIB))[1 if q else 0]
                for engine in a.engines:
                    for d in ("up", "down"):
                        runs.append(("single", link, engine, d, SINGLE_UA, size, 1, False))
            if "small" in a.only:
                for engine in a.engines:
                    for d in ("up", "down"):
                        runs.append(("small", link, engine, d, SINGLE_UA, SMALL_SIZE, SMALL_N.get(link, (16, 4))[1 if q else 0], False))
        if "many" in a.only:
            for _, ua in UAS:
                for d in ("up", "down"):
                    for engine in ("adaptive", "fixed-32K", "fixed-1M"):
                        runs.append(("many", MANY_LINK, engine, d, ua, MANY_SIZE[1 if q else 0], MANY_N, True))
        return runs

    def run(self):
        runs = self.plan()
        if any(r[1] != "loopback" for r in runs):
            self.net.setup()
        results = {}
        total = len(runs) * self.args.rounds
        k = 0
        try:
            for rnd in range(self.args.rounds):
                for r in runs:
                    k += 1
                    if time.monotonic() > self.deadline:
                        self.skipped.append(r)
                        continue
                    t0 = time.monotonic()
                    m = self.measure(*r)
                    results.setdefault(r, []).append(m)
                    log(f"[{k}/{total}] round {rnd + 1} {r[0]} {r[1]} {r[2]} {r[3]} {r[4][:14]}: "
                        f"{m['mbs']:.1f} MB/s, {m['cpu_gib']:.2f} CPU s/GiB, HWM {m['hwm'] / MIB:.1f} MiB, "
                        f"pool {m['pool'] / MIB:.1f} MiB ({time.monotonic() - t0:.1f} s)")
        except KeyboardInterrupt as e:
            log(f"interrupted ({e or 'SIGINT'}) after {k - 1} of {total} runs; reporting what was measured")
            self.interrupted = True
        return runs, results

    def cleanup(self):
        if self.net.up:
            Net.teardown()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- report

def med(ms, key):
    vals = [m[key] for m in ms if m.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec=".1f", scale=1.0):
    return "–" if v is None else format(v / scale, spec)


def classify(ratio, higher_better=True, tol=0.05):
    if ratio is None:
        return "–"
    if not higher_better:
        ratio = 1 / ratio if ratio else float("inf")
    return "wins" if ratio > 1 + tol else "loses" if ratio < 1 - tol else "ties"


def ua_class(ua):
    return next(c for c, u in UAS if u == ua)


def report(bench, runs, results):
    args = bench.args
    out, verdicts, plain = [], [], []
    links = [l for l in args.links]

    # ---- single client, large file and small files
    for case, title in (("single", "One client, one large file"), ("small", f"One client, {SMALL_SIZE // KIB} KiB files one after another on one connection")):
        keys = [r for r in runs if r[0] == case and r in results]
        if not keys:
            continue
        out += [f"### {title} (User-Agent {SINGLE_UA})", "",
                "| link | dir | file | engine | MB/s | × best fixed | server CPU s/GiB | peak RSS MiB | peak pool MiB | mean buffer KiB |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        summary = ["", f"Adaptive against the fixed sizes ({case}):", "",
                   "| link | dir | adaptive MB/s | fixed-32K MB/s | best fixed (size) MB/s | adaptive / best | adaptive / 32K | CPU/GiB adaptive vs best | verdict (≥ 0.95× best) |",
                   "|---|---|---|---|---|---|---|---|---|"]
        for link in links:
            for d in ("up", "down"):
                rows = {r[2]: results[r] for r in keys if r[1] == link and r[3] == d}
                if not rows:
                    continue
                fixed = {e: med(ms, "mbs") for e, ms in rows.items() if e != "adaptive"}
                best_e = max(fixed, key=fixed.get) if fixed else None
                best = fixed.get(best_e)
                size = next(r[5] for r in keys if r[1] == link and r[3] == d)
                n = next(r[6] for r in keys if r[1] == link and r[3] == d)
                file_s = human(size) if n == 1 else f"{n} × {human(size)}"
                for e in args.engines:
                    if e not in rows:
                        continue
                    ms = rows[e]
                    mbs = med(ms, "mbs")
                    out.append(f"| {link} | {d} | {file_s} | {e} | {fmt(mbs)} | {fmt(mbs / best if best else None, '.2f')} | "
                               f"{fmt(med(ms, 'cpu_gib'), '.2f')} | {fmt(med(ms, 'hwm'), '.1f', MIB)} | "
                               f"{fmt(med(ms, 'pool'), '.1f', MIB)} | {fmt(med(ms, 'buf'), '.0f', KIB)} |")
                if "adaptive" in rows and best:
                    a = med(rows["adaptive"], "mbs")
                    f32 = fixed.get("fixed-32K")
                    ratio = a / best
                    cpu_a, cpu_b = med(rows["adaptive"], "cpu_gib"), med(rows[best_e], "cpu_gib")
                    ok = ratio >= 0.95
                    v = "met" if ok else f"missed by {(0.95 - ratio) / 0.95 * 100:.1f} %"
                    summary.append(f"| {link} | {d} | {fmt(a)} | {fmt(f32)} | {fmt(best)} ({best_e}) | {ratio:.2f} | "
                                   f"{fmt(a / f32 if f32 else None, '.2f')} | {fmt(cpu_a, '.2f')} vs {fmt(cpu_b, '.2f')} | {v} |")
                    verdicts.append((f"{case} {link} {d}", ok, ratio))
                    plain.append(f"- {case}, {link}, {d}: adaptive {classify(ratio)} against the best fixed size "
                                 f"({best_e}, {ratio:.2f}×)" + (f", {classify(a / f32)} against fixed-32K ({a / f32:.2f}×)" if f32 else "")
                                 + (f"; CPU per GiB {classify(cpu_a / cpu_b, False)} ({cpu_a:.2f} vs {cpu_b:.2f} s)" if cpu_a and cpu_b else ""))
        out += summary + [""]

    # ---- many slow clients
    keys = [r for r in runs if r[0] == "many" and r in results]
    rss_verdicts = []
    if keys:
        size, n = keys[0][5], keys[0][6]
        out += [f"### {n} concurrent clients × {human(size)} sharing the {MANY_LINK} link", "",
                "| User-Agent (strategy) | dir | engine | aggregate MB/s | peak RSS MiB | idle RSS MiB | peak pool MiB | server CPU s/GiB | mean buffer KiB |",
                "|---|---|---|---|---|---|---|---|---|"]
        summary = ["", "Adaptive against fixed-32K (the seed) on memory, with the same throughput:", "",
                   "| User-Agent | dir | MB/s adaptive / 32K / 1M | peak RSS MiB adaptive | peak RSS MiB fixed-32K | ratio (≤ 1.2) | above-idle ratio | peak RSS MiB fixed-1M | verdict |",
                   "|---|---|---|---|---|---|---|---|---|"]
        for _, ua in UAS:
            for d in ("up", "down"):
                rows = {r[2]: results[r] for r in keys if r[4] == ua and r[3] == d}
                if not rows:
                    continue
                for e in ("adaptive", "fixed-32K", "fixed-1M"):
                    if e in rows:
                        ms = rows[e]
                        out.append(f"| {ua_class(ua)}: {ua[:40]} | {d} | {e} | {fmt(med(ms, 'mbs'), '.2f')} | "
                                   f"{fmt(med(ms, 'hwm'), '.1f', MIB)} | {fmt(med(ms, 'idle'), '.1f', MIB)} | "
                                   f"{fmt(med(ms, 'pool'), '.1f', MIB)} | {fmt(med(ms, 'cpu_gib'), '.2f')} | {fmt(med(ms, 'buf'), '.0f', KIB)} |")
                if "adaptive" in rows and "fixed-32K" in rows:
                    a, f = med(rows["adaptive"], "hwm"), med(rows["fixed-32K"], "hwm")
                    ai, fi = med(rows["adaptive"], "idle"), med(rows["fixed-32K"], "idle")
                    f1 = med(rows["fixed-1M"], "hwm") if "fixed-1M" in rows else None
                    tp = [med(rows[e], "mbs") if e in rows else None for e in ("adaptive", "fixed-32K", "fixed-1M")]
                    ratio = a / f
                    above = (a - ai) / (f - fi) if f - fi > 0 else None
                    ok = ratio <= 1.2
                    v = "met" if ok else f"missed by {(ratio - 1.2) / 1.2 * 100:.1f} %"
                    summary.append(f"| {ua_class(ua)} | {d} | {' / '.join(fmt(x, '.2f') for x in tp)} | {fmt(a, '.1f', MIB)} | "
                                   f"{fmt(f, '.1f', MIB)} | {ratio:.2f} | {fmt(above, '.2f')} | {fmt(f1, '.1f', MIB)} | {v} |")
                    rss_verdicts.append((f"{ua_class(ua)} {d}", ok, ratio))
                    best_tp = max((x for x in tp[1:] if x is not None), default=None)
                    tp_ratio = tp[0] / best_tp if best_tp else None
                    if tp_ratio is not None:
                        verdicts.append((f"many {MANY_LINK} {ua_class(ua)} {d}", tp_ratio >= 0.95, tp_ratio))
                    plain.append(f"- {n} slow, {ua_class(ua)}, {d}: peak RSS adaptive {classify(ratio, False)} against fixed-32K "
                                 f"({ratio:.2f}×, {a / MIB:.1f} vs {f / MIB:.1f} MiB, {'within' if ok else 'over'} the 1.2× target)"
                                 + (f"; throughput {classify(tp_ratio)} ({tp_ratio:.2f}× the better fixed size)" if tp_ratio else ""))
        out += summary + [""]

    # ---- verdicts
    lines = ["### Verdicts", ""]
    if verdicts:
        missed = [v for v in verdicts if not v[1]]
        lines.append(f"- Target 1, adaptive throughput ≥ 0.95× the best fixed size on every link "
                     f"({len(verdicts)} comparisons): " + ("**met**" if not missed else "**missed** on " + "; ".join(
                         f"{name} ({r:.2f}×, short by {(0.95 - r) / 0.95 * 100:.1f} %)" for name, _, r in missed)))
        worst = min(verdicts, key=lambda v: v[2])
        lines.append(f"  (lowest: {worst[0]} at {worst[2]:.2f}×)")
    if rss_verdicts:
        missed = [v for v in rss_verdicts if not v[1]]
        lines.append(f"- Target 2, {MANY_N} slow clients on {MANY_LINK}: adaptive peak RSS ≤ 1.2× fixed-32K for every "
                     f"User-Agent and direction: " + ("**met**" if not missed else "**missed** for " + "; ".join(
                         f"{name} ({r:.2f}×, over by {(r - 1.2) / 1.2 * 100:.1f} %)" for name, _, r in missed))
                     + ("" if not missed or len(missed) == len(rss_verdicts) else
                        "; met for " + ", ".join(f"{name} ({r:.2f}×)" for name, ok, r in rss_verdicts if ok)))
    if keys:
        spread = []
        for _, ua in UAS:
            for d in ("up", "down"):
                tp = [med(results[r], "mbs") for r in keys if r[4] == ua and r[3] == d]
                if len(tp) > 1:
                    spread.append(max(tp) / min(tp) - 1)
        if spread:
            lines.append(f"- Premise of target 2 (every size reaches the same throughput there): largest spread between "
                         f"engines {max(spread) * 100:.1f} %")
    if bench.interrupted:
        lines.append("- **interrupted**: the tables hold only the runs finished before the signal")
    if bench.skipped:
        lines.append(f"- **{len(bench.skipped)} runs skipped** (time budget of {args.budget} min): "
                     + ", ".join(" ".join(map(str, r[:4])) for r in bench.skipped[:10]))
    lines += ["", "Where adaptive wins, ties or loses (±5 % counts as a tie):", ""] + plain + [""]
    return out, lines


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_facts(args, rates, load0):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    curl = sh(["curl", "--version"]).stdout.splitlines()[0].split()[1]
    ver = sh([args.binary, "--version"], check=False).stdout.strip()
    h = hashlib.sha256()
    with open(args.binary, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    facts = [
        f"- command: `{' '.join(sys.argv)}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem} MiB RAM, kernel {platform.release()}, curl {curl}",
        f"- server: {ver} (`{args.binary}`, sha256 {h.hexdigest()[:12]}), durability none, one process per measurement",
        f"- {'quick' if args.quick else 'full'} run, {args.rounds} round(s) (medians), engines {', '.join(args.engines)}",
        f"- load average (1/5/15 min) at start {load0}, at end {loadavg()}: other work on these CPUs skews "
        f"loopback and CPU figures most",
    ]
    for r in rates:
        facts.append(f"- {r // 1_000_000}mbit link: `tc qdisc replace dev <veth> root {Net.describe(r)}` on both ends")
    return facts


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--links", default="loopback,1000mbit,100mbit,10mbit")
    p.add_argument("--only", default="single,small,many", help="cases: single, small, many")
    p.add_argument("--engines", default=None, help="adaptive and fixed-16K/32K/64K/256K/1M (single and small)")
    p.add_argument("--budget", type=float, default=None, help="minutes (default 45, quick 3)")
    a = p.parse_args()
    a.links = a.links.split(",")
    for l in a.links:
        link_rate(l)
    a.only = a.only.split(",")
    a.engines = (a.engines.split(",") if a.engines else
                 ["adaptive", "fixed-32K", "fixed-1M"] if a.quick else ["adaptive"] + list(FIXED))
    for e in a.engines:
        if e != "adaptive" and e not in FIXED:
            raise SystemExit(f"unknown engine {e!r}")
    if a.budget is None:
        a.budget = 3 if a.quick else 45
    if "many" in a.only and MANY_LINK not in a.links:
        a.links.append(MANY_LINK)
    return a


def main():
    args = parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces and tc)")
    for tool in ("ip", "tc", "curl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    t0, load0 = time.monotonic(), loadavg()
    try:
        runs, results = bench.run()
    finally:
        bench.cleanup()
    tables, verdicts = report(bench, runs, results)
    rates = sorted({link_rate(r[1]) for r in runs if r[1] != "loopback"}, reverse=True)
    text = "\n".join(
        [f"## Adaptive vs fixed buffers on shaped links ({time.monotonic() - t0:.0f} s)", ""]
        + machine_facts(args, rates, load0) + [""] + tables + verdicts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if bench.interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
