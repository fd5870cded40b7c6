#!/usr/bin/env python3
"""XEP-0363 interop client for Sluice.

Logs in to an XMPP server with slixmpp, discovers the HTTP upload services (XEP-0363), and
for each expected service requests slots for files of several sizes and names, checks that the
slot is signed the way docs/protocols.md section 1 says, PUTs the file to Sluice (sending the
slot's <header/> elements), GETs/HEADs it back (SHA-256 must match), checks that a second PUT
gets 409, and runs a few negative checks (bad MAC, wrong size, truncated body, no token).

Every check prints one line `PASS ...`, `FAIL ...` or `SKIP ...`; the last line is
`RESULT {"passed": N, "failed": N, "skipped": N}`. Exit status 0 only if nothing failed.

An https base URL is used over TLS, always verified (certificate chain and host name) against
`--cafile` (the suite's throwaway CA) or else the system trust store; a first check is the
handshake itself.

    client.py --jid alice@localhost --password pw --server 127.0.0.1:5222 \
        --secret S --base-url http://127.0.0.1:5050/upload/ \
        --service upload-v1.localhost=v1 --service share.localhost=jwt
    client.py ... --base-url https://localhost:5443/upload/ --cafile W/tls/ca.pem ...
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import socket
import ssl
import sys
import time
import urllib.parse

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

NS_UPLOAD = "urn:xmpp:http:upload:0"

# (label, filename, size, content-type requested in the slot, Content-Type sent on the PUT)
# The PUT type None means no Content-Type header at all.
CASES = [
    ("empty", "empty.txt", 0, "text/plain", "text/plain"),
    ("1 byte", "one.txt", 1, "text/plain", "text/plain"),
    ("100 KiB", "hundred.bin", 100 * 1024, "application/octet-stream", "application/octet-stream"),
    ("5 MiB", "five mib.bin", 5 * 1024 * 1024, "application/octet-stream", "application/octet-stream"),
    ("unicode", "très cool.jpg", 23456, "image/jpeg", "image/jpeg"),
    ("plus-percent", "a+b%20c 100%.txt", 1000, "text/plain", "text/plain"),
    ("cjk", "文件 ünïcödé.png", 4321, "image/png", "image/png"),
    ("default slot type, no PUT Content-Type", "noctype.dat", 777, None, None),
    # Psi: typed slot, PUT without Content-Type (v2 must fall back to the extension's type)
    ("typed slot, no PUT Content-Type (Psi)", "photo.jpg", 3000, "image/jpeg", None),
    # Converse.js: typed slot, empty Content-Type on the PUT
    ("typed slot, empty PUT Content-Type (Converse.js)", "picture.png", 3100, "image/png", ""),
]

# Characters that may be left as they are in a request target; everything else
# (space, non-ASCII) is percent-encoded the way browsers and HTTP libraries do.
URL_SAFE = "!#$%&'()*+,/:;=?@[]~-._"


class Results:
    def __init__(self, label):
        self.label = label
        self.passed = self.failed = self.skipped = 0
        self.scope = "login+discovery"
        self.by_scope = {}  # scope -> [passed, failed, skipped]

    def _count(self, i):
        self.by_scope.setdefault(self.scope, [0, 0, 0])[i] += 1

    def ok(self, what, detail=""):
        self.passed += 1
        self._count(0)
        print(f"PASS [{self.label}] {what}" + (f" ({detail})" if detail else ""), flush=True)

    def fail(self, what, detail=""):
        self.failed += 1
        self._count(1)
        print(f"FAIL [{self.label}] {what}" + (f"\n     {detail}" if detail else ""), flush=True)

    def skip(self, what, detail=""):
        self.skipped += 1
        self._count(2)
        print(f"SKIP [{self.label}] {what}" + (f" ({detail})" if detail else ""), flush=True)

    def check(self, cond, what, detail="", show=False):
        """Record one check; `detail` is printed for failures (and for passes if `show`)."""
        if cond:
            self.ok(what, detail if show else "")
        else:
            self.fail(what, detail)
        return cond


def info(msg):
    print(f"INFO {msg}", flush=True)


# ---------------------------------------------------------------------------- HTTP

class Resp:
    def __init__(self, status, headers, body, error=None):
        self.status, self.headers, self.body, self.error = status, headers, body, error
        self.sent_body = None  # expect_put: whether the body went out (after 100 Continue)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def describe(self):
        if self.error:
            return f"no response: {self.error}"
        hdrs = "; ".join(f"{k}: {v}" for k, v in self.headers)
        return f"HTTP {self.status} [{hdrs}] body={self.body[:200]!r}"


# ---- TLS: https URLs are always verified (CERT_REQUIRED and the host name), against the CA
# given with --cafile (set_cafile) or else the system's trust store; never without verification.
_TLS_CAFILE = None


def set_cafile(path):
    """Verify https URLs against this CA file only (the suite's throwaway CA)."""
    global _TLS_CAFILE
    _TLS_CAFILE = path


def tls_context(cafile=None, alpn=("http/1.1",), default_store=False):
    """A verifying client context: `cafile` (else set_cafile's, else the system store)."""
    cafile = None if default_store else (cafile or _TLS_CAFILE)
    ctx = ssl.create_default_context(cafile=cafile)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    # create_default_context does this already; refuse to go on if anything turned it off.
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        raise RuntimeError("TLS context does not verify the certificate")
    return ctx


def request_target(url):
    """(host, port, target, https) of a URL; the target percent-encoded as clients send it."""
    u = urllib.parse.urlsplit(url)
    target = u.path or "/"
    if u.query:
        target += "?" + u.query
    https = u.scheme == "https"
    return u.hostname, u.port or (443 if https else 80), urllib.parse.quote(target, safe=URL_SAFE), https


def connect(host, port, https, timeout):
    """A TCP connection, wrapped in verified TLS for https."""
    s = socket.create_connection((host, port), timeout=timeout)
    if not https:
        return s
    try:
        return tls_context().wrap_socket(s, server_hostname=host)
    except BaseException:
        s.close()
        raise


def http_req(method, url, body=None, headers=(), timeout=60):
    """One HTTP/1.1 request with exactly the headers given (plus Host); https verified."""
    host, port, target, https = request_target(url)
    try:
        if https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            try:
                conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early and closed; its answer may still be readable
        r = conn.getresponse()
        data = r.read() if method != "HEAD" else b""
        resp = Resp(r.status, r.getheaders(), data)
        conn.close()
        return resp
    except Exception as e:  # noqa: BLE001 - reported as a failure
        return Resp(None, [], b"", f"{type(e).__name__}: {e}")


def _read_head(f):
    """Read a status line and headers from a socket file; returns (status, headers)."""
    line = f.readline()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", line)
    if not m:
        raise ValueError(f"bad status line {line!r}")
    headers = []
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    return int(m.group(1)), headers


def expect_put(url, headers, body, timeout=30):
    """PUT with `Expect: 100-continue` (what curl does for big bodies): the body is sent only
    after `100 Continue`; a final status before that ends the request."""
    host, port, target, https = request_target(url)
    try:
        s = connect(host, port, https, timeout)
        f = s.makefile("rb")
        head = f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\nExpect: 100-continue\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "Connection: close\r\n\r\n"
        s.sendall(head.encode("latin-1"))
        status, hdrs = _read_head(f)
        sent_body = status == 100
        if sent_body:
            try:
                s.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered early; try to read the answer
            status, hdrs = _read_head(f)
        n = int(dict((k.lower(), v) for k, v in hdrs).get("content-length", "0"))
        data = f.read(n) if n else b""
        s.close()
        r = Resp(status, hdrs, data)
        r.sent_body = sent_body
        return r
    except Exception as e:  # noqa: BLE001
        return Resp(None, [], b"", f"{type(e).__name__}: {e}")


def truncated_put(url, headers, declared, sent, timeout=15):
    """PUT declaring `declared` bytes but sending only `sent`, then half-close (over TLS:
    close_notify, then the TCP half-close)."""
    host, port, target, https = request_target(url)
    head = f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {declared}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "Connection: close\r\n\r\n"
    if https:
        try:
            data = tls_half_close(host, port, head.encode("latin-1") + os.urandom(sent), timeout)
        except Exception as e:  # noqa: BLE001
            return Resp(None, [], b"", f"{type(e).__name__}: {e}")
        if not data:
            return Resp(None, [], b"", "connection closed without a response")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return Resp(int(m.group(1)) if m else None, [], data[:300])
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        s.sendall(head.encode("latin-1") + os.urandom(sent))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
    except Exception as e:  # noqa: BLE001
        return Resp(None, [], b"", f"{type(e).__name__}: {e}")
    if not data:
        return Resp(None, [], b"", "connection closed without a response")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return Resp(int(m.group(1)) if m else None, [], data[:300])


def tls_half_close(host, port, data, timeout):
    """Over verified TLS: send `data`, then close_notify and a TCP half-close (what a client
    that gives up sends); returns the plaintext received until the server closes. Done with
    memory BIOs: ssl.SSLSocket cannot half-close and still read."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = tls_context().wrap_bio(inc, out, server_hostname=host)

        def flush():
            b = out.read()
            if b:
                raw.sendall(b)

        def pump():
            b = raw.recv(65536)
            if b:
                inc.write(b)
            else:
                inc.write_eof()
            return bool(b)

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not pump():
                    raise ConnectionError("closed during the TLS handshake")
        flush()
        obj.write(data)
        flush()
        try:
            obj.unwrap()  # sends close_notify; the peer's comes later (or never)
        except ssl.SSLWantReadError:
            pass
        flush()
        raw.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            try:
                chunk = obj.read(65536)
            except ssl.SSLWantReadError:
                if not pump():
                    break
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            got += chunk
        return got
    finally:
        raw.close()


def payload(n, seed):
    """Deterministic, incompressible-ish bytes."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


# ---------------------------------------------------------------------------- slot checks

def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def signed_path(put_url, base_url):
    """The contract's `path`: percent-decoded, URL prefix removed, no leading '/'."""
    path = urllib.parse.urlsplit(put_url).path
    prefix = urllib.parse.urlsplit(base_url).path
    if not path.startswith(prefix):
        return None
    return urllib.parse.unquote(path[len(prefix):].lstrip("/"), errors="strict")


def ejabberd_name(filename):
    """ejabberd's file name sanitising: chars outside [\\p{L}\\p{N}_.-] become '_'."""
    return "".join(c if (c.isalnum() or c in "_.-") else "_" for c in filename)


def verify_slot(kind, secret, base_url, put_url, get_url, headers, filename, size, ctype, jid=None):
    """Return (ok, detail) for the slot's signature against the contract formulas."""
    key = secret.encode()
    u = urllib.parse.urlsplit(put_url)
    q = urllib.parse.parse_qs(u.query)
    if urllib.parse.urlsplit(get_url)._replace(query="").geturl() != u._replace(query="").geturl():
        return False, f"GET URL {get_url!r} is not the PUT URL without its query {put_url!r}"
    path = signed_path(put_url, base_url)
    if path is None:
        return False, f"PUT URL {put_url!r} is not under {base_url!r}"
    if kind in ("v1", "ejabberd"):
        mac = hmac.new(key, f"{path} {size}".encode(), hashlib.sha256).hexdigest()
        given = (q.get("v") or [""])[0]
        ok = hmac.compare_digest(mac, given.lower())
        detail = f"v over {path!r} {size}: {'match' if ok else f'expected {mac}, slot has {given!r}'}"
        if kind == "ejabberd":
            parts = path.split("/")
            want_user = hashlib.sha1(jid.encode()).hexdigest() if jid else None
            shape = (len(parts) == 3 and parts[0] == want_user
                     and re.fullmatch(r"[A-Za-z0-9]{40}", parts[1]) is not None
                     and parts[2] == ejabberd_name(filename))
            if not shape:
                ok = False
                detail += (f"; path is not <sha1({jid})={want_user}>/<40 alnum>/"
                           f"{ejabberd_name(filename)!r}")
        return ok, detail
    if kind == "v2":
        msg = f"{path}\0{size}\0{ctype or 'application/octet-stream'}"
        mac = hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()
        given = (q.get("v2") or [""])[0]
        ok = hmac.compare_digest(mac, given.lower())
        return ok, f"v2 over {msg!r}: {'match' if ok else f'expected {mac}, slot has {given!r}'}"
    if kind == "jwt":
        authz = headers.get("Authorization", "")
        if not authz.startswith("Bearer "):
            return False, f"slot headers {headers!r} carry no Bearer token"
        h, p, s = authz[7:].split(".")
        good = hmac.compare_digest(hmac.new(key, f"{h}.{p}".encode(), hashlib.sha256).digest(), b64url_decode(s))
        claims = json.loads(b64url_decode(p))
        problems = []
        if not good:
            problems.append("bad HS256 signature")
        if json.loads(b64url_decode(h)).get("alg") != "HS256":
            problems.append("alg is not HS256")
        if claims.get("slot") != path.split("/")[0]:
            problems.append(f"slot claim {claims.get('slot')!r} != first path segment")
        if claims.get("filesize") != size:
            problems.append("filesize claim mismatch")
        if claims.get("filename") != filename or path.split("/", 1)[-1] != filename:
            problems.append("filename claim/path mismatch")
        return not problems, (", ".join(problems) or "signature and claims match") + f"; claims={claims}"
    raise ValueError(kind)


def tamper_url(put_url):
    """Flip the last hex digit of the MAC in the query."""
    u = urllib.parse.urlsplit(put_url)
    q = u.query
    flipped = q[:-1] + ("0" if q[-1] != "0" else "1")
    return u._replace(query=flipped).geturl()


# ---------------------------------------------------------------------------- XMPP client

class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # Loopback only, no TLS: let SCRAM run over the plain stream.
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0363")
        self["feature_mechanisms"].unencrypted_scram = True
        self["feature_mechanisms"].unencrypted_plain = True
        self.ready = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("failed_auth", lambda *_: self._fail("authentication failed"))
        self.add_event_handler("connection_failed", lambda e: self._fail(f"connection failed: {e}"))

    def _started(self, _event):
        if not self.ready.done():
            self.ready.set_result(True)

    def _fail(self, why):
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))


