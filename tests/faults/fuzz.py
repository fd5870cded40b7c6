"""Case 9: fuzzed request targets, query strings and headers with hypothesis (derandomized, no
example database, no shrinking: violations are collected and reported, not raised).

Families (FUZZ_SCALE multiplies the counts):
  paths      any method on odd paths with odd queries and headers: never 5xx, never 2xx for
             an upload method (PUT, POST, PATCH) since no grant is valid
  grants     PUT with forged grants (random, mutated, for another path or size, in the wrong
             parameter, junk JWTs): never 2xx, never 5xx
  traversal  PUT with a *valid* v grant over adversarial paths (dot segments, encoded slashes
             and backslashes, NULs, reserved names): never 5xx; a 201 must be served back by a
             GET of the same URL (and case 9z checks nothing landed outside the store)
  resumable  tus / IETF / chunked routes with junk headers and no valid grant: never 5xx,
             never a 2xx creation
"""
import socket
import time
import urllib.parse

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from harness import sign_v

COUNTS = {"paths": 3500, "grants": 3000, "traversal": 2000, "resumable": 1500}

ODD_SEGMENTS = [
    "..", ".", "", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%2f", "%2F", "..%2f", "..%2F..", "%5c",
    "..%5c..", "\\", "..\\..", "%00", "a%00b", "%0a", "%0d%0a", "%20", "+", "~", "files", "meta",
    "staging", "sessions", "secret.key", "tus", "resumable", "health", "metrics",
    "chunked-upload", "upload-status", "%252e%252e", "%c0%ae%c0%ae", "%ff", "%", "%zz", "%e2%80%ae",
    "con", "a" * 300, "%2e%2e%2f%2e%2e%2fsentinel", "known", "dir", "file.txt", "..;", ";", "?",
    "#", "%23", "%3f", "*", "//", "\u00e9t\u00e9", "%C3%A9", "\u202e", "\ufeff",
]
METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
           "PROPFIND", "get", "G\u00c9T", ""]
HEADER_NAMES = ["Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since",
                "If-Unmodified-Since", "Content-Type", "Accept-Encoding", "Authorization",
                "X-Forwarded-For", "Expect", "Origin", "Access-Control-Request-Method",
                "Access-Control-Request-Headers", "User-Agent", "Cookie", "Upload-Length",
                "Upload-Offset", "Upload-Metadata", "Upload-Concat", "Upload-Checksum",
                "Upload-Complete", "Upload-Incomplete", "Upload-Draft-Interop-Version",
                "Tus-Resumable", "X-HTTP-Method-Override", "X-Filename", "X-Total-Size",
                "X-Chunk-Number", "X-Upload-Session-ID", "Content-Disposition", "TE", "Trailer"]
ODD_VALUES = ["bytes=0-0", "bytes=-1", "bytes=0-", "bytes=5-1", "bytes=0-0,0-0,0-0", "bytes=" + "0-0," * 40,
              "bytes=99999999999999999999-", "bytes=-0", "bytes=a-b", "items=0-1", "*", "W/\"x\"",
              "\"x\"", "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "garbage",
              "Bearer ", "Bearer a.b.c", "Bearer eyJhbGciOiJub25lIn0.eyJzbG90IjoiYSJ9.", "Basic Zm9vOmJhcg==",
              "100-continue", "1.0.0", "0.2.2", "?0", "?1", "-1", "18446744073709551616", "0",
              "application/offset+octet-stream", "multipart/form-data; boundary=x", "text/html",
              "final;/tus/a /tus/b", "partial", "sha1 !!!", "md5 AAAA", "key dmFsdWU=,k2 !!", "\t", "",
              "PATCH", "DELETE", "GET", "127.0.0.1, ::1, junk", "../../etc/passwd", "\u00ff\u00fe"]

header_value = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xff, exclude_characters="\x7f"),
            max_size=40),
    st.integers(min_value=-5, max_value=2 ** 70).map(str),
)
header_name = st.one_of(st.sampled_from(HEADER_NAMES),
                        st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_!#$%&'*+.^`|~0123456789",
                                min_size=1, max_size=20))
headers_st = st.lists(st.tuples(header_name, header_value), max_size=6)

segment = st.one_of(
    st.sampled_from(ODD_SEGMENTS),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters=" \r\n"), min_size=1,
            max_size=12).map(lambda t: urllib.parse.quote(t, safe="")),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=16),
)
raw_path = st.lists(segment, min_size=0, max_size=6).map(lambda segs: "/" + "/".join(segs))

