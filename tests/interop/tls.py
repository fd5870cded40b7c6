#!/usr/bin/env python3
"""HTTPS scenario of the interop suite: Sluice terminates TLS itself ([[tls]] in sluice.toml.in)
and picks up a renewed certificate without a restart.

run.sh makes a throwaway CA and three leaves for localhost + 127.0.0.1 (TLS_DIR/archive/
{fullchain,privkey}N.pem; Sluice starts with 1, copied to TLS_DIR/live/), and runs client.py
over the https base URL first (Prosody's upload-tls.localhost and share-tls.localhost). Then
this script, with slots from upload-tls.localhost (Prosody mod_http_upload_external v2):

  handshake   ALPN h2 / http/1.1 / none, TLS 1.3 and 1.2, the IP address (no SNI); an upload
              and downloads over HTTP/2 and HTTP/1.1 with curl
  verification  the system trust store, a wrong host name, client.py's helpers and curl
              without the CA all fail; plain HTTP on the TLS port gets no HTTP answer
  renewal     a half-done renewal (new certificate, old key) is refused and the running
              certificate stays; the full renewal (write + rename) is served within 10 s while
              a keep-alive connection and a download opened before go on; a slot upload after
  certbot+HUP a certbot-style renewal (live/ names become symlinks to archive/ files) is
              picked up; SIGHUP reloads (log line), Sluice keeps serving; the reload metrics
  silent clients  (opened at the start, checked at the end) a connection that sends nothing,
              and one that completes the TLS handshake and then sends no request, are both
              closed within server.header_read_timeout (+3 s)

Output and exit status as client.py's. Every wait is bounded.

    tls.py --base-url https://localhost:5443/upload/ --tls-dir W/tls --sluice-pid PID \\
        --sluice-log W/sluice/sluice.log --metrics-url http://127.0.0.1:5050/metrics \\
        --sluice-config W/sluice/sluice.toml --prosody 127.0.0.1:5222 --secret S
"""
import argparse
import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
import urllib.request

from slixmpp.exceptions import IqError, IqTimeout

import client
from client import Client, Results, get_slot, http_req, info, payload, put_headers, tls_context

SERVICE = "upload-tls.localhost"  # mod_http_upload_external v2, https base URL
JID, PASSWORD = "alice@localhost", "alice-pw"
OCTETS = "application/octet-stream"
RELOAD_WAIT = 10  # a renewal must be served within this (tls_check_interval is 1 s)
LOG_WAIT = 5
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def leaf_der(pem_path):
    """DER of the first certificate of a PEM file (the leaf of a fullchain)."""
    with open(pem_path) as f:
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", f.read(), re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def seconds(text):
    """A config duration like "10s", "2m", "1m 30s"."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text)
    return sum(float(n) * units[u] for n, u in parts)


def fp(der):
    return hashlib.sha256(der).hexdigest()[:16] if der else None


def names(cert):
    """CN and serial of a getpeercert() dict."""
    subject = dict(x[0] for x in cert.get("subject", ()))
    return f"CN={subject.get('commonName')!r} serial={cert.get('serialNumber')}"


class Handshake:
    """One TLS handshake's outcome."""

    def __init__(self, host, port, ctx, server_hostname, connect_to=None):
        self.error = self.version = self.alpn = self.der = None
        self.cert = {}
        try:
            with socket.create_connection((connect_to or host, port), timeout=10) as s:
                with ctx.wrap_socket(s, server_hostname=server_hostname) as t:
                    self.version, self.alpn = t.version(), t.selected_alpn_protocol()
                    self.der, self.cert = t.getpeercert(binary_form=True), t.getpeercert()
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"

    def describe(self):
        if self.error:
            return self.error
        return f"{self.version}, ALPN {self.alpn}, {names(self.cert)}, sha256 {fp(self.der)}"