async def discover(xmpp, res, expected, timeout):
    """disco#items on our domain, disco#info on each item; returns {jid: max_size}."""
    found = {}
    items = await xmpp["xep_0030"].get_items(jid=xmpp.boundjid.domain, timeout=timeout)
    for item in items["disco_items"]["items"]:
        jid = item[0]
        try:
            inf = await xmpp["xep_0030"].get_info(jid=jid, timeout=timeout)
        except (IqError, IqTimeout):
            continue
        if NS_UPLOAD in inf["disco_info"]["features"]:
            max_size = None
            for form in inf["disco_info"].iterables:
                if form.name == "x":
                    values = form.get_values()
                    if values.get("FORM_TYPE") in (NS_UPLOAD, [NS_UPLOAD]):
                        max_size = values.get("max-file-size")
            found[jid] = max_size
    info(f"upload services on {xmpp.boundjid.domain}: {found}")
    for jid in expected:
        res.check(jid in found, f"disco finds upload service {jid}",
                  f"max-file-size={found.get(jid)}" if jid in found else f"found only {sorted(found)}")
    # slixmpp's own helper should find one of them as well
    iq = await xmpp["xep_0363"].find_upload_service(timeout=timeout)
    res.check(iq is not None and str(iq["from"]) in found,
              "slixmpp xep_0363.find_upload_service finds a service",
              str(iq["from"]) if iq is not None else "none")
    return found


