#!/usr/bin/env python3
"""Engine load scenarios for Sluice (loopback only, bounded in count and time).

    python3 benches/load.py SLUICE_BINARY [--quick] [--out FILE]

Scenarios (each starts its own Sluice with its own config and stops it):
  many-big     100 concurrent 1 GiB PUTs sending at full speed for a fixed time, then
               aborted (staged data is deleted): peak RSS and peak pool bytes vs the pool cap.
  slow-fast    100 rate-limited uploads (about 64 KiB/s each) plus 4 fast 256 MiB uploads:
               peak RSS, peak pool bytes, the fast uploads' MB/s.
  adaptive     adaptive vs each fixed buffer size, for a slow client (rate-limited) and a
               fast one (loopback at full speed): MB/s, pool bytes held, server CPU seconds.
  tus-vs-put   a 1 GiB upload as tus PATCHes of 8 MiB vs one PUT: MB/s.

Prints markdown tables; --out also writes them to FILE. Standard library only.
"""
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import benchlib

SECRET = "load-bench-secret-0123456789"
QUICK = "--quick" in sys.argv
MIB = 1024 * 1024


class Server:
    def __init__(self, binary, extra=""):
        self.dir = tempfile.mkdtemp(prefix="sluice-load-")
        self.port = benchlib.free_port()
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:{self.port}"]\nbody_idle_timeout = "30s"\n'
                f'[storage]\ndir = "{self.dir}/data"\nmax_file_size = "2GiB"\ndurability = "none"\n'
                f'[[auth.keys]]\nsecret = "{SECRET}"\n{extra}\n'
            )
        self.proc = subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sluice did not start")

    def metric(self, name):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        m = re.search(r"^" + re.escape(name) + r" ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def hwm(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def signed(path, size):
    return f"/{path}?v={benchlib.mac(SECRET, path, size)}"


CHUNK = os.urandom(64 * 1024)


def raw_put(port, path, size, rate=None, deadline=None, ua="curl/8"):
    """PUT `size` bytes; `rate` bytes/s caps the sending speed; stop (abort) at `deadline`."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"PUT {signed(path, size)} HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\nContent-Length: {size}\r\n\r\n".encode())
    sent, t0 = 0, time.monotonic()
    piece = 8192 if rate else len(CHUNK)
    while sent < size:
        if deadline and time.monotonic() > deadline:
            s.close()
            return sent, None
        n = min(piece, size - sent)
        s.sendall(CHUNK[:n])
        sent += n
        if rate:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    s.settimeout(60)
    status = s.recv(64).split(b" ")[1]
    s.close()
    return sent, int(status)


def sampler(server, stop, peaks):
    while not stop.is_set():
        try:
            peaks["pool"] = max(peaks["pool"], server.metric("sluice_pool_in_use_bytes"))
            peaks["rss"] = max(peaks["rss"], server.rss())
        except OSError:
            pass
        time.sleep(0.2)


def run_threads(targets):
    ts = [threading.Thread(target=t) for t in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def many_big(binary):
    n, secs = (100, 4 if QUICK else 10)
    srv = Server(binary)
    try:
        cap = srv.metric("sluice_pool_cap_bytes")
        stop, peaks = threading.Event(), {"pool": 0, "rss": 0}
        th = threading.Thread(target=sampler, args=(srv, stop, peaks))
        th.start()
        deadline = time.monotonic() + secs
        sent = [0] * n

        def up(i):
            sent[i] = raw_put(srv.port, f"big/{i}.bin", 1 << 30, deadline=deadline)[0]

        run_threads([lambda i=i: up(i) for i in range(n)])
        stop.set()
        th.join()
        total = sum(sent)
        return [
            "| scenario | value |", "|---|---|",
            f"| concurrent 1 GiB PUTs | {n} (sending for {secs} s, then aborted) |",
            f"| bytes received in total | {total / MIB:.0f} MiB ({total / MIB / secs:.0f} MiB/s) |",
            f"| peak RSS (VmHWM) | {srv.hwm() / MIB:.1f} MiB |",
            f"| peak pool bytes leased | {peaks['pool'] / MIB:.1f} MiB (cap {cap / MIB:.0f} MiB) |",
        ]
    finally:
        srv.stop()


def slow_fast(binary):
    slow_n, slow_size, rate = 100, (256 * 1024 if QUICK else 1 * MIB), 64 * 1024
    fast_n, fast_size = 4, (64 if QUICK else 256) * MIB
    srv = Server(binary)
    try:
        cap = srv.metric("sluice_pool_cap_bytes")
        stop, peaks = threading.Event(), {"pool": 0, "rss": 0}
        th = threading.Thread(target=sampler, args=(srv, stop, peaks))
        th.start()
        results, fast_times = [], []

        def slow(i):
            results.append(raw_put(srv.port, f"slow/{i}.bin", slow_size, rate=rate, ua="Conversations/2.16")[1])

        def fast(i):
            t0 = time.monotonic()
            results.append(raw_put(srv.port, f"fast/{i}.bin", fast_size)[1])
            fast_times.append(time.monotonic() - t0)

        run_threads([lambda i=i: slow(i) for i in range(slow_n)] + [lambda i=i: fast(i) for i in range(fast_n)])
        stop.set()
        th.join()
        ok = sum(1 for r in results if r == 201)
        mbps = fast_size / MIB / (sorted(fast_times)[len(fast_times) // 2])
        return [
            "| scenario | value |", "|---|---|",
            f"| slow uploads | {slow_n} × {slow_size // 1024} KiB at {rate // 1024} KiB/s |",
            f"| fast uploads | {fast_n} × {fast_size // MIB} MiB, median {mbps:.0f} MiB/s each |",
            f"| 201 Created | {ok} of {slow_n + fast_n} |",
            f"| peak RSS (VmHWM) | {srv.hwm() / MIB:.1f} MiB |",
            f"| peak pool bytes leased | {peaks['pool'] / MIB:.1f} MiB (cap {cap / MIB:.0f} MiB) |",
        ]
    finally:
        srv.stop()


def adaptive(binary):
    rows = ["| engine | slow client: MiB/s, peak pool KiB | fast client: MiB/s, server CPU s |", "|---|---|---|"]
    slow_size, rate = (512 * 1024 if QUICK else 2 * MIB), 256 * 1024
    fast_size = (256 if QUICK else 1024) * MIB
    modes = [("adaptive", "")] + [
        (f"fixed {t}", f'[engine]\nmode = "fixed"\nfixed_buffer = "{t}"') for t in ["16KiB", "64KiB", "256KiB", "1MiB"]
    ]
    for name, extra in modes:
        srv = Server(binary, extra)
        try:
            stop, peaks = threading.Event(), {"pool": 0, "rss": 0}
            th = threading.Thread(target=sampler, args=(srv, stop, peaks))
            th.start()
            t0 = time.monotonic()
            raw_put(srv.port, "s/slow.bin", slow_size, rate=rate, ua="Conversations/2.16")
            slow_mbps = slow_size / MIB / (time.monotonic() - t0)
            stop.set()
            th.join()
            cpu0, t0 = srv.cpu_seconds(), time.monotonic()
            raw_put(srv.port, "f/fast.bin", fast_size)
            fast_mbps = fast_size / MIB / (time.monotonic() - t0)
            cpu = srv.cpu_seconds() - cpu0
            rows.append(f"| {name} | {slow_mbps:.2f}, {peaks['pool'] / 1024:.0f} | {fast_mbps:.0f}, {cpu:.2f} |")
        finally:
            srv.stop()
    return rows


def tus_vs_put(binary):
    size = (256 if QUICK else 1024) * MIB
    chunk = 8 * MIB
    srv = Server(binary)
    try:
        t0 = time.monotonic()
        status = raw_put(srv.port, "p/whole.bin", size)[1]
        put_s = time.monotonic() - t0
        assert status == 201, status
        path = "t/whole.bin"
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        c.connect()
        # http.client writes head and body separately; without TCP_NODELAY Nagle plus the
        # server's delayed ACK add ~40 ms to every PATCH (a client artefact, not Sluice's).
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        c.request("POST", "/tus" + signed(path, size), headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)})
        r = c.getresponse()
        r.read()
        assert r.status == 201, r.status
        loc = r.getheader("Location")
        buf = (CHUNK * (chunk // len(CHUNK)))
        off = 0
        while off < size:
            n = min(chunk, size - off)
            c.request("PATCH", loc, body=buf[:n], headers={
                "Tus-Resumable": "1.0.0", "Upload-Offset": str(off),
                "Content-Type": "application/offset+octet-stream", "Content-Length": str(n)})
            r = c.getresponse()
            r.read()
            assert r.status == 204, r.status
            off += n
        tus_s = time.monotonic() - t0
        return [
            "| upload of " + f"{size // MIB} MiB | seconds | MiB/s |", "|---|---|---|",
            f"| one PUT | {put_s:.2f} | {size / MIB / put_s:.0f} |",
            f"| tus, {chunk // MIB} MiB PATCHes | {tus_s:.2f} | {size / MIB / tus_s:.0f} |",
            f"| ratio tus/PUT | | {put_s / tus_s:.2f} |",
        ]
    finally:
        srv.stop()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    binary = sys.argv[1]
    out = None
    if "--out" in sys.argv:
        out = sys.argv[sys.argv.index("--out") + 1]
    only = [a for a in sys.argv[2:] if a in ("many-big", "slow-fast", "adaptive", "tus-vs-put")]
    lines = [f"nproc {os.cpu_count()}, kernel {os.uname().release}, {'quick' if QUICK else 'full'} run", ""]
    for name, fn in [("many-big", many_big), ("slow-fast", slow_fast), ("adaptive", adaptive), ("tus-vs-put", tus_vs_put)]:
        if only and name not in only:
            continue
        t0 = time.monotonic()
        rows = fn(binary)
        lines += [f"### {name} ({time.monotonic() - t0:.0f} s)", ""] + rows + [""]
        print("\n".join(lines[-len(rows) - 3:]), flush=True)
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
