#!/usr/bin/env python3
"""Run several Sluice nodes behind nginx as if they were one Sluice.

    launch.py --config sluice.toml

Takes the command line of the sluice binary, so a suite written for one node (the interop and
resumable suites) runs unchanged against a cluster: the nodes share one PostgreSQL catalog (a
fresh database per launch) and one S3 bucket (a fresh key prefix per launch), and nginx,
configured from config/nginx-cluster.conf, listens on the address the configuration gave and
spreads requests round robin. Runs in the foreground until SIGTERM or SIGINT, then stops
everything. Writes `cluster.json` (node ports, admin ports, pids, database) beside the config.

Environment:
  SLUICE_CLUSTER_BIN      the sluice binary (required)
  SLUICE_CLUSTER_PG       an admin URL of the PostgreSQL server (postgres://user@host:port/db)
  SLUICE_CLUSTER_S3       the S3 endpoint; SLUICE_CLUSTER_BUCKET the bucket
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the S3 credentials (passed to the nodes)
  SLUICE_CLUSTER_NODES    how many nodes (3)
  SLUICE_CLUSTER_LEASE    cluster.lease_ttl ("10s")
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def toml_dump(d, prefix=""):
    """A TOML document for `d` (tables, arrays of tables, scalars, lists, inline tables)."""
    out, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and prefix + k in (
            "tls", "auth.keys",
        ):
            tables.append((k, v))
        else:
            out.append(f"{json.dumps(k)} = {toml_value(v)}")
    for k, v in tables:
        name = prefix + k
        if isinstance(v, dict):
            out.append(f"\n[{name}]")
            out.append(toml_dump(v, name + "."))
        else:
            for item in v:
                out.append(f"\n[[{name}]]")
                out.append(toml_dump(item, name + "."))
    return "\n".join(x for x in out if x != "")


def psql(admin_url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def wait_health(port, proc, seconds=30):
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


def main():
    args = sys.argv[1:]
    if args[:1] == ["--version"]:
        print("sluice cluster launcher (nodes: %s)" % os.environ.get("SLUICE_CLUSTER_NODES", "3"))
        return 0
    if len(args) != 2 or args[0] != "--config":
        sys.exit("usage: launch.py --config FILE")
    conf_path = os.path.abspath(args[1])
    work = os.path.dirname(conf_path)
    binary = os.environ["SLUICE_CLUSTER_BIN"]
    nodes = int(os.environ.get("SLUICE_CLUSTER_NODES", "3"))
    with open(conf_path, "rb") as f:
        base = tomllib.load(f)

    db = "sluice_" + secrets.token_hex(6)
    admin_url = os.environ["SLUICE_CLUSTER_PG"]
    psql(admin_url, f"CREATE DATABASE {db}")
    db_url = admin_url.rsplit("/", 1)[0] + "/" + db
    prefix = secrets.token_hex(6) + "/"

    listen = base["server"]["listen"][0]
    procs, info = [], {"listen": listen, "database": db, "prefix": prefix, "nodes": []}

    def stop(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            psql(admin_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        except Exception:
            pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    for i in range(1, nodes + 1):
        c = json.loads(json.dumps(base))
        port = free_port()
        c.setdefault("server", {})["listen"] = [f"127.0.0.1:{port}"]
        c["server"].pop("unix_listen", None)
        c.pop("tls", None)
        st = c.setdefault("storage", {})
        st["dir"] = os.path.join(st.get("dir", work), f"node{i}")
        os.makedirs(st["dir"], exist_ok=True)
        st["backend"] = "s3"
        st["s3"] = {
            "endpoint": os.environ["SLUICE_CLUSTER_S3"],
            "bucket": os.environ["SLUICE_CLUSTER_BUCKET"],
            "prefix": prefix,
            "path_style": True,
            "part_size": "5MiB",
        }
        c["catalog"] = {"url": db_url}
        c["cluster"] = {"node_id": f"node{i}",
                        "lease_ttl": os.environ.get("SLUICE_CLUSTER_LEASE", "10s")}
        admin = c.get("admin", {})
        if admin.get("listen") and i > 1:
            admin["listen"] = f"127.0.0.1:{free_port()}"
        path = os.path.join(work, f"node{i}.toml")
        with open(path, "w") as f:
            f.write(toml_dump(c) + "\n")
        log = open(os.path.join(work, f"node{i}.log"), "w")
        p = subprocess.Popen([binary, "--config", path], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        procs.append(p)
        info["nodes"].append({"name": f"node{i}", "port": port, "pid": p.pid,
                              "admin": admin.get("listen"), "config": path})
        if not wait_health(port, p):
            print(f"node{i} did not come up; see {work}/node{i}.log", file=sys.stderr)
            stop()

    servers = "\n    ".join(f"server 127.0.0.1:{n['port']};" for n in info["nodes"])
    with open(os.path.join(REPO, "config", "nginx-cluster.conf")) as f:
        site = f.read().replace("@SERVERS@", servers).replace("@LISTEN@", listen)
    ng = os.path.join(work, "nginx")
    os.makedirs(ng, exist_ok=True)
    with open(os.path.join(ng, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {ng}/nginx.pid;
error_log {ng}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {ng}/body;
    proxy_temp_path {ng}/proxy;
    fastcgi_temp_path {ng}/fastcgi;
    uwsgi_temp_path {ng}/uwsgi;
    scgi_temp_path {ng}/scgi;
{site}
}}
""")
    p = subprocess.Popen(["nginx", "-p", ng, "-c", os.path.join(ng, "nginx.conf")],
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    info["nginx_pid"] = p.pid
    with open(os.path.join(work, "cluster.json"), "w") as f:
        json.dump(info, f, indent=1)
    while True:
        for q in procs:
            if q.poll() is not None and q is p:
                print("nginx exited", file=sys.stderr)
                stop()
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
