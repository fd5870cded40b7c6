#!/usr/bin/env python3
"""Cluster checks against nodes started by launch.py (reads its cluster.json).

    checks.py --cluster WORK/cluster.json --secret S --admin-token T --bin SLUICE

Each check prints PASS/FAIL lines; the last line is `RESULT {"passed": N, "failed": M}`.
The nodes share PostgreSQL and S3 and sit behind nginx (the `listen` address).
"""

import argparse
import concurrent.futures as cf
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from urllib.parse import quote

MiB = 1 << 20
RESULTS = {"passed": 0, "failed": 0}
# Nodes this script started again (the launcher does not know them): stopped at the end.
RESTARTED = []


def check(ok, what):
    RESULTS["passed" if ok else "failed"] += 1
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    return ok


def mac_v(secret, path, size):
    return hmac.new(secret.encode(), f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def req(method, url, body=None, headers=None, timeout=60):
    r = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, dict(resp.getheaders()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Cluster:
    def __init__(self, info, secret, token):
        self.info, self.secret, self.token = info, secret, token
        self.lb = "http://" + info["listen"]

    def node(self, i):
        return f"http://127.0.0.1:{self.info['nodes'][i]['port']}"

    def put(self, base, path, data):
        url = f"{base}/upload/{quote(path)}?v={mac_v(self.secret, path, len(data))}"
        return req("PUT", url, data, {"Content-Type": "application/octet-stream"})

    def get(self, base, path, headers=None):
        return req("GET", f"{base}/upload/{quote(path)}", headers=headers)

    def tus_create(self, base, path, size):
        url = f"{base}/upload/tus/{quote(path)}?v={mac_v(self.secret, path, size)}"
        st, h, _ = req("POST", url, b"", {"Tus-Resumable": "1.0.0", "Upload-Length": str(size)})
        loc = {k.lower(): v for k, v in h.items()}.get("location", "")
        return st, loc

    @staticmethod
    def tus_id(location):
        return location.rstrip("/").rsplit("/", 1)[-1]

    def tus_url(self, base, sid):
        return f"{base}/upload/tus/{sid}"

    def tus_head(self, base, sid):
        st, h, _ = req("HEAD", self.tus_url(base, sid), headers={"Tus-Resumable": "1.0.0"})
        h = {k.lower(): v for k, v in h.items()}
        return st, int(h.get("upload-offset", "-1"))

    def tus_patch(self, base, sid, offset, chunk):
        return req("PATCH", self.tus_url(base, sid), chunk, {
            "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream"})

    def metric(self, i, name, labels):
        _, _, body = req("GET", self.node(i) + "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def race(c, rounds):
    """Two nodes publishing one path at once: exactly one 201 and one 409, every round."""
    bad = []
    with cf.ThreadPoolExecutor(2) as ex:
        for k in range(rounds):
            path = f"race/{os.urandom(6).hex()}/f.bin"
            a, b = os.urandom(2000), os.urandom(2000)
            fa = ex.submit(c.put, c.node(0), path, a)
            fb = ex.submit(c.put, c.node(1), path, b)
            sa, sb = fa.result()[0], fb.result()[0]
            if sorted([sa, sb]) != [201, 409]:
                bad.append((k, sa, sb))
                continue
            winner = a if sa == 201 else b
            st, _, got = c.get(c.node(2), path)
            if st != 200 or got != winner:
                bad.append((k, "served", st))
    check(not bad, f"race: {rounds} rounds of two nodes publishing one path: one 201 + one 409 "
                   f"and the winner's bytes served by a third node {bad[:3]}")


def alternating(c):
    """One tus upload whose appends go to node 1, 2, 3, 1, ... (7 MiB appends, 5 MiB parts)."""
    size = 29 * MiB + 12345
    data = os.urandom(size)
    path = f"alt/{os.urandom(4).hex()}/video.mp4"
    st, loc = c.tus_create(c.node(0), path, size)
    if not check(st == 201 and loc, f"alternating: created on node 1 ({st})"):
        return
    sid = c.tus_id(loc)
    off, step, i, ok = 0, 7 * MiB, 0, True
    while off < size:
        n = len(c.info["nodes"])
        base = c.node(i % n)
        st, hoff = c.tus_head(c.node((i + 1) % n), sid)
        ok &= check(st in (200, 204) and hoff == off,
                    f"alternating: node {(i + 1) % n + 1} reports offset {hoff} (expected {off})")
        chunk = data[off:off + step]
        st, h, _ = c.tus_patch(base, sid, off, chunk)
        ok &= check(st == 204, f"alternating: append {i + 1} of {len(chunk)} bytes on node {i % n + 1}: {st}")
        if st != 204:
            return
        off += len(chunk)
        i += 1
    st, _, got = c.get(c.lb, path)
    check(st == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest(),
          f"alternating: the file served through nginx is byte-identical ({st}, {len(got)} bytes)")


def takedown(c):
    """A takedown on node 1 is answered 410 by node 2 at once, though node 2 has it cached."""
    path = f"td/{os.urandom(4).hex()}/pic.jpg"
    data = os.urandom(3000)
    st, _, _ = c.put(c.node(0), path, data)
    check(st == 201, f"takedown: uploaded on node 1 ({st})")
    for _ in range(3):
        st, _, got = c.get(c.node(1), path)
    check(st == 200 and got == data, f"takedown: node 2 serves it (and caches it) ({st})")
    admin = c.info["nodes"][0]["admin"]
    t0 = time.time()
    st, _, body = req("DELETE", f"http://{admin}/files/{quote(path, safe='')}?reason=admin",
                      headers={"Authorization": f"Bearer {c.token}"})
    check(st == 200, f"takedown: admin API on node 1 took it down ({st} {body[:120]!r})")
    seen = None
    while time.time() - t0 < 2:
        st, _, _ = c.get(c.node(1), path)
        if st == 410:
            seen = time.time() - t0
            break
        time.sleep(0.005)
    check(seen is not None and seen < 1.0,
          f"takedown: node 2 answers 410 {round(seen * 1000) if seen is not None else '-'} ms after the takedown")
    st, _, _ = c.get(c.node(2), path)
    check(st == 410, f"takedown: node 3 answers {st}")


def expiry(c, count):
    """Files under exp/ expire after 2 s; the sweep removes each exactly once across nodes."""
    before = sum(c.metric(i, "sluice_deletions_total", {"reason": "expired"})
                 for i in range(len(c.info["nodes"])))
    paths = []
    for k in range(count):
        path = f"exp/{os.urandom(4).hex()}.txt"
        st, _, _ = c.put(c.node(k % len(c.info["nodes"])), path, b"x" * (k + 1))
        if st == 201:
            paths.append(path)
    check(len(paths) == count, f"expiry: {len(paths)}/{count} uploaded across nodes")
    end = time.time() + 30
    while time.time() < end and any(c.get(c.lb, p)[0] == 200 for p in paths):
        time.sleep(0.5)
    gone = sum(1 for p in paths if c.get(c.lb, p)[0] == 404)
    check(gone == count, f"expiry: {gone}/{count} gone")
    end = time.time() + 10
    while True:
        after = sum(c.metric(i, "sluice_deletions_total", {"reason": "expired"})
                    for i in range(len(c.info["nodes"])))
        if after - before >= count or time.time() > end:
            break
        time.sleep(0.5)
    check(after - before == count,
          f"expiry: removals counted across all nodes = {after - before:.0f} (exactly {count})")


def kill_mid_append(c, binary):
    """kill -9 of the node holding an upload's lease mid-append; resume through another node."""
    size = 18 * MiB + 777
    data = os.urandom(size)
    path = f"kill/{os.urandom(4).hex()}/clip.mp4"
    victim = 1
    st, loc = c.tus_create(c.node(victim), path, size)
    if not check(st == 201, f"kill: created on node {victim + 1} ({st})"):
        return
    sid = c.tus_id(loc)
    first = 6 * MiB
    st, _, _ = c.tus_patch(c.node(victim), sid, 0, data[:first])
    check(st == 204, f"kill: first append of {first} bytes on node {victim + 1} ({st})")
    # Start the second append by hand and kill the node half way through it.
    port = c.info["nodes"][victim]["port"]
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"PATCH /upload/tus/{sid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {first}\r\n"
            f"Content-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {size - first}\r\n\r\n")
    s.sendall(head.encode())
    s.sendall(data[first:first + 5 * MiB])
    time.sleep(0.3)
    pid = c.info["nodes"][victim]["pid"]
    os.kill(pid, 9)
    s.close()
    other = 2
    st, off = c.tus_head(c.node(other), sid)
    check(st in (200, 204) and first <= off <= size,
          f"kill: node {other + 1} reports offset {off} after the kill (recorded: {first})")
    st, _, _ = c.tus_patch(c.node(other), sid, off, data[off:])
    check(st == 204, f"kill: resumed from {off} on node {other + 1} ({st})")
    st, _, got = c.get(c.lb, path)
    check(st == 200 and got == data,
          f"kill: byte-identical after the resume ({st}, {len(got)} of {size} bytes)")
    # Bring the node back for whatever runs next.
    node = c.info["nodes"][victim]
    log = open(node["config"].replace(".toml", ".restart.log"), "w")
    p = subprocess.Popen([binary, "--config", node["config"]], stdout=log, stderr=subprocess.STDOUT)
    node["pid"] = p.pid
    RESTARTED.append(p)
    end = time.time() + 30
    up = False
    while time.time() < end and not up:
        try:
            up = urllib.request.urlopen(c.node(victim) + "/health", timeout=2).status == 200
        except Exception:
            time.sleep(0.2)
    check(up, f"kill: node {victim + 1} restarted")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--admin-token", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--race-rounds", type=int, default=30)
    a = ap.parse_args()
    with open(a.cluster) as f:
        info = json.load(f)
    c = Cluster(info, a.secret, a.admin_token)
    for name, fn in [("race", lambda: race(c, a.race_rounds)), ("alternating", lambda: alternating(c)),
                     ("takedown", lambda: takedown(c)), ("expiry", lambda: expiry(c, 12)),
                     ("kill", lambda: kill_mid_append(c, a.bin))]:
        t0 = time.time()
        try:
            fn()
        except Exception as e:  # a crash of one check is a failure, not the end of the run
            check(False, f"{name}: raised {e!r}")
        print(f"INFO {name} took {time.time() - t0:.1f} s", flush=True)
    for p in RESTARTED:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    print("RESULT " + json.dumps(RESULTS))


if __name__ == "__main__":
    main()