async def get_slot(xmpp, service, filename, size, ctype, timeout):
    iq = await xmpp["xep_0363"].request_slot(service, filename, size, ctype, timeout=timeout)
    slot = iq["http_upload_slot"]
    put_url = slot["put"]["url"]
    get_url = slot["get"]["url"]
    headers = {h["name"]: h["value"] for h in slot["put"]["headers"]}
    return put_url, get_url, headers


def put_headers(slot_headers, size, ctype):
    hdrs = [("Content-Length", str(size))]
    if ctype is not None:
        hdrs.append(("Content-Type", ctype))
    hdrs += list(slot_headers.items())
    return hdrs


async def run_service(xmpp, res, service, kind, args):
    loop = asyncio.get_running_loop()
    T = args.timeout
    tag = f"{service} ({kind})"

    async def do_http(*a, **kw):
        return await loop.run_in_executor(None, lambda: http_req(*a, **kw))

    for label, filename, size, ctype, put_ctype in CASES:
        what = f"{tag} {label} {filename!r} {size} B"
        try:
            put_url, get_url, slot_headers = await get_slot(xmpp, service, filename, size, ctype, T)
        except IqError as e:
            err = e.iq["error"]
            detail = f"{err['type']}/{err['condition']}: {err['text']}"
            if size == 0:
                res.skip(f"{what}: slot refused by the XMPP server", detail)
            else:
                res.fail(f"{what}: slot request", detail)
            continue
        except IqTimeout:
            res.fail(f"{what}: slot request", "timed out")
            continue
        res.ok(f"{what}: slot granted")
        info(f"{tag} slot for {filename!r}: PUT {put_url} GET {get_url} headers={slot_headers}")
        if any(ord(c) > 127 or c == " " for c in put_url):
            info(f"{tag} slot URL is not fully percent-encoded: {put_url!r}")

        ok, detail = verify_slot(kind, args.secret, args.base_url, put_url, get_url,
                                 slot_headers, filename, size, ctype, jid=xmpp.boundjid.bare)
        res.check(ok, f"{what}: slot signature matches the contract", detail, show=True)

        body = payload(size, f"{service}/{filename}/{time.time()}")
        digest = hashlib.sha256(body).hexdigest()
        hdrs = put_headers(slot_headers, size, put_ctype)
        r = await do_http("PUT", put_url, body, hdrs)
        if not res.check(r.status == 201, f"{what}: PUT -> 201",
                         f"PUT {put_url} headers={hdrs} -> {r.describe()}"):
            continue
        r = await do_http("GET", get_url)
        got = hashlib.sha256(r.body).hexdigest()
        res.check(r.status == 200 and got == digest, f"{what}: GET -> 200, SHA-256 matches",
                  f"GET {get_url} -> {r.describe()} sha256={got} want {digest} len={len(r.body)}")
        r = await do_http("HEAD", get_url)
        res.check(r.status == 200 and r.header("Content-Length") == str(size),
                  f"{what}: HEAD -> 200 with Content-Length {size}", f"HEAD {get_url} -> {r.describe()}")
        if size > 1024 * 1024:
            r = await loop.run_in_executor(None, lambda: expect_put(put_url, hdrs, body))
            res.check(r.status == 409, f"{what}: second PUT (Expect: 100-continue) to the same URL -> 409",
                      f"PUT {put_url} (Expect: 100-continue) -> {r.describe()}")
        else:
            r = await do_http("PUT", put_url, body, hdrs)
            res.check(r.status == 409, f"{what}: second PUT to the same URL -> 409",
                      f"PUT {put_url} -> {r.describe()}")

    # ---- negative checks, each on a fresh slot; the slot must stay usable afterwards
    size, ctype = 2048, "application/octet-stream"

    async def fresh(name):
        return await get_slot(xmpp, service, name, size, ctype, T)

    async def still_usable(what, put_url, get_url, slot_headers):
        r = await do_http("GET", get_url)
        res.check(r.status == 404, f"{what}: nothing published (GET -> 404)", f"GET {get_url} -> {r.describe()}")
        body = payload(size, what)
        r = await do_http("PUT", put_url, body, put_headers(slot_headers, size, ctype))
        res.check(r.status == 201, f"{what}: the genuine PUT still succeeds afterwards (201)",
                  f"PUT {put_url} -> {r.describe()}")

    body = payload(size, "neg")
    try:
        # wrong signature
        what = f"{tag} tampered signature"
        put_url, get_url, sh = await fresh("tampered.bin")
        if kind == "jwt":
            bad = dict(sh)
            head, _, sig = sh["Authorization"].rpartition(".")
            sig = sig[:5] + ("B" if sig[5] != "B" else "C") + sig[6:]  # a full 6-bit char of the signature
            bad["Authorization"] = f"{head}.{sig}"
            r = await do_http("PUT", put_url, body, put_headers(bad, size, ctype))
            res.check(r.status == 401, f"{what}: PUT -> 401", f"PUT {put_url} -> {r.describe()}")
        else:
            bad_url = tamper_url(put_url)
            r = await do_http("PUT", bad_url, body, put_headers(sh, size, ctype))
            res.check(r.status == 403, f"{what}: PUT -> 403", f"PUT {bad_url} -> {r.describe()}")
        await still_usable(what, put_url, get_url, sh)

        # a body of another size than the one signed
        what = f"{tag} size differs from the slot"
        put_url, get_url, sh = await fresh("wrongsize.bin")
        other = payload(size + 1, "wrongsize")
        r = await do_http("PUT", put_url, other, put_headers(sh, size + 1, ctype))
        want = 413 if kind == "jwt" else 403
        res.check(r.status == want, f"{what}: PUT -> {want}", f"PUT {put_url} -> {r.describe()}")
        await still_usable(what, put_url, get_url, sh)

        # body shorter than Content-Length, then the client goes away
        what = f"{tag} truncated body"
        put_url, get_url, sh = await fresh("truncated.bin")
        hdrs = [h for h in put_headers(sh, size, ctype) if h[0] != "Content-Length"]
        r = await loop.run_in_executor(None, lambda: truncated_put(put_url, hdrs, size, size // 2))
        if os.environ.get("INTEROP_BEHIND_PROXY"):
            # nginx drops a request whose client went away mid-body without answering it;
            # what matters is checked next (nothing published, the path still usable).
            res.check(r.status in (400, None), f"{what}: PUT -> 400 or closed by the proxy",
                      f"PUT {put_url} -> {r.describe()}")
        else:
            res.check(r.status == 400, f"{what}: PUT -> 400", f"PUT {put_url} -> {r.describe()}")
        await still_usable(what, put_url, get_url, sh)

        if kind == "jwt":
            what = f"{tag} no Authorization header"
            put_url, get_url, sh = await fresh("noauth.bin")
            r = await do_http("PUT", put_url, body, put_headers({}, size, ctype))
            res.check(r.status == 401 and (r.header("WWW-Authenticate") or "").startswith("Bearer"),
                      f"{what}: PUT -> 401 with WWW-Authenticate: Bearer", f"PUT {put_url} -> {r.describe()}")
            await still_usable(what, put_url, get_url, sh)
        else:
            what = f"{tag} no signature in the query"
            put_url, get_url, sh = await fresh("nomac.bin")
            bare = urllib.parse.urlsplit(put_url)._replace(query="").geturl()
            r = await do_http("PUT", bare, body, put_headers(sh, size, ctype))
            res.check(r.status in (401, 403), f"{what}: PUT -> 403 (or 401)", f"PUT {bare} -> {r.describe()}")
            await still_usable(what, put_url, get_url, sh)
    except (IqError, IqTimeout) as e:
        res.fail(f"{tag} negative checks: slot request failed", repr(e))


def check_tls_endpoint(res, base_url):
    """The https base URL's server presents a certificate that verifies (against --cafile)."""
    host, port, _, _ = request_target(base_url)
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            with tls_context(alpn=("h2", "http/1.1")).wrap_socket(s, server_hostname=host) as t:
                cert = t.getpeercert()
                detail = (f"{t.version()}, ALPN {t.selected_alpn_protocol()}, subject "
                          f"{dict(x[0] for x in cert.get('subject', ()))}, issuer "
                          f"{dict(x[0] for x in cert.get('issuer', ()))}")
        ok = bool(cert)  # getpeercert() is empty unless the certificate was verified
    except Exception as e:  # noqa: BLE001
        ok, detail = False, f"{type(e).__name__}: {e}"
    res.check(ok, f"TLS: {host}:{port} presents a certificate verified against "
              f"{_TLS_CAFILE or 'the system trust store'} (host name checked)", detail, show=True)


async def main_async(args):
    res = Results(args.label)
    if urllib.parse.urlsplit(args.base_url).scheme == "https":
        res.scope = "TLS"
        check_tls_endpoint(res, args.base_url)
        res.scope = "login+discovery"
    expected = dict(s.split("=", 1) for s in args.service)
    xmpp = Client(args.jid, args.password)
    host, port = args.server.rsplit(":", 1)
    xmpp.connect(host=host, port=int(port))
    try:
        await asyncio.wait_for(xmpp.ready, args.timeout)
    except Exception as e:  # noqa: BLE001
        res.fail(f"log in as {args.jid} at {args.server}", repr(e))
        return res
    res.ok(f"log in as {args.jid} at {args.server}")
    try:
        found = await discover(xmpp, res, expected, args.timeout)
        for service, kind in expected.items():
            if service in found:
                res.scope = f"{service} ({kind})"
                await run_service(xmpp, res, service, kind, args)
                res.scope = "login+discovery"
    except (IqError, IqTimeout) as e:
        res.fail("XMPP request failed", repr(e))
    finally:
        xmpp.disconnect()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--server", required=True, help="HOST:PORT of the c2s listener")
    ap.add_argument("--secret", required=True, help="shared secret, to check slot signatures")
    ap.add_argument("--base-url", required=True, help="Sluice upload base URL the XMPP server signs under")
    ap.add_argument("--service", action="append", default=[], help="JID=KIND, KIND in v1|v2|jwt|ejabberd")
    ap.add_argument("--cafile", help="CA to verify https URLs against (default: the system store)")
    ap.add_argument("--label", default="interop")
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    if args.cafile:
        set_cafile(args.cafile)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR,
                        format="%(levelname)s %(name)s %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    res = loop.run_until_complete(main_async(args))
    for scope, (p, f, k) in res.by_scope.items():
        print(f"SCENARIO {args.label}: {scope}: {p} passed, {f} failed, {k} skipped", flush=True)
    print("RESULT " + json.dumps({"passed": res.passed, "failed": res.failed, "skipped": res.skipped}), flush=True)
    sys.exit(1 if res.failed or not res.passed else 0)


if __name__ == "__main__":
    main()