query_param = st.tuples(
    st.sampled_from(["v", "v2", "token", "v3", "expires", "size", "session_id", "x", "", "v[]"]),
    st.one_of(st.text(alphabet="0123456789abcdefABCDEF", max_size=70),
              st.sampled_from(["", "%00", "%zz", "a&b", "=", "1" * 30, "-1"]),
              st.integers(min_value=-10, max_value=2 ** 64).map(str)),
)
query_st = st.one_of(st.just(""), st.lists(query_param, max_size=4).map(
    lambda ps: "?" + "&".join(f"{k}={v}" for k, v in ps)))


def send(port, method, target, headers, body=b"", timeout=5.0):
    """One raw request on a new connection (Connection: close). Returns the status or None."""
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if method.upper() in ("PUT", "POST", "PATCH") or body:
        head.append(f"Content-Length: {len(body)}")
    for k, v in headers:
        if k.lower() in ("content-length", "transfer-encoding", "host", "connection"):
            continue
        head.append(f"{k}: {v}")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    out = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(data)
            end = time.monotonic() + timeout
            while time.monotonic() < end and b"\r\n" not in out:
                part = s.recv(4096)
                if not part:
                    break
                out += part
    except OSError:
        pass
    if out.startswith(b"HTTP/1.1 ") and len(out) >= 12 and out[9:12].isdigit():
        return int(out[9:12])
    return None


def get_body(port, target, timeout=5.0):
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        while True:
            part = s.recv(65536)
            if not part:
                break
            out += part
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else None, body


def decoded(raw):
    """The path the server signs: percent-decoded, without the leading '/' (None if not UTF-8)."""
    try:
        return urllib.parse.unquote_to_bytes(raw)[1:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def fuzz_settings(n):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
                    print_blob=False)


class Tally:
    def __init__(self):
        self.n = 0
        self.status = {}
        self.violations = []

    def see(self, st):
        self.n += 1
        key = "none" if st is None else f"{st // 100}xx"
        self.status[key] = self.status.get(key, 0) + 1

    def bad(self, what):
        if len(self.violations) < 50:
            self.violations.append(what)

    def figure(self, extra=""):
        return ", ".join(f"{k} {v}" for k, v in sorted(self.status.items())) + extra


def fuzz_paths(port, n):
    t = Tally()

    @fuzz_settings(n)
    @given(st.sampled_from(METHODS), raw_path, query_st, headers_st, st.binary(max_size=32))
    def one(method, path, query, headers, body):
        target = path + query
        st_ = send(port, method, target, headers, body)
        t.see(st_)
        if st_ is not None and st_ >= 500:
            t.bad(f"{st_} for {method} {target!r} {headers!r}")
        if st_ is not None and 200 <= st_ < 300 and method.upper() in ("PUT", "POST", "PATCH"):
            if not (method.upper() == "POST" and path in ("/health", "/healthz", "/metrics")):
                t.bad(f"{st_} for {method} {target!r} without a valid grant")

    one()
    return t


def forged(rng, path, size):
    good = sign_v(path, size)
    kinds = [
        lambda: "v=" + "".join(rng.choice("0123456789abcdef") for _ in range(64)),
        lambda: "v=" + good[:-1] + ("0" if good[-1] != "0" else "1"),
        lambda: "v=" + good[:32],
        lambda: "v=" + sign_v(path, size + 1),
        lambda: "v=" + sign_v(path + "x", size),
        lambda: "v=" + sign_v(path.swapcase(), size) if path.swapcase() != path else "v=00",
        lambda: "v2=" + good,
        lambda: "token=" + good,
        lambda: f"v3={good}&expires={int(time.time()) + 3600}",
        lambda: "v=",
        lambda: "v=" + good + "00",
        lambda: "v=zz" + good[2:],
        lambda: f"v={sign_v(path + 'x', size)}&v={'0' * 64}",
        lambda: "v=" + sign_v(path, size, secret="wrong-secret-0123456789"),
    ]
    return rng.choice(kinds)()


def fuzz_grants(port, n):
    t = Tally()

    @fuzz_settings(n)
    @given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789._-", min_size=1,
                            max_size=12), min_size=1, max_size=3),
           st.binary(max_size=64), st.randoms(use_true_random=False), headers_st)
    def one(segs, body, rng, headers):
        path = "/".join(segs)
        q = forged(rng, path, len(body))
        extra = [h for h in headers if h[0].lower() != "authorization"]
        if rng.random() < 0.2:
            extra.append(("Authorization", "Bearer " + rng.choice(
                ["x", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "eyJhbGciOiJub25lIn0.eyJzbG90IjoieCJ9."])))
        st_ = send(port, "PUT", "/" + urllib.parse.quote(path) + "?" + q, extra, body)
        t.see(st_)
        if st_ is not None and (st_ >= 500 or 200 <= st_ < 300):
            t.bad(f"{st_} for PUT /{path}?{q[:40]} ({len(body)} bytes)")

    one()
    return t


