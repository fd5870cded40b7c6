#!/usr/bin/env python3
"""Fault-injection and abuse suite for Sluice: shared helpers and the case runner.

    python harness.py SLUICE_BINARY WORK_DIR RESULTS_FILE

Started by run.sh (which installs what this needs). Runs the cases of crash.py, inject.py,
pressure.py, protocol.py and soak.py in order; FAULTS_CASES=1,4,8 picks some. Every case
starts its own Sluice on 127.0.0.1 with its own configuration and data directory under
WORK_DIR, prints `PASS|FAIL <id> <title>: <figure>` per result and appends the same line to
RESULTS_FILE. Every child process is stopped when its case ends; run.sh stops any that remain.
"""
import contextlib
import hashlib
import hmac
import http.client as hc
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid

SECRET = "faults-" + "0123456789abcdef" * 2
KEY_ID = "faults"
T0 = time.monotonic()


def log(msg):
    print(f"[faults {time.monotonic() - T0:5.0f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- context
class Ctx:
    """Where the suite runs: the binary, the work dir, the results file and child processes."""

    bin = ""
    work = ""
    results = ""
    passed = 0
    failed = 0
    children = []  # Popen objects started by the current case


CTX = Ctx()


def track(proc):
    """Remember a child process so it is stopped when its case ends (and its pid for run.sh)."""
    CTX.children.append(proc)
    with open(os.path.join(CTX.work, "pids"), "a") as f:
        f.write(f"{proc.pid}\n")
    return proc


def stop_process(proc, grace=5.0):
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def stop_children():
    for p in reversed(CTX.children):
        stop_process(p)
    CTX.children = []


def record(cid, title, ok, figure):
    line = f"{'PASS' if ok else 'FAIL'} {cid} {title}: {figure}"
    print(line, flush=True)
    with open(CTX.results, "a") as f:
        f.write(line + "\n")
    if ok:
        CTX.passed += 1
    else:
        CTX.failed += 1
    return ok


def case_dir(name):
    d = os.path.join(CTX.work, name)
    os.makedirs(d, exist_ok=True)
    return d


# ----------------------------------------------------------------------------- small helpers
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign_v(path, size, secret=SECRET):
    """The `v` grant: hex HMAC-SHA256(secret, path + " " + size)."""
    return hmac.new(secret.encode(), f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def slot_path(name="file.bin"):
    """A fresh XMPP-style slot path: <uuid>/<name>."""
    return f"{uuid.uuid4()}/{name}"


def rand_bytes(rng, n):
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def wait_until(pred, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def raise_nofile(n=65536):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), max(hard, n)))


def walk_files(root):
    out = []
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


# ----------------------------------------------------------------------------- HTTP
def request(port, method, target, body=b"", headers=None, timeout=10.0, source=None):
    """One request on a new connection (from the loopback address `source` if given).
    Returns (status, headers dict lowercased, body)."""
    conn = hc.HTTPConnection("127.0.0.1", port, timeout=timeout,
                             source_address=(source, 0) if source else None)
    try:
        conn.request(method, target, body=body if method not in ("GET", "HEAD") or body else None,
                     headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def metric(port, name, source="127.0.0.3"):
    """The value of one unlabelled series from /metrics (None if absent or unreachable)."""
    try:
        st, _, body = request(port, "GET", "/metrics", timeout=5, source=source)
    except (OSError, hc.HTTPException):
        return None
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def put_v(port, path, data, headers=None, timeout=30.0):
    """PUT `data` to /<path> with a valid `v` grant; returns the status."""
    target = "/" + path + "?v=" + sign_v(path, len(data))
    h = {"Content-Type": "application/octet-stream"}
    h.update(headers or {})
    return request(port, "PUT", target, data, h, timeout)[0]


def get_ok(port, path, expect, timeout=30.0):
    """True if GET /<path> is 200 with exactly `expect`."""
    try:
        st, _, body = request(port, "GET", "/" + path, timeout=timeout)
    except OSError:
        return False
    return st == 200 and body == expect


def paced_put(port, path, data, piece=65536, pause=(0.0, 0.01), rng=None, timeout=30.0):
    """PUT with a valid grant, sending the body in pieces with small pauses (so a crash can land
    in the middle). Returns the status, or None if the connection broke."""
    rng = rng or random.Random()
    conn = hc.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("PUT", "/" + path + "?v=" + sign_v(path, len(data)), skip_accept_encoding=True)
        conn.putheader("Content-Length", str(len(data)))
        conn.putheader("Content-Type", "application/octet-stream")
        conn.endheaders()
        for i in range(0, len(data), piece):
            conn.send(data[i:i + piece])
            time.sleep(rng.uniform(*pause))
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, hc.HTTPException):
        return None
    finally:
        conn.close()


