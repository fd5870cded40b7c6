#!/usr/bin/env python3
"""Scale-out benchmark: one node on the filesystem, one node on S3 + PostgreSQL, and one and
three S3 + PostgreSQL nodes behind nginx, measured in one run on this machine.

    python3 benches/cluster.py --bin target/release/sluice [--dur 5] [--rounds 3] [--out FILE]

Starts PostgreSQL and SeaweedFS on loopback (tests/services/), the nodes (tests/cluster/
launch.py for the S3 set-ups) and measures with wrk (4 KiB GET and PUT at 16 connections,
64 MiB GET at 4 connections) and curl (4 parallel 64 MiB PUTs). Each case runs every set-up
once per round (interleaved); the table shows medians, the ratios asked for (S3 / filesystem
for one node; three nodes / one node, both behind nginx) and where the CPU went: seconds of
CPU per 1000 requests (small) or per GiB (large), split into Sluice, SeaweedFS, PostgreSQL and
nginx. Needs: wrk, curl, nginx, psql; run as root (PostgreSQL runs as its own user).
"""

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime (children: nginx workers, PostgreSQL backends)
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            pass
    return total / TICK


def pids_matching(name=None, user=None):
    args = ["pgrep"]
    if user:
        args += ["-u", user]
    if name:
        args += ["-f", name]
    out = subprocess.run(args, capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def wait_health(url, seconds=30):
    end = time.time() + seconds
    while time.time() < end:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return True
        except Exception:
            time.sleep(0.1)
    return False


class Setup:
    def __init__(self, name, base, groups):
        self.name, self.base, self.groups = name, base, groups

    def cpu(self):
        return {g: cpu_of(f()) for g, f in self.groups.items()}


def put_file(base, secret, path, data):
    url = f"{base}/upload/{path}?v={benchlib.mac(secret, path, len(data))}"
    r = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(r, timeout=120) as resp:
        assert resp.status == 201, resp.status


def run_wrk(args, dur):
    out = subprocess.run(["wrk", "-t2", f"-d{dur}s", "--latency"] + args,
                         capture_output=True, text=True).stdout
    rps = float(out.split("Requests/sec:")[1].split()[0]) if "Requests/sec:" in out else 0.0
    bad = 0
    for line in out.splitlines():
        if "Non-2xx or 3xx responses:" in line:
            bad += int(line.split()[-1])
        if "Socket errors:" in line:
            bad += sum(int(x.strip(",")) for x in line.split()[3::2])
    return rps, bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dur", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    binary = os.path.realpath(a.bin)
    work = tempfile.mkdtemp(prefix="sluice-clbench.")
    os.chmod(work, 0o755)
    procs, secret = [], "bench-" + secrets.token_hex(16)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="sluicebench",
               AWS_SECRET_ACCESS_KEY="bench-" + secrets.token_hex(12), S3_BUCKET="sluice-bench")
    for d in ("pg", "s3"):
        os.makedirs(f"{work}/{d}")
    os.chmod(f"{work}/pg", 0o755)

    def sh(*args):
        return subprocess.run(list(args), capture_output=True, text=True, env=env,
                              check=True).stdout.strip().splitlines()[-1]

    def cleanup(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["bash", f"{REPO}/tests/services/seaweedfs.sh", "stop", f"{work}/s3"],
                       capture_output=True, env=env)
        subprocess.run(["bash", f"{REPO}/tests/services/postgres.sh", "stop", f"{work}/pg"],
                       capture_output=True, env=env)
        subprocess.run(["rm", "-rf", work])

    try:
        pg = sh("bash", f"{REPO}/tests/services/postgres.sh", "start", f"{work}/pg")
        s3 = sh("bash", f"{REPO}/tests/services/seaweedfs.sh", "start", f"{work}/s3")
        env.update(SLUICE_CLUSTER_BIN=binary, SLUICE_CLUSTER_PG=pg, SLUICE_CLUSTER_S3=s3,
                   SLUICE_CLUSTER_BUCKET="sluice-bench", SLUICE_CLUSTER_LEASE="10s")
        weed = lambda: pids_matching("weed mini")  # noqa: E731
        postgres = lambda: pids_matching(user="postgres")  # noqa: E731
        setups = []

        def config(d, port):
            os.makedirs(f"{d}/data", exist_ok=True)
            with open(f"{d}/sluice.toml", "w") as f:
                f.write(f"""[server]
listen = ["127.0.0.1:{port}"]
url_prefix = "/upload"

[storage]
dir = "{d}/data"
max_file_size = "1GiB"
durability = "none"

[[auth.keys]]
id = "b"
secret = "{secret}"
""")
            return f"{d}/sluice.toml"

        # One node on the filesystem (SQLite catalog).
        port = benchlib.free_port()
        p = subprocess.Popen([binary, "--config", config(f"{work}/fs", port)],
                             stdout=open(f"{work}/fs.log", "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        assert wait_health(f"http://127.0.0.1:{port}")
        setups.append(Setup("fs x1", f"http://127.0.0.1:{port}",
                            {"sluice": lambda p=p: [p.pid]}))
        # One and three nodes on S3 + PostgreSQL (launch.py: nginx in front).
        for n in (1, 3):
            d = f"{work}/s3x{n}"
            port = benchlib.free_port()
            cfg = config(d, port)
            p = subprocess.Popen([sys.executable, f"{REPO}/tests/cluster/launch.py", "--config", cfg],
                                 env=dict(env, SLUICE_CLUSTER_NODES=str(n)),
                                 stdout=open(f"{d}/launch.log", "w"), stderr=subprocess.STDOUT)
            procs.append(p)
            end = time.time() + 60
            while not os.path.exists(f"{d}/cluster.json") and time.time() < end:
                time.sleep(0.2)
            assert wait_health(f"http://127.0.0.1:{port}"), f"s3x{n} did not come up"
            info = json.load(open(f"{d}/cluster.json"))
            node_pids = [x["pid"] for x in info["nodes"]]
            ng = info["nginx_pid"]
            groups = {"sluice": lambda pids=node_pids: pids, "seaweedfs": weed,
                      "postgres": postgres,
                      # the master and its live workers (cutime counts only reaped ones)
                      "nginx": lambda ng=ng: [ng] + [int(x) for x in subprocess.run(
                          ["pgrep", "-P", str(ng)], capture_output=True, text=True).stdout.split()]}
            if n == 1:
                setups.append(Setup("s3 x1", f"http://127.0.0.1:{info['nodes'][0]['port']}",
                                    {k: v for k, v in groups.items() if k != "nginx"}))
            setups.append(Setup(f"s3 x{n} + nginx", f"http://127.0.0.1:{port}", groups))

        small, big = os.urandom(4096), os.urandom(64 * MiB)
        with open(f"{work}/f4k.bin", "wb") as f:
            f.write(small)
        with open(f"{work}/f64m.bin", "wb") as f:
            f.write(big)
        for s in setups:
            put_file(s.base, secret, f"bench/{s.name.replace(' ', '_')}/f4k.bin", small)
            put_file(s.base, secret, f"bench/{s.name.replace(' ', '_')}/f64m.bin", big)

        results = {}  # (case, setup) -> list of (throughput, cpu dict)

        def measure(case, s, fn):
            before = s.cpu()
            t0 = time.time()
            amount, unit_count, bad = fn()
            el = time.time() - t0
            after = s.cpu()
            cpu = {g: after[g] - before[g] for g in before}
            if bad:
                print(f"  {case} {s.name}: {bad} failed requests", flush=True)
            results.setdefault((case, s.name), []).append((amount / el, cpu, unit_count, bad))

        def get4k(s):
            rps, bad = run_wrk(["-c16", f"{s.base}/upload/bench/{s.name.replace(' ', '_')}/f4k.bin"],
                               a.dur)
            return rps * a.dur, rps * a.dur, bad

        def put4k(s, rnd):
            tag = f"{s.name.replace(' ', '_')}/r{rnd}"
            lst = f"{work}/put-{tag.replace('/', '-')}.txt"
            with open(lst, "w") as f:
                for k in range(a.dur * 12000):
                    path = f"p4k/{tag}/{k % 64}/{k}.bin"
                    f.write(f"/upload/{path}?v={benchlib.mac(secret, path, 4096)}\n")
            rps, bad = run_wrk(["-c16", "-s", f"{HERE}/put.lua", f"{s.base}/upload/", "--",
                                lst, f"{work}/f4k.bin", "2"], a.dur)
            return rps * a.dur, rps * a.dur, bad

        def get64m(s):
            rps, bad = run_wrk(["-c4", f"{s.base}/upload/bench/{s.name.replace(' ', '_')}/f64m.bin"],
                               a.dur)
            return rps * a.dur * 64 * MiB, rps * a.dur * 64 / 1024, bad

        def put64m(s, rnd):
            ps = []
            for k in range(4):
                path = f"p64m/{s.name.replace(' ', '_')}/r{rnd}/{k}.bin"
                url = f"{s.base}/upload/{path}?v={benchlib.mac(secret, path, 64 * MiB)}"
                ps.append(subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                            "-T", f"{work}/f64m.bin", url],
                                           stdout=subprocess.PIPE, text=True))
            bad = sum(1 for p in ps if p.communicate()[0] != "201")
            return 4 * 64 * MiB, 4 * 64 / 1024, bad

        cases = [("4 KiB GET, c=16", "req/s", lambda s, r: get4k(s)),
                 ("4 KiB PUT, c=16", "req/s", put4k),
                 ("64 MiB GET, c=4", "MB/s", lambda s, r: get64m(s)),
                 ("64 MiB PUT, 4 at once", "MB/s", put64m)]
        for rnd in range(a.rounds):
            for case, _, fn in cases:
                for s in setups:
                    measure(case, s, lambda: fn(s, rnd))
                    per_s = results[(case, s.name)][-1][0]
                    shown = f"{per_s:.0f} req/s" if "KiB" in case else f"{per_s / 1e6:.0f} MB/s"
                    print(f"round {rnd + 1} {case} {s.name}: {shown}", flush=True)

        lines = ["| case | " + " | ".join(s.name for s in setups)
                 + " | S3 / fs (one node) | 3 nodes / 1 node (nginx) |",
                 "|---|" + "---|" * (len(setups) + 2)]
        cpu_lines = ["| case | set-up | Sluice | SeaweedFS | PostgreSQL | nginx |", "|---|---|---|---|---|---|"]
        failed = 0
        for case, unit, _ in cases:
            med = {}
            for s in setups:
                rs = results[(case, s.name)]
                failed += sum(r[3] for r in rs)
                med[s.name] = statistics.median(r[0] for r in rs) / (1 if unit == "req/s" else 1e6)
                per = "1000 req" if unit == "req/s" else "GiB"
                units = sum(r[2] for r in rs) / (1000 if unit == "req/s" else 1)
                cpu = {g: sum(r[1].get(g, 0) for r in rs) / max(units, 1e-9) for g in
                       ("sluice", "seaweedfs", "postgres", "nginx")}
                cpu_lines.append(f"| {case} | {s.name} | " + " | ".join(
                    f"{cpu[g]:.2f}" if any(g in r[1] for r in rs) else "-" for g in
                    ("sluice", "seaweedfs", "postgres", "nginx")) + f" |  (CPU s per {per})")
            r1 = med["s3 x1"] / med["fs x1"] if med["fs x1"] else 0
            r3 = med["s3 x3 + nginx"] / med["s3 x1 + nginx"] if med["s3 x1 + nginx"] else 0
            lines.append(f"| {case} ({unit}) | " + " | ".join(f"{med[s.name]:.1f}" for s in setups)
                         + f" | {r1:.2f} | {r3:.2f} |")
        table = "\n".join(lines) + "\n\nCPU seconds per unit of work:\n\n" + "\n".join(cpu_lines)
        print(table)
        if a.out:
            with open(a.out, "w") as f:
                f.write(table + "\n")
        print(f"failed requests: {failed}")
        return 1 if failed else 0
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