def fuzz_traversal(port, n):
    t = Tally()
    created = [0]

    @fuzz_settings(n)
    @given(st.lists(segment, min_size=1, max_size=5), st.binary(min_size=1, max_size=64),
           headers_st)
    def one(segs, body, headers):
        raw = "/" + "/".join(segs)
        path = decoded(raw)
        mac = sign_v(path, len(body)) if path else "00" * 32
        headers = [h for h in headers if h[0].lower() not in ("authorization", "expect")]
        st_ = send(port, "PUT", raw + "?v=" + mac, headers, body)
        t.see(st_)
        if st_ is not None and st_ >= 500:
            t.bad(f"{st_} for PUT {raw!r}")
        if st_ is not None and 200 <= st_ < 300 and not path:
            t.bad(f"{st_} for PUT {raw!r} without a valid grant")
        if st_ == 201:
            created[0] += 1
            gst, got = get_body(port, raw)
            if gst != 200 or got != body:
                t.bad(f"PUT {raw!r} answered 201 but GET of it gave {gst}")

    one()
    t.extra = f"; {created[0]} valid-grant uploads stored"
    return t


RESUMABLE_TARGETS = st.one_of(
    st.tuples(st.sampled_from(["POST", "PATCH", "HEAD", "DELETE", "OPTIONS", "GET", "PUT"]),
              st.one_of(st.just("/tus/"), raw_path.map(lambda p: "/tus" + p))),
    st.tuples(st.sampled_from(["POST", "PUT", "PATCH", "HEAD", "DELETE", "OPTIONS"]),
              st.one_of(st.just("/resumable/"), raw_path.map(lambda p: "/resumable" + p))),
    st.tuples(st.sampled_from(["POST", "PUT", "GET"]),
              st.sampled_from(["/chunked-upload", "/chunked-upload/x", "/upload-status",
                               "/upload-status?session_id=", "/upload-status?session_id=%00",
                               "/upload-status?session_id=" + "a" * 64])),
)
RESUMABLE_HEADERS = st.lists(st.tuples(st.sampled_from([
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Concat",
    "Upload-Checksum", "Upload-Defer-Length", "Upload-Complete", "Upload-Incomplete",
    "Upload-Draft-Interop-Version", "Content-Type", "X-HTTP-Method-Override", "X-Filename",
    "X-Total-Size", "X-Chunk-Number", "X-Upload-Session-ID", "Authorization"]), header_value),
    max_size=8)
CREATION = {("POST", "tus"), ("POST", "resumable"), ("PUT", "resumable"), ("POST", "chunked-upload"),
            ("PUT", "chunked-upload")}


def fuzz_resumable(port, n):
    t = Tally()

    @fuzz_settings(n)
    @given(RESUMABLE_TARGETS, query_st, RESUMABLE_HEADERS, st.binary(max_size=64))
    def one(target, query, headers, body):
        method, path = target
        q = query if "?" not in path else query.replace("?", "&", 1)
        st_ = send(port, method, path + q, headers, body)
        t.see(st_)
        if st_ is not None and st_ >= 500:
            t.bad(f"{st_} for {method} {path + q!r} {headers!r}")
        first = path.strip("/").split("/")[0]
        if st_ is not None and 200 <= st_ < 300 and (method, first) in CREATION and \
                not any(k.lower() == "x-http-method-override" for k, _ in headers):
            t.bad(f"{st_} creation without a grant: {method} {path + q!r} {headers!r}")

    one()
    return t


def run_all(port, scale="1"):
    """Returns [(family, requests, violations, figure)]."""
    factor = float(scale)
    out = []
    for name, fn in (("paths", fuzz_paths), ("grants", fuzz_grants),
                     ("traversal", fuzz_traversal), ("resumable", fuzz_resumable)):
        n = max(10, int(COUNTS[name] * factor))
        t0 = time.monotonic()
        t = fn(port, n)
        out.append((name, t.n, t.violations,
                    t.figure(getattr(t, "extra", "")) + f" in {time.monotonic() - t0:.0f} s"))
    return out
