#!/usr/bin/env python3
"""Check the operator kit under config/ against the source tree (CI runs it).

    python3 config/check.py [--binary PATH_TO_SLUICE] [--promtool PATH]

- config/grafana/sluice.json parses, takes its data source from the DS_PROMETHEUS input
  (every panel, query and variable uses ${DS_PROMETHEUS}), has unique panel ids, panels that
  fit the 24-column grid and a query in every panel;
- every sluice_* metric named by the dashboard or by config/prometheus/alerts.yml is
  registered somewhere in src/ (histogram series _bucket, _sum, _count of a registered name);
- with promtool on PATH (or --promtool): every dashboard query parses as PromQL
  ($job, $instance and $__rate_interval filled in);
- with --binary: the binary is started on a free loopback port and its /metrics scraped;
  every label the queries and alert rules match on, group by or show in a legend must exist
  on the series of the metrics they use (metrics without a series yet, such as per-tier pool
  counters before the first transfer, are listed and skipped).

Only the standard library; exits 1 on the first class of problems found, listing them all.
"""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "config", "grafana", "sluice.json")
ALERTS = os.path.join(ROOT, "config", "prometheus", "alerts.yml")
DS_UID = "${DS_PROMETHEUS}"
METRIC_RE = re.compile(r"\bsluice_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds at scrape time, and the histogram bucket label.
ALWAYS = {"job", "instance", "le"}

problems = []


def problem(msg):
    problems.append(msg)


def src_metric_names():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r'"(sluice_[a-z0-9_]+)"', f.read()))
    return names


def known(name, registered):
    if name in registered:
        return True
    return any(name.endswith(s) and name[: -len(s)] in registered for s in HIST_SUFFIXES)


