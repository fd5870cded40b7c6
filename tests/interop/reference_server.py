#!/usr/bin/env python3
"""Minimal stand-in for Sluice, used ONLY to self-test the interop harness.

It implements the subset of docs/protocols.md section 1 that the interop client exercises
(v / v2 / token HMAC PUTs, JWT Bearer PUTs, 201/409/403/401/413/400/404, GET/HEAD, /health),
and takes the same `--config FILE` TOML as Sluice. It is not Sluice and is never run by CI:
`bash tests/interop/run.sh tests/interop/reference_server.py` checks the harness itself.
Standard library only.
"""
import base64
import hashlib
import hmac
import json
import mimetypes
import os
import re
import sys
import tempfile
import time
import tomllib
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_size(s):
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B|B)?\s*", s)
    if not m:
        raise ValueError(f"bad size {s!r}")
    mult = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
            "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cfg = None  # set in main

    def handle_expect_100(self):
        return True  # decide first; 100 Continue is sent by do_PUT just before reading the body

    def log_message(self, fmt, *args):
        sys.stderr.write("ref-server: " + (fmt % args) + "\n")

    def reply(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def rel_path(self):
        raw = urllib.parse.urlsplit(self.path).path
        prefix = self.cfg["prefix"]
        if prefix and (raw == prefix or raw.startswith(prefix + "/")):
            raw = raw[len(prefix):]
        rel = urllib.parse.unquote(raw.lstrip("/"), errors="strict")
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            return None
        return rel

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path == "/health":
            return self.reply(200, b"ok\n")
        rel = self.rel_path()
        fp = os.path.join(self.cfg["dir"], rel) if rel else None
        if not fp or not os.path.isfile(fp):
            return self.reply(404, b"not found\n")
        with open(fp, "rb") as f:
            data = f.read()
        self.reply(200, data, {"Content-Type": mimetypes.guess_type(rel)[0] or "application/octet-stream"})

    do_HEAD = do_GET

    def check_jwt(self, token, rel, length):
        try:
            h, p, s = token.split(".")
            claims = json.loads(b64url_decode(p))
            sig = b64url_decode(s)
        except Exception:
            return 401
        ok = any(hmac.compare_digest(hmac.new(k, f"{h}.{p}".encode(), hashlib.sha256).digest(), sig)
                 for k in self.cfg["keys"])
        if not ok or not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < time.time():
            return 401
        if claims.get("slot") != rel.split("/")[0]:
            return 400
        if claims.get("filesize") != length:
            return 413
        return None

    def check_mac(self, query, rel, length):
        q = urllib.parse.parse_qs(query)
        ctype = self.headers.get("Content-Type")
        if "v2" in q or "token" in q:
            given = (q.get("v2") or q.get("token"))[0]
            types = {t for t in (ctype, mimetypes.guess_type(rel)[0], "application/octet-stream") if t is not None}
            msgs = [f"{rel}\0{length}\0{t}" for t in types]
        elif "v" in q:
            given = q["v"][0]
            msgs = [f"{rel} {length}"]
        else:
            return 401
        for k in self.cfg["keys"]:
            for m in msgs:
                if hmac.compare_digest(hmac.new(k, m.encode(), hashlib.sha256).hexdigest(), given.lower()):
                    return None
        return 403

    def do_PUT(self):
        split = urllib.parse.urlsplit(self.path)
        try:
            rel = self.rel_path()
        except UnicodeDecodeError:
            rel = None
        if rel is None:
            return self.reply(400, b"bad path\n", {"Connection": "close"})
        cl = self.headers.get("Content-Length")
        if cl is None:
            return self.reply(411, b"length required\n", {"Connection": "close"})
        length = int(cl)
        if length > self.cfg["max"]:
            return self.reply(413, b"too large\n", {"Connection": "close"})
        authz = self.headers.get("Authorization")
        if authz is not None or not split.query:
            if not authz or not authz.startswith("Bearer "):
                return self.reply(401, b"bearer required\n", {"WWW-Authenticate": "Bearer", "Connection": "close"})
            err = self.check_jwt(authz[7:].strip(), rel, length)
        else:
            err = self.check_mac(split.query, rel, length)
        if err:
            return self.reply(err, b"denied\n", {"Connection": "close"})
        dest = os.path.join(self.cfg["dir"], rel)
        if os.path.exists(dest):
            return self.reply(409, b"exists\n", {"Connection": "close"})
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        fd, tmp = tempfile.mkstemp(dir=self.cfg["tmp"])
        got = 0
        with os.fdopen(fd, "wb") as f:
            while got < length:
                chunk = self.rfile.read(min(65536, length - got))
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
        if got != length:
            os.unlink(tmp)
            return self.reply(400, b"short body\n", {"Connection": "close"})
        try:
            os.link(tmp, dest)  # fails if dest exists: never overwrite
        except FileExistsError:
            os.unlink(tmp)
            return self.reply(409, b"exists\n")
        os.unlink(tmp)
        self.reply(201, b"created\n")


def main():
    args = sys.argv[1:]
    if len(args) != 2 or args[0] != "--config":
        sys.exit("usage: reference_server.py --config FILE")
    with open(args[1], "rb") as f:
        conf = tomllib.load(f)
    d = conf["storage"]["dir"]
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(os.path.dirname(d.rstrip("/")), "ref-tmp")
    os.makedirs(tmp, exist_ok=True)
    Handler.cfg = {
        "prefix": conf["server"].get("url_prefix", "").rstrip("/"),
        "dir": d,
        "tmp": tmp,
        "max": parse_size(conf["storage"].get("max_file_size", "64MiB")),
        "keys": [k["secret"].encode() for k in conf["auth"]["keys"]],
    }
    host, port = conf["server"]["listen"][0].rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