def streaming_put(port, path, data, piece=65536, timeout=30.0):
    """PUT with a valid grant over a raw socket, watching for an early answer between pieces (a
    server that refuses mid-body may answer and close before the body is sent). Returns
    (status or None, note)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    note = "answered after the whole body"
    try:
        s.sendall((f"PUT /{path}?v={sign_v(path, len(data))} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
                   ).encode())
        for i in range(0, len(data), piece):
            r, _, _ = select.select([s], [], [], 0)
            if r:
                note = f"answered after {i} of {len(data)} body bytes"
                break
            try:
                s.sendall(data[i:i + piece])
            except OSError as e:
                note = f"send failed after {i} body bytes ({e.strerror})"
                break
        end = time.monotonic() + timeout
        while b"\r\n" not in got and time.monotonic() < end:
            try:
                part = s.recv(65536)
            except OSError as e:
                note += f"; reading the answer: {e.strerror}"
                break
            if not part:
                break
            got += part
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.1 (\d{3})", got)
    return (int(m.group(1)) if m else None), note


def raw_exchange(port, data, idle=2.0, total=8.0, chunks=None):
    """Send raw bytes (or a list of chunks) and read until the server closes, nothing arrives for
    `idle` seconds, or `total` seconds pass. Returns (received bytes, closed by server)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=idle)
    out = b""
    closed = False
    try:
        for c in (chunks or [data]):
            try:
                s.sendall(c)
            except OSError:
                closed = True
                break
        end = time.monotonic() + total
        while time.monotonic() < end:
            try:
                part = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not part:
                closed = True
                break
            out += part
    finally:
        s.close()
    return out, closed