class Tls:
    def __init__(self, args, res):
        self.args, self.res = args, res
        u = urllib.parse.urlsplit(args.base_url)
        self.host, self.port = u.hostname, u.port
        self.origin = f"https://{self.host}:{self.port}"
        self.health = f"{self.origin}/health"
        self.ca = os.path.join(args.tls_dir, "ca.pem")
        self.live = os.path.join(args.tls_dir, "live")
        self.archive = os.path.join(args.tls_dir, "archive")
        self.leaf = {n: leaf_der(os.path.join(self.archive, f"fullchain{n}.pem")) for n in (1, 2, 3)}
        self.xmpp = None
        self.curl = shutil.which("curl")

    # ---- plumbing
    async def blocking(self, fn, *a, **kw):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*a, **kw))

    def hs(self, alpn=("h2", "http/1.1"), **kw):
        return Handshake(self.host, self.port, tls_context(self.ca, alpn=alpn), self.host, **kw)

    def log_lines(self, what):
        with open(self.args.sluice_log, errors="replace") as f:
            return [ANSI.sub("", line) for line in f if what in ANSI.sub("", line)]

    async def wait_log(self, what, before, limit=LOG_WAIT):
        """Wait until the log has more than `before` lines with `what`; the new lines."""
        end = time.monotonic() + limit
        while True:
            lines = self.log_lines(what)
            if len(lines) > before or time.monotonic() > end:
                return lines[before:]
            await asyncio.sleep(0.2)

    async def wait_cert(self, n, limit=RELOAD_WAIT):
        """Poll new handshakes until one presents leaf n; (seconds, last handshake, ok)."""
        t0 = time.monotonic()
        while True:
            h = await self.blocking(self.hs)
            if h.der == self.leaf[n]:
                return time.monotonic() - t0, h, True
            if time.monotonic() - t0 > limit:
                return time.monotonic() - t0, h, False
            await asyncio.sleep(0.2)

    def install(self, src_name, live_name, symlink=False):
        """Replace live/<live_name> atomically: a copy (write + rename) or, certbot-style, a
        symlink to ../archive/<src_name>."""
        dst = os.path.join(self.live, live_name)
        fd, tmp = tempfile.mkstemp(dir=self.live, prefix=f".{live_name}.")
        os.close(fd)
        if symlink:
            os.unlink(tmp)
            os.symlink(os.path.join("..", "archive", src_name), tmp)
        else:
            with open(os.path.join(self.archive, src_name), "rb") as f:
                data = f.read()
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600 if "privkey" in live_name else 0o644)
        os.replace(tmp, dst)

    def run_curl(self, *a):
        """curl with the test CA unless told otherwise; (exit status, stdout, stderr)."""
        cmd = [self.curl, "-sS", "--max-time", "30", *a]
        p = subprocess.run(cmd, capture_output=True, timeout=60)
        return p.returncode, p.stdout, p.stderr.decode(errors="replace").strip()

    async def slot(self, name, size):
        try:
            return await get_slot(self.xmpp, SERVICE, name, size, OCTETS, self.args.timeout)
        except (IqError, IqTimeout) as e:
            self.res.fail(f"slot for {name!r} from {SERVICE}", repr(e))
            return None

    async def upload(self, what, name, size):
        """Slot, PUT (client.py's helper, verified TLS), GET back; True if all good."""
        s = await self.slot(name, size)
        if s is None:
            return False
        put_url, get_url, hdrs = s
        body = payload(size, f"{what}/{time.time()}")
        r = await self.blocking(http_req, "PUT", put_url, body, put_headers(hdrs, size, OCTETS))
        if not self.res.check(r.status == 201, f"{what}: slot PUT over https -> 201", f"PUT {put_url} -> {r.describe()}"):
            return False
        r = await self.blocking(http_req, "GET", get_url)
        return self.res.check(r.status == 200 and r.body == body, f"{what}: GET over https -> 200, same bytes",
                              f"GET {get_url} -> {r.describe()} len={len(r.body)}")

    # ---- 1. handshakes, ALPN, HTTP/2 and HTTP/1.1
    async def handshakes(self):
        res = self.res
        res.scope = "handshake+ALPN"
        h = await self.blocking(self.hs, ("h2", "http/1.1"))
        res.check(h.der == self.leaf[1] and h.version == "TLSv1.3" and h.alpn == "h2",
                  "ALPN h2,http/1.1 offered: h2 selected, TLSv1.3, the initial certificate verified against the test CA",
                  h.describe(), show=True)
        h = await self.blocking(self.hs, ("http/1.1",))
        res.check(h.alpn == "http/1.1", "ALPN http/1.1 only offered: http/1.1 selected", h.describe())
        for label, alpn in (("ALPN http/1.1", ("http/1.1",)), ("no ALPN", None)):
            r = await self.blocking(self.get, self.health, tls_context(self.ca, alpn=alpn))
            res.check(r[0] == 200, f"{label}: HTTP/1.1 GET /health over TLS -> 200", repr(r))
        ctx = tls_context(self.ca)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        h = await self.blocking(Handshake, self.host, self.port, ctx, self.host)
        r = await self.blocking(self.get, self.health, ctx)
        res.check(h.version == "TLSv1.2" and h.der == self.leaf[1] and r[0] == 200,
                  "TLS 1.2 (client maximum): handshake verified, GET /health -> 200",
                  f"{h.describe()}; GET -> {r!r}", show=True)
        h = await self.blocking(Handshake, "127.0.0.1", self.port, tls_context(self.ca), "127.0.0.1")
        res.check(h.der == self.leaf[1], "by IP address (no SNI): the certificate verifies (IP SAN 127.0.0.1)",
                  h.describe())

        if not self.curl:
            res.fail("curl not found: no HTTP/2 upload")
            return
        s = await self.slot("h2 upload.bin", 300 * 1000)
        if s is None:
            return
        put_url, get_url, hdrs = s
        body = payload(300 * 1000, f"h2/{time.time()}")
        with tempfile.NamedTemporaryFile() as f:
            f.write(body)
            f.flush()
            hargs = [x for k, v in put_headers(hdrs, len(body), OCTETS) if k != "Content-Length"
                     for x in ("-H", f"{k}: {v}")]
            rc, out, err = await self.blocking(self.run_curl, "--cacert", self.ca, "--http2", "-T", f.name,
                                               *hargs, "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                                               put_url)
        res.check(out == b"201 2", "curl PUT of a slot over HTTP/2 (ALPN h2) -> 201",
                  f"curl --http2 -T ... {put_url} -> exit {rc}, {out!r} {err}")
        for flag, want in (("--http2", b"2"), ("--http1.1", b"1.1")):
            with tempfile.NamedTemporaryFile() as f:
                rc, out, err = await self.blocking(self.run_curl, "--cacert", self.ca, flag, "-o", f.name,
                                                   "-w", "%{http_code} %{http_version}", get_url)
                got = f.read()
            res.check(out == b"200 " + want and got == body,
                      f"curl GET over HTTP/{want.decode()} -> 200, same bytes",
                      f"curl {flag} {get_url} -> exit {rc}, {out!r} {err}, {len(got)} bytes")

    @staticmethod
    def get(url, ctx, conn=None):
        """GET over https with `ctx`: (status, body length) or the error."""
        u = urllib.parse.urlsplit(url)
        try:
            c = conn or http.client.HTTPSConnection(u.hostname, u.port, timeout=15, context=ctx)
            c.request("GET", u.path)
            r = c.getresponse()
            body = r.read()
            if conn is None:
                c.close()
            return r.status, len(body)
        except Exception as e:  # noqa: BLE001
            return None, f"{type(e).__name__}: {e}"

    # ---- 2. verification must not be skipped
    async def verification(self):
        res = self.res
        res.scope = "verification"
        h = await self.blocking(Handshake, self.host, self.port, tls_context(default_store=True), self.host)
        res.check(h.error is not None and "CERTIFICATE_VERIFY_FAILED" in h.error,
                  "without the test CA (system trust store): the handshake fails verification",
                  h.describe(), show=True)
        saved = client._TLS_CAFILE
        client.set_cafile(None)
        try:
            r = await self.blocking(http_req, "GET", self.health)
        finally:
            client.set_cafile(saved)
        res.check(r.status is None and "CERTIFICATE_VERIFY_FAILED" in (r.error or ""),
                  "client.py's HTTP helper without --cafile: no response, verification failed",
                  r.describe(), show=True)
        if self.curl:
            rc, out, err = await self.blocking(self.run_curl, "-o", "/dev/null", self.health)
            res.check(rc == 60, "curl without the test CA: exit 60 (certificate problem)", f"exit {rc}: {err}",
                      show=True)
        h = await self.blocking(Handshake, self.host, self.port, tls_context(self.ca), "upload.example.org",
                                connect_to=self.host)
        res.check(h.error is not None and "CERTIFICATE_VERIFY_FAILED" in h.error,
                  "another host name (upload.example.org) with the test CA: verification fails",
                  h.describe(), show=True)
        r = await self.blocking(self.plain_http)
        res.check(not r.startswith(b"HTTP/1.1 2") and not r.startswith(b"HTTP/1.0 2"),
                  "plain HTTP on the TLS port gets no HTTP answer", f"got {r[:120]!r}")

    def plain_http(self):
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
                return s.recv(200)
        except OSError as e:
            return f"{type(e).__name__}".encode()

    # ---- 3. renewal by write + rename, with connections open
    async def renewal(self):
        res = self.res
        res.scope = "renewal"
        # A file to download while the certificate changes.
        big = await self.slot("during renewal.bin", 4 * 1024 * 1024)
        if big is None:
            return
        big_body = payload(4 * 1024 * 1024, f"big/{time.time()}")
        r = await self.blocking(http_req, "PUT", big[0], big_body, put_headers(big[2], len(big_body), OCTETS))
        res.check(r.status == 201, "4 MiB file for the download across the renewal: PUT -> 201", r.describe())

        # Half a renewal: the new certificate, the old key. Refused; the running one stays.
        errors = len(self.log_lines("TLS certificate not reloaded"))
        self.install("fullchain2.pem", "fullchain.pem")
        new = await self.wait_log("TLS certificate not reloaded", errors)
        res.check(bool(new), "a new certificate with the old key (mismatch): the log shows the reload refused",
                  (new[0].strip()[:300] if new else f"no such log line within {LOG_WAIT} s"), show=True)
        h = await self.blocking(self.hs)
        r = await self.blocking(self.get, self.health, tls_context(self.ca))
        res.check(h.der == self.leaf[1] and r[0] == 200,
                  "after the refused reload the running certificate stays and is served",
                  f"{h.describe()}; GET /health -> {r!r}")

        # Connections open before the renewal: an idle keep-alive one, a download in progress.
        ka = http.client.HTTPSConnection(self.host, self.port, timeout=15, context=tls_context(self.ca))
        try:
            ka.connect()
        except Exception as e:  # noqa: BLE001
            info(f"keep-alive connection: {e!r}")
        ka.auto_open = 0  # no silent reconnect: the second request must use this connection
        first = await self.blocking(self.get, self.health, None, ka)
        ka_der = ka.sock.getpeercert(binary_form=True) if ka.sock else None
        res.check(first[0] == 200 and ka_der == self.leaf[1],
                  "keep-alive connection opened before the renewal: GET /health -> 200 (initial certificate)",
                  f"{first!r}, certificate sha256 {fp(ka_der)}")
        dl = http.client.HTTPSConnection(self.host, self.port, timeout=15, context=tls_context(self.ca))
        dl.request("GET", urllib.parse.urlsplit(big[1]).path)
        dl_resp = dl.getresponse()
        dl_head = dl_resp.read(64 * 1024)

        reloads = len(self.log_lines("TLS certificate reloaded"))
        self.install("privkey2.pem", "privkey.pem")
        self.install("fullchain2.pem", "fullchain.pem")
        secs, h, ok = await self.wait_cert(2)
        res.check(ok, f"renewal (key and certificate written + renamed): new handshakes get it within {RELOAD_WAIT} s",
                  f"after {secs:.1f} s: {h.describe()}; want sha256 {fp(self.leaf[2])}", show=True)
        new = await self.wait_log("TLS certificate reloaded", reloads)
        res.check(bool(new), "the log shows the reload", (new[0].strip()[:300] if new else "no such log line"))

        second = await self.blocking(self.get, self.health, None, ka)
        still = ka.sock is not None and ka.sock.getpeercert(binary_form=True) == self.leaf[1]
        res.check(second[0] == 200 and still,
                  "the keep-alive connection opened before: a second request on it -> 200 (same connection)",
                  f"{second!r}, same TLS connection with the old certificate: {still}")
        ka.close()
        try:
            rest = await self.blocking(dl_resp.read)
            dl.close()
            got = dl_head + rest
        except Exception as e:  # noqa: BLE001
            got = f"{type(e).__name__}: {e}".encode()
        res.check(got == big_body, "a download in progress across the renewal completes, same bytes",
                  f"got {len(got)} bytes of {len(big_body)}: {got[:100]!r}")
        await self.upload("after the renewal", "after renewal.bin", 50 * 1000)

    # ---- 5. silent clients (started first, checked last; they run meanwhile)
    def silent(self, tls_alpn, limit):
        """Connect (and with `tls_alpn` not None, finish a TLS handshake offering it), send
        nothing; seconds until the server closes, or None if it is still open after `limit`."""
        t0 = time.monotonic()
        try:
            s = socket.create_connection((self.host, self.port), timeout=10)
            if tls_alpn is not None:
                s = tls_context(self.ca, alpn=tls_alpn or None).wrap_socket(s, server_hostname=self.host)
            s.settimeout(max(0.1, limit - (time.monotonic() - t0)))
            with s:
                while s.recv(4096):
                    pass
            return time.monotonic() - t0
        except (TimeoutError, socket.timeout):
            return None
        except OSError:
            return time.monotonic() - t0  # reset: closed too

    def start_silent(self):
        with open(self.args.sluice_config, "rb") as f:
            cfg = tomllib.load(f)
        self.hrt = seconds(cfg.get("server", {}).get("header_read_timeout", "10s"))
        limit = self.hrt + 3
        loop = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)  # not the default pool's threads
        self.silent_probes = [(label, loop.run_in_executor(pool, self.silent, alpn, limit)) for label, alpn in (
            ("no bytes at all (no ClientHello)", None),
            ("TLS handshake (ALPN http/1.1), then no request", ("http/1.1",)),
            ("TLS handshake (ALPN h2), then no connection preface", ("h2",)),
            ("TLS handshake (no ALPN), then no request", ()),
        )]

    async def check_silent(self):
        res = self.res
        res.scope = "silent clients"
        got = [(label, await fut) for label, fut in self.silent_probes]
        desc = [f"{label}: " + (f"closed after {secs:.1f} s" if secs is not None else
                                f"still open after {self.hrt + 3:g} s") for label, secs in got]
        res.check(got[0][1] is not None, f"a client that sends nothing (no ClientHello) is closed within "
                  f"header_read_timeout ({self.hrt:g} s) + 3 s", desc[0], show=True)
        res.check(all(secs is not None for _, secs in got[1:]),
                  f"a client that completes the TLS handshake and sends no request is closed within "
                  f"header_read_timeout ({self.hrt:g} s) + 3 s", "; ".join(desc[1:]), show=True)

    # ---- 4. certbot-style renewal, then SIGHUP
    async def certbot_and_hup(self):
        res = self.res
        res.scope = "certbot+SIGHUP"
        self.install("privkey3.pem", "privkey.pem", symlink=True)
        self.install("fullchain3.pem", "fullchain.pem", symlink=True)
        secs, h, ok = await self.wait_cert(3)
        res.check(ok, f"certbot-style renewal (live/ symlinks to archive/, an older mtime): served within {RELOAD_WAIT} s",
                  f"after {secs:.1f} s: {h.describe()}", show=True)

        reloads = len(self.log_lines("TLS certificate reloaded"))
        pid = self.args.sluice_pid
        try:
            os.kill(pid, signal.SIGHUP)
            sent = "sent"
        except OSError as e:
            sent = repr(e)
        new = await self.wait_log("TLS certificate reloaded", reloads)
        res.check(bool(new), f"kill -HUP {pid}: the log shows the reload",
                  (new[0].strip()[:300] if new else f"{sent}; no new log line within {LOG_WAIT} s"), show=True)
        await asyncio.sleep(0.5)
        try:
            os.kill(pid, 0)
            alive = True
        except OSError:
            alive = False
        h = await self.blocking(self.hs)
        r = await self.blocking(self.get, self.health, tls_context(self.ca))
        try:
            plain = urllib.request.urlopen(self.args.metrics_url.replace("/metrics", "/health"), timeout=10).status
        except Exception as e:  # noqa: BLE001
            plain = repr(e)
        res.check(alive and h.der == self.leaf[3] and r[0] == 200 and plain == 200,
                  "after SIGHUP: still running, https (same certificate) and plain http /health -> 200",
                  f"alive={alive}; {h.describe()}; https {r!r}; http {plain!r}")
        await self.upload("after SIGHUP", "after hup.bin", 70 * 1000)

        try:
            text = urllib.request.urlopen(self.args.metrics_url, timeout=10).read().decode()
        except Exception as e:  # noqa: BLE001
            text = repr(e)
        got = dict(re.findall(r'^sluice_tls_certificate_reloads_total\{result="(\w+)"\} (\d+)', text, re.M))
        res.check(int(got.get("ok", 0)) >= 3 and int(got.get("error", 0)) >= 1,
                  "metrics: sluice_tls_certificate_reloads_total ok >= 3 (two renewals, SIGHUP), error >= 1",
                  f"{got}", show=True)

    async def run(self):
        xmpp = Client(JID, PASSWORD)
        host, port = self.args.prosody.rsplit(":", 1)
        xmpp.connect(host=host, port=int(port))
        try:
            await asyncio.wait_for(xmpp.ready, self.args.timeout)
        except Exception as e:  # noqa: BLE001
            self.res.fail(f"log in as {JID} at {self.args.prosody}", repr(e))
            return
        self.xmpp = xmpp
        self.start_silent()
        try:
            await self.handshakes()
            await self.verification()
            await self.renewal()
            await self.certbot_and_hup()
            await self.check_silent()
        finally:
            xmpp.disconnect()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="the https base URL Prosody's upload-tls.localhost signs under")
    ap.add_argument("--tls-dir", required=True, help="run.sh's certificate dir (ca.pem, live/, archive/)")
    ap.add_argument("--sluice-pid", required=True, type=int, help="the Sluice process, for SIGHUP")
    ap.add_argument("--sluice-log", required=True)
    ap.add_argument("--metrics-url", required=True, help="Sluice's plain-HTTP /metrics")
    ap.add_argument("--sluice-config", required=True, help="its config (server.header_read_timeout)")
    ap.add_argument("--prosody", required=True, help="HOST:PORT of Prosody's c2s listener")
    ap.add_argument("--secret", help="unused (run.sh passes it to every script)")
    ap.add_argument("--label", default="tls")
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR,
                        format="%(levelname)s %(name)s %(message)s")
    client.set_cafile(os.path.join(args.tls_dir, "ca.pem"))
    res = Results(args.label)
    info(f"certificates in {args.tls_dir}; Sluice pid {args.sluice_pid}")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(Tls(args, res).run())
    for scope, (p, f, k) in res.by_scope.items():
        print(f"SCENARIO {args.label}: {scope}: {p} passed, {f} failed, {k} skipped", flush=True)
    print("RESULT " + json.dumps({"passed": res.passed, "failed": res.failed, "skipped": res.skipped}),
          flush=True)
    sys.exit(1 if res.failed or not res.passed else 0)


if __name__ == "__main__":
    main()
