#!/usr/bin/env python3
"""Minimal stand-in for Sluice's tus endpoint, used ONLY to self-test this harness.

It implements the subset of docs/protocols.md §3 that tus_py_test.py and tus_js_test.mjs use:
OPTIONS /tus/, creation (POST /tus/<path>?v=<mac>, `v` grant over `path + " " + Upload-Length`),
creation-with-upload, HEAD/PATCH/DELETE /tus/<id>, Upload-Checksum (sha1/sha256/md5, 460 on
mismatch), keeping what arrived before a disconnect, publishing at /upload/<path> on the last
PATCH, GET /upload/<path>, GET /health. It takes the same `--config FILE` TOML as Sluice.
It is not Sluice and is never run by CI:
`bash tests/resumable/run.sh tests/resumable/reference_server.py` checks the harness itself.
Standard library only.
"""
import base64
import hashlib
import hmac
import os
import re
import sys
import threading
import tomllib
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXTENSIONS = "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation"
ALGOS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}


def parse_size(s):
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]iB|B)?\s*", s)
    return int(m.group(1)) * {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]


class Upload:
    def __init__(self, path, length, metadata, staging):
        self.path, self.length, self.metadata, self.staging = path, length, metadata, staging
        self.offset = 0
        self.lock = threading.Lock()
        open(staging, "wb").close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "reference-tus"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.command, fmt % args))

    # ------------------------------------------------------------------ helpers
    def reply(self, status, headers=None, body=b""):
        self.send_response(status)
        if self.path.startswith("/tus/") and self.command != "OPTIONS":
            self.send_header("Tus-Resumable", "1.0.0")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def drain(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            got = self.rfile.read(min(n, 65536))
            if not got:
                break
            n -= len(got)

    def append(self, up, expected_offset):
        """Append the request body at `expected_offset`; keep what arrived before a disconnect."""
        n = int(self.headers.get("Content-Length") or 0)
        if expected_offset + n > up.length:
            self.drain()
            return 413, None
        checksum = self.headers.get("Upload-Checksum")
        if checksum:
            algo, _, want = checksum.partition(" ")
            if algo not in ALGOS:
                self.drain()
                return 400, None
            body = self.rfile.read(n)
            if len(body) < n:
                return None, None  # disconnected: a checksummed chunk is all or nothing
            if base64.b64encode(ALGOS[algo](body).digest()).decode() != want:
                return 460, None
            with open(up.staging, "r+b") as f:
                f.seek(expected_offset)
                f.write(body)
            up.offset += n
            return 204, None
        with open(up.staging, "r+b") as f:
            f.seek(expected_offset)
            left = n
            while left > 0:
                try:
                    got = self.rfile.read1(min(left, 65536))
                except OSError:
                    got = b""
                if not got:
                    break
                f.write(got)
                f.flush()
                up.offset += len(got)
                left -= len(got)
        if left:
            self.close_connection = True
            return None, None
        return 204, None

    def publish(self, up):
        final = os.path.join(self.server.files, up.path)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.link(up.staging, final)
        os.unlink(up.staging)

    def route_path(self):
        return urllib.parse.urlsplit(self.path)

    # ------------------------------------------------------------------ methods
    def do_OPTIONS(self):
        self.reply(204, {"Tus-Version": "1.0.0", "Tus-Extension": EXTENSIONS,
                         "Tus-Max-Size": str(self.server.max_size),
                         "Tus-Checksum-Algorithm": ",".join(ALGOS)})

    def do_POST(self):
        u = self.route_path()
        if not u.path.startswith("/tus/") or self.headers.get("Tus-Resumable") != "1.0.0":
            self.drain()
            return self.reply(404 if not u.path.startswith("/tus/") else 412, {"Tus-Version": "1.0.0"})
        path = urllib.parse.unquote(u.path[len("/tus/"):])
        length = int(self.headers.get("Upload-Length", "-1"))
        q = urllib.parse.parse_qs(u.query)
        want = hmac.new(self.server.secret, f"{path} {length}".encode(), hashlib.sha256).hexdigest()
        if length < 0 or not hmac.compare_digest(q.get("v", [""])[0].lower(), want):
            self.drain()
            return self.reply(403)
        if length > self.server.max_size:
            self.drain()
            return self.reply(413)
        meta = self.headers.get("Upload-Metadata", "")
        sid = uuid.uuid4().hex
        up = Upload(path, length, meta, os.path.join(self.server.staging, sid))
        self.server.uploads[sid] = up
        headers = {"Location": f"/tus/{sid}"}
        if self.headers.get("Content-Type") == "application/offset+octet-stream":
            with up.lock:
                status, _ = self.append(up, 0)
                if status is None:
                    return
                if up.offset == up.length:
                    self.publish(up)
            headers["Upload-Offset"] = str(up.offset)
        self.reply(201, headers)

    def upload_for(self):
        u = self.route_path()
        if not u.path.startswith("/tus/"):
            return None
        return self.server.uploads.get(u.path[len("/tus/"):])

    def do_HEAD(self):
        if self.route_path().path.startswith("/upload/"):
            return self.do_GET()
        up = self.upload_for()
        if up is None:
            return self.reply(404)
        h = {"Upload-Offset": str(up.offset), "Upload-Length": str(up.length), "Cache-Control": "no-store"}
        if up.metadata:
            h["Upload-Metadata"] = up.metadata
        self.reply(200, h)

    def do_PATCH(self):
        up = self.upload_for()
        if up is None:
            self.drain()
            return self.reply(404)
        if self.headers.get("Content-Type") != "application/offset+octet-stream":
            self.drain()
            return self.reply(415)
        with up.lock:
            off = int(self.headers.get("Upload-Offset", "-1"))
            if off != up.offset:
                self.drain()
                return self.reply(409)
            status, _ = self.append(up, off)
            if status is None:
                return
            if status != 204:
                return self.reply(status)
            if up.offset == up.length:
                self.publish(up)
            self.reply(204, {"Upload-Offset": str(up.offset)})

    def do_DELETE(self):
        up = self.upload_for()
        if up is None:
            return self.reply(404)
        del self.server.uploads[self.route_path().path[len("/tus/"):]]
        if os.path.exists(up.staging):
            os.unlink(up.staging)
        self.reply(204)

    def do_GET(self):
        p = self.route_path().path
        if p == "/health":
            return self.reply(200, {"Content-Type": "text/plain"}, b"ok\n")
        if not p.startswith("/upload/"):
            return self.reply(404)
        rel = urllib.parse.unquote(p[len("/upload/"):])
        f = os.path.normpath(os.path.join(self.server.files, rel))
        if not f.startswith(self.server.files + os.sep) or not os.path.isfile(f):
            return self.reply(404)
        with open(f, "rb") as fh:
            data = fh.read()
        self.reply(200, {"Content-Type": "application/octet-stream"}, data)


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "--config":
        sys.exit("usage: reference_server.py --config FILE")
    with open(sys.argv[2], "rb") as f:
        cfg = tomllib.load(f)
    host, port = cfg["server"]["listen"][0].rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    root = cfg["storage"]["dir"]
    srv.files = os.path.join(root, "files")
    srv.staging = os.path.join(root, "staging")
    os.makedirs(srv.files, exist_ok=True)
    os.makedirs(srv.staging, exist_ok=True)
    srv.max_size = parse_size(cfg["storage"].get("max_file_size", "64MiB"))
    srv.secret = cfg["auth"]["keys"][0]["secret"].encode()
    srv.uploads = {}
    print(f"reference tus server on {host}:{port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