def walk_datasources(node, where, out):
    """Every "datasource" value in the dashboard, with a readable location."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                out.append((where, v))
            walk_datasources(v, f"{where}.{k}", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk_datasources(v, f"{where}[{i}]", out)


def dashboard_queries(dash):
    """(panel title, expr, legendFormat) of every query, and the variable queries."""
    out = []
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    for p in panels:
        for t in p.get("targets", []):
            out.append((p.get("title", "?"), t.get("expr", ""), t.get("legendFormat", "")))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        if v.get("type") == "query" and q:
            out.append((f"variable {v.get('name')}", q, ""))
    return out, panels


def check_dashboard(registered):
    try:
        with open(DASHBOARD, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        problem(f"{DASHBOARD}: {e}")
        return []
    inputs = [i.get("name") for i in dash.get("__inputs", []) if i.get("type") == "datasource"]
    if inputs != ["DS_PROMETHEUS"]:
        problem(f"dashboard __inputs: expected one datasource input DS_PROMETHEUS, got {inputs}")
    found = []
    walk_datasources(dash.get("panels", []), "panels", found)
    walk_datasources(dash.get("templating", {}), "templating", found)
    for where, ds in found:
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        if uid != DS_UID:
            problem(f"dashboard {where}: datasource {ds!r}, expected uid {DS_UID}")
    queries, panels = dashboard_queries(dash)
    ids = [p.get("id") for p in panels]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup or None in ids:
        problem(f"dashboard panel ids missing or not unique: {sorted(d for d in dup if d is not None)}")
    for p in panels:
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24 or g.get("w", 0) <= 0 or g.get("h", 0) <= 0:
            problem(f"dashboard panel {p.get('title')!r}: gridPos {g} outside the 24-column grid")
        if p.get("type") != "row" and not any(t.get("expr") for t in p.get("targets", [])):
            problem(f"dashboard panel {p.get('title')!r} has no query")
    names = set()
    before = len(problems)
    for title, expr, _ in queries:
        for n in METRIC_RE.findall(expr):
            names.add(n)
            if not known(n, registered):
                problem(f"dashboard panel {title!r}: metric {n} is not registered in src/")
    if len(problems) == before:
        print(f"[config-check] dashboard: {len(panels)} panels, {len(queries)} queries, "
              f"{len(names)} metric names, all registered in src/")
    return queries


def alert_exprs():
    """The expr of every rule in alerts.yml (`expr: ...` or an indented `expr: |` block)."""
    with open(ALERTS, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, rest = len(m.group(1)), m.group(2)
        if rest in ("|", ">", "|-", ">-"):
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            out.append(" ".join(block))
        else:
            out.append(rest)
            i += 1
    return out


def check_alerts(registered):
    exprs = alert_exprs()
    if not exprs:
        problem(f"{ALERTS}: no expr found")
    with open(ALERTS, encoding="utf-8") as f:
        text = f.read()
    for n in sorted(set(METRIC_RE.findall(text))):
        if not known(n, registered):
            problem(f"alerts.yml: metric {n} is not registered in src/")
    return exprs


def fill_vars(expr):
    expr = (expr.replace("$__rate_interval", "5m").replace("$job", ".*")
            .replace("$instance", ".*"))
    # Grafana's label_values(selector, label) variable query: check the selector.
    m = re.match(r"^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", expr)
    return m.group(1) if m else expr


def check_promql(queries, promtool):
    tmp = tempfile.mkdtemp(prefix="sluice-dash-")
    try:
        path = os.path.join(tmp, "dashboard_queries.yml")
        with open(path, "w") as f:
            f.write("groups:\n  - name: dashboard\n    rules:\n")
            for i, (title, expr, _) in enumerate(queries):
                f.write(f"      - record: dashboard_query_{i}\n")
                f.write(f"        expr: {json.dumps(fill_vars(expr))}\n")
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if r.returncode != 0:
            problem("promtool rejects dashboard queries:\n" + r.stdout + r.stderr)
        else:
            print(f"[config-check] promtool: all {len(queries)} dashboard queries parse")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scrape(binary):
    """Labels per metric family name from a live /metrics of `binary`."""
    tmp = tempfile.mkdtemp(prefix="sluice-metrics-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = os.path.join(tmp, "config.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{port}"]\n[storage]\ndir = "{tmp}/data"\n'
                f'[[auth.keys]]\nid = "check"\nsecret = "config-check-secret-0123456789"\n')
    proc = subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=40)
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
        if not m:
            continue
        names = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
        labels.setdefault(m.group(1), set()).update(names)
    return labels


AGG_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SEL_RE = re.compile(r"\b(sluice_[a-z0-9_]+)\{([^}]*)\}")


def check_labels(where, expr, legend, live, unobserved):
    metrics = set(METRIC_RE.findall(expr))
    seen = [m for m in metrics if m in live]
    unobserved.update(m for m in metrics if m not in live)
    if not seen:
        return
    allowed = set(ALWAYS)
    for m in seen:
        allowed |= live[m]
    for m, body in SEL_RE.findall(expr):
        if m not in live:
            continue
        for lab in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)', body):
            if lab not in live[m] | ALWAYS:
                problem(f"{where}: {m} has no label {lab!r} (has {sorted(live[m])})")
    grouped = set()
    for group in AGG_RE.findall(expr):
        for lab in (g.strip() for g in group.split(",")):
            if lab:
                grouped.add(lab)
                if lab not in allowed:
                    problem(f"{where}: groups by {lab!r}, which none of {sorted(seen)} has")
    for lab in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend):
        if lab not in (grouped or allowed):
            problem(f"{where}: legend shows {{{{{lab}}}}}, which the query does not keep")


def main():
    args = sys.argv[1:]
    binary = promtool = None
    while args:
        a = args.pop(0)
        if a == "--binary" and args:
            binary = args.pop(0)
        elif a == "--promtool" and args:
            promtool = args.pop(0)
        else:
            print(__doc__)
            return 2
    registered = src_metric_names()
    if not registered:
        problem("no sluice_* metric names found under src/")
    queries = check_dashboard(registered)
    exprs = check_alerts(registered)
    if not problems:
        print(f"[config-check] alerts.yml: {len(exprs)} rules, every metric name in src/")
    promtool = promtool or shutil.which("promtool")
    if promtool and queries:
        check_promql(queries, promtool)
    elif not promtool:
        print("[config-check] promtool not found: dashboard PromQL not parsed")
    if binary:
        live = scrape(binary)
        unobserved = set()
        for title, expr, legend in queries:
            check_labels(f"dashboard {title!r}", expr, legend, live, unobserved)
        for expr in exprs:
            check_labels("alerts.yml", expr, "", live, unobserved)
        print(f"[config-check] labels checked against a live /metrics ({len(live)} series names)"
              + (f"; no series yet, skipped: {', '.join(sorted(unobserved))}" if unobserved else ""))
    for p in problems:
        print(f"[config-check] FAIL: {p}")
    if problems:
        return 1
    print("[config-check] OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
