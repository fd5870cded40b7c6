"""Case 11: a soak. Four clients upload (v grant PUTs) and download (whole files and ranges)
for SOAK_SECONDS (180 by default; 1800 by hand) while RSS and the open descriptor count of the
server are sampled every 3 s. Two clients keep their connection alive, two open one per request."""
import http.client as hc
import os
import random
import threading
import time

from harness import (Server, case, rand_bytes, record, sign_v, slot_path)

KIB, MIB = 1024, 1024 * 1024
SAMPLE_EVERY = 3.0
# One request in ten is an upload. Each new file adds an entry to Sluice's metadata cache
# (16,384 entries, then cleared), which shows as a few MiB of RSS warm-up over the first minutes
# at this rate; RSS is flat once the cache has reached its size.
UPLOAD_SHARE = 0.1
# Measured warm-up of the bounded caches in a 180 s soak: +2.6 to +3.5 MiB from the first third
# to the last; a leak has to show above this.
RSS_SLACK_MIB = 6.0


class Client(threading.Thread):
    def __init__(self, port, idx, files, lock, end, keep_alive):
        super().__init__(daemon=True)
        self.port, self.idx, self.files, self.lock, self.end = port, idx, files, lock, end
        self.keep_alive = keep_alive
        self.rng = random.Random(1100 + idx)
        self.ops = {"put": 0, "get": 0, "range": 0}
        self.errors = []
        self.conn = None

    def connection(self):
        if self.conn is None or not self.keep_alive:
            if self.conn is not None:
                self.conn.close()
            self.conn = hc.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.conn

    def call(self, method, target, body=None, headers=None):
        conn = self.connection()
        try:
            conn.request(method, target, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, hc.HTTPException):
            self.conn.close()
            self.conn = None
            raise

    def run(self):
        while time.monotonic() < self.end:
            try:
                self.step()
            except Exception as e:  # counted; the soak wants zero
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.02)
        if self.conn is not None:
            self.conn.close()

    def step(self):
        rng = self.rng
        if rng.random() < UPLOAD_SHARE:
            path = slot_path(f"s{self.idx}.bin")
            data = rand_bytes(rng, rng.randint(1 * KIB, 64 * KIB))
            st, _ = self.call("PUT", f"/{path}?v={sign_v(path, len(data))}", data,
                              {"Content-Type": "application/octet-stream"})
            self.ops["put"] += 1
            if st != 201:
                self.errors.append(f"PUT {st}")
                return
            with self.lock:
                self.files.append((path, data))
            return
        with self.lock:
            path, data = self.files[rng.randrange(len(self.files))]
        if rng.random() < 0.3 and len(data) > 2:
            a = rng.randrange(len(data) - 1)
            b = rng.randrange(a, len(data))
            st, body = self.call("GET", "/" + path, headers={"Range": f"bytes={a}-{b}"})
            self.ops["range"] += 1
            if st != 206 or body != data[a:b + 1]:
                self.errors.append(f"GET {path} range {a}-{b}: {st}, {len(body)} bytes")
        else:
            st, body = self.call("GET", "/" + path)
            self.ops["get"] += 1
            if st != 200 or body != data:
                self.errors.append(f"GET {path}: {st}, {len(body)} bytes of {len(data)}")


def thirds(samples):
    """Averages of the first, middle and last third."""
    k = max(1, len(samples) // 3)
    parts = samples[:k], samples[k:len(samples) - k] or samples[:k], samples[-k:]
    return [sum(p) / len(p) for p in parts]


@case(11, "soak: uploads and downloads", int(os.environ.get("SOAK_SECONDS", "180")) + 90)
def soak():
    seconds = float(os.environ.get("SOAK_SECONDS", "180"))
    srv = Server("c11-soak").start()
    rng = random.Random(11)
    files = []
    for i in range(4):
        path, data = slot_path(f"big{i}.bin"), rand_bytes(rng, 4 * MIB)
        c = Client(srv.port, 99, files, threading.Lock(), 0, False)
        st, _ = c.call("PUT", f"/{path}?v={sign_v(path, len(data))}", data)
        if st != 201:
            raise AssertionError(f"setup upload: {st}")
        files.append((path, data))
    lock = threading.Lock()
    end = time.monotonic() + seconds
    clients = [Client(srv.port, i, files, lock, end, keep_alive=i < 2) for i in range(4)]
    for c in clients:
        c.start()
    rss, fds = [], []
    next_sample = time.monotonic() + SAMPLE_EVERY
    while time.monotonic() < end and srv.alive():
        time.sleep(max(0.0, next_sample - time.monotonic()))
        next_sample += SAMPLE_EVERY
        try:
            rss.append(srv.rss_kib() / 1024)
            fds.append(srv.fd_count())
        except OSError:
            break
    for c in clients:
        c.join(60)
    errors = [e for c in clients for e in c.errors]
    ops = {k: sum(c.ops[k] for c in clients) for k in ("put", "get", "range")}
    if len(rss) < 3:
        record(11, "soak: uploads and downloads", False, f"only {len(rss)} samples; server alive: {srv.alive()}")
        return
    r1, r2, r3 = thirds(rss)
    f1, _, f3 = thirds(fds)
    rss_ok = r3 <= r1 * 1.10 or r3 - r1 <= RSS_SLACK_MIB
    fd_ok = f3 <= f1 * 1.10 or f3 - f1 <= 4
    ok = not errors and rss_ok and fd_ok and srv.alive()
    record(11, "soak: uploads and downloads", ok,
           f"{seconds:.0f} s, {ops['put']} PUTs, {ops['get']} GETs, {ops['range']} range GETs, "
           f"{len(errors)} errors{(' e.g. ' + '; '.join(errors[:3])) if errors else ''}; "
           f"RSS by thirds {r1:.1f} / {r2:.1f} / {r3:.1f} MiB (max {max(rss):.1f}); "
           f"fds first third {f1:.1f}, last third {f3:.1f} (max {max(fds)}); {len(rss)} samples "
           f"(want zero errors and last third within 10 % or {RSS_SLACK_MIB:.0f} MiB / 4 fds "
           "of the first)")
