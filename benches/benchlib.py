#!/usr/bin/env python3
"""Helpers for benches/compare.sh (python3 standard library only).

Subcommands:
  port                                  print a free TCP port on 127.0.0.1
  sign SECRET PATH SIZE                 print the XEP-0363 v1 MAC: hex HMAC-SHA256(SECRET, PATH + " " + SIZE)
  putlist SECRET PREFIX SIZE N OUT      write N signed PUT targets "/upload/PREFIX/<k%64>/<k>.bin?v=<mac>"
  wrk FILE                              parse wrk output: "rps p99_ms errors avg_bytes"
  report RESULTS ROWS [--out FILE --title T --facts FILE]   median table (text + markdown)
"""
import hashlib
import hmac
import re
import socket
import statistics
import sys


def mac(secret: str, path: str, size: int) -> str:
    msg = f"{path} {size}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def free_port(addr="127.0.0.1"):
    """A TCP port free on `addr` right now (the benches' servers bind it next)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cmd_port():
    print(free_port())


def cmd_sign(secret, path, size):
    print(mac(secret, path, int(size)))


def cmd_putlist(secret, prefix, size, n, out):
    size = int(size)
    key = secret.encode()
    with open(out, "w") as f:
        for k in range(int(n)):
            path = f"{prefix}/{k % 64}/{k}.bin"
            m = hmac.new(key, f"{path} {size}".encode(), hashlib.sha256).hexdigest()
            f.write(f"/upload/{path}?v={m}\n")


def to_ms(v: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", v.strip())
    if not m:
        raise ValueError(f"cannot parse latency {v!r}")
    x, u = float(m.group(1)), m.group(2)
    return x * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def cmd_wrk(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
    if not rps or not p99:
        print("0 0 1 0")  # unparseable output counts as an error
        return
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(g) for g in m.groups())
    avg = re.search(r"^AVG_BYTES\s+([0-9.]+)", text, re.M)
    if re.search(r"^EXHAUSTED", text, re.M):
        errors += 1
    print(f"{float(rps.group(1)):.2f} {to_ms(p99.group(1)):.3f} {errors} {avg.group(1) if avg else 0}")


def fmt(x):
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cmd_report(results, rows, *opts):
    out = title = facts = None
    i = 0
    while i < len(opts):
        if opts[i] == "--out":
            out = opts[i + 1]
        elif opts[i] == "--title":
            title = opts[i + 1]
        elif opts[i] == "--facts":
            facts = opts[i + 1]
        i += 2
    vals = {}
    for line in open(results):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            continue
        metric, server, v = parts
        vals.setdefault((metric, server), []).append(float(v))
    table = []
    raw = []
    for line in open(rows):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        label, metric, a_srv, b_srv = line.split("\t")
        a = vals.get((metric, a_srv), [])
        b = vals.get((metric, b_srv), [])
        am = statistics.median(a) if a else None
        bm = statistics.median(b) if b else None
        ratio = f"{bm / am:.2f}" if am and bm is not None else "n/a"
        table.append((label, fmt(am), fmt(bm), ratio))
        raw.append((label, a_srv, a, b_srv, b))
    head = ("case", "nginx median", "sluice median", "ratio sluice/nginx")
    widths = [max(len(r[i]) for r in table + [head]) for i in range(4)]
    def line_of(r):
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
    print(line_of(head))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print(line_of(r))
    if out:
        with open(out, "w") as f:
            if title:
                f.write(f"## {title}\n\n")
            if facts:
                f.write(open(facts).read().rstrip("\n") + "\n\n")
            f.write("| " + " | ".join(head) + " |\n")
            f.write("|---|---:|---:|---:|\n")
            for r in table:
                f.write("| " + " | ".join(r) + " |\n")
            f.write("\nHigher is better for req/s and MB/s; lower is better for p99 and RSS.\n")
            f.write("\n<details><summary>every run (in run order)</summary>\n\n")
            for label, a_srv, a, b_srv, b in raw:
                f.write(f"- {label}: {a_srv} {[round(x, 2) for x in a]}, {b_srv} {[round(x, 2) for x in b]}\n")
            f.write("\n</details>\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"port": cmd_port, "sign": cmd_sign, "putlist": cmd_putlist, "wrk": cmd_wrk,
     "report": cmd_report}[cmd](*args)


if __name__ == "__main__":
    main()