def parse_responses(data):
    """Split a byte stream into HTTP/1.1 responses: [(status, headers, body)]. A trailing
    fragment that is not a complete response is returned as status -1."""
    out = []
    while data:
        m = re.match(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n", data)
        if not m:
            out.append((-1, {}, data))
            break
        end = data.find(b"\r\n\r\n")
        if end < 0:
            out.append((-1, {}, data))
            break
        headers = {}
        for line in data[m.end():end].split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        status = int(m.group(1))
        rest = data[end + 4:]
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = b"", 0
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(rest[pos:eol].split(b";")[0] or b"0", 16)
                body += rest[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            data = rest[pos:]
        elif status in (204, 304) or 100 <= status < 200:
            body, data = b"", rest
        else:
            body, data = rest, b""
        out.append((status, headers, body))
    return out


# ----------------------------------------------------------------------------- the server
class Server:
    """One Sluice process with its own TOML configuration and data directory."""

    def __init__(self, name, *, storage_dir=None, durability="fsync", server=None,
                 storage=None, sections=None, wrapper=None, cwd=None):
        self.name = name
        self.dir = case_dir(name)
        self.storage_dir = storage_dir or os.path.join(self.dir, "data")
        self.port = free_port()
        self.wrapper = wrapper or []
        self.cwd = cwd or self.dir
        self.proc = None
        self.log_path = os.path.join(self.dir, "sluice.log")
        self.config_path = os.path.join(self.dir, "sluice.toml")
        srv = {"listen": [f"127.0.0.1:{self.port}"]}
        srv.update(server or {})
        sto = {"dir": self.storage_dir, "durability": durability}
        sto.update(storage or {})
        text = toml_section("server", srv) + toml_section("storage", sto)
        for sec, values in (sections or {}).items():
            text += toml_section(sec, values)
        text += f'[[auth.keys]]\nid = "{KEY_ID}"\nsecret = "{SECRET}"\n'
        with open(self.config_path, "w") as f:
            f.write(text)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=30.0):
        logf = open(self.log_path, "ab")
        env = dict(os.environ, SLUICE_LOG=os.environ.get("SLUICE_LOG", "info"))
        self.proc = track(subprocess.Popen(
            self.wrapper + [CTX.bin, "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.cwd,
            env=env, start_new_session=True))
        logf.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, hc.HTTPException):
                if request(self.port, "GET", "/health", timeout=1)[0] == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"sluice did not answer /health within {timeout:.0f} s:\n{self.log_tail()}")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc:
            stop_process(self.proc, grace=10)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=25):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    | " + re.sub(r"\x1b\[[0-9;]*m", "", l) for l in lines[-n:])

    # /proc figures ------------------------------------------------------------------------
    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def threads_traced(self):
        """True if every thread of the process has a tracer (strace attached)."""
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return False
        for t in tasks:
            with contextlib.suppress(OSError):
                with open(f"/proc/{self.pid}/task/{t}/status") as f:
                    if "TracerPid:\t0\n" in f.read():
                        return False
        return True


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_section(name, values):
    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + "\n"


class RssSampler(threading.Thread):
    """Samples a server's RSS (KiB) every `every` seconds until stopped."""

    def __init__(self, server, every=0.25):
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.samples = []
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.is_set():
            with contextlib.suppress(OSError):
                self.samples.append(self.server.rss_kib())
            self._stop_evt.wait(self.every)

    def stop(self):
        self._stop_evt.set()
        self.join(5)
        return max(self.samples) if self.samples else 0


class Prober(threading.Thread):
    """Another client: GETs `targets` in turn on new connections every `every` seconds and
    records each latency (seconds) or failure, until stopped."""

    def __init__(self, port, targets, every=0.05, timeout=5.0, source="127.0.0.2"):
        super().__init__(daemon=True)
        self.port, self.targets, self.every, self.timeout = port, targets, every, timeout
        self.source = source  # its own address: Sluice caps connections per client address
        self.latencies, self.failures = [], []
        self._stop_evt = threading.Event()

    def run(self):
        i = 0
        while not self._stop_evt.is_set():
            path, expect = self.targets[i % len(self.targets)]
            i += 1
            t = time.monotonic()
            try:
                st, _, body = request(self.port, "GET", path, timeout=self.timeout,
                                      source=self.source)
                ok = st == 200 and (expect is None or body == expect)
            except (OSError, hc.HTTPException) as e:
                ok, st = False, type(e).__name__
            dt = time.monotonic() - t
            if ok:
                self.latencies.append(dt)
            else:
                self.failures.append((path, st, round(dt, 3)))
            self._stop_evt.wait(self.every)

    def stop(self):
        self._stop_evt.set()
        self.join(self.timeout + 5)

    def figure(self):
        ms = [x * 1000 for x in self.latencies]
        return (f"{len(ms)} probes, p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
                f"max {max(ms) if ms else float('nan'):.1f} ms, {len(self.failures)} failed")


class Attacker:
    """attackers.py in its own process (see there); `finish` waits (bounded) and returns its
    JSON counters."""

    def __init__(self, out_path, *args):
        self.out_path = out_path
        with open(out_path, "wb") as out:
            self.proc = track(subprocess.Popen(
                [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "attackers.py"), *map(str, args)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True))

    def finish(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        with open(self.out_path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (ValueError, IndexError):
            return {"output": " | ".join(lines[-3:])}

    @staticmethod
    def figure(counts):
        return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


# ----------------------------------------------------------------------------- runner
CASES = []


def case(num, title, budget):
    """Register a case function: f() records one or more results through `record`."""
    def deco(fn):
        CASES.append((num, title, budget, fn))
        return fn
    return deco


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def run_cases(selected):
    signal.signal(signal.SIGALRM, _alarm)
    for num, title, budget, fn in sorted(CASES, key=lambda c: c[0]):
        if selected and num not in selected:
            continue
        log(f"case {num}: {title} (budget {budget} s)")
        before = CTX.failed + CTX.passed
        failed_before = CTX.failed
        signal.alarm(budget)
        try:
            fn()
        except CaseTimeout:
            record(num, title, False, f"case did not finish within its budget of {budget} s")
        except Exception as e:
            signal.alarm(0)
            record(num, title, False, f"error: {type(e).__name__}: {e}")
            traceback.print_exc(limit=6, file=sys.stdout)
        finally:
            signal.alarm(0)
            if CTX.failed > failed_before:
                print_logs(num)
            stop_children()
        if CTX.passed + CTX.failed == before:
            record(num, title, False, "case recorded no result")


def print_logs(num):
    """On failure: the tail of each Sluice log the case wrote."""
    for name in sorted(os.listdir(CTX.work)):
        if not name.startswith(f"c{num}-"):
            continue
        p = os.path.join(CTX.work, name, "sluice.log")
        if os.path.exists(p) and os.path.getmtime(p) >= T0_WALL:
            with open(p, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()[-15:]
            print(f"    ----- last lines of {p}")
            for l in lines:
                print("    | " + re.sub(r"\x1b\[[0-9;]*m", "", l)[:300])


T0_WALL = time.time()


def main():
    CTX.bin, CTX.work, CTX.results = sys.argv[1:4]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise_nofile()
    # hypothesis keeps a cache dir; keep it out of the directories that case 9 watches.
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(CTX.work, "hypothesis"))
    os.makedirs(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"], exist_ok=True)
    import crash, inject, pressure, protocol, soak  # noqa: F401  (they register their cases)
    selected = {int(x) for x in os.environ.get("FAULTS_CASES", "").replace(" ", "").split(",") if x}
    run_cases(selected)
    log(f"{CTX.passed} passed, {CTX.failed} failed")


if __name__ == "__main__":
    sys.modules["harness"] = sys.modules[__name__]
    main()
