#!/usr/bin/env python3
"""Resumable uploads to Sluice with the real tus Python client (tuspy).

    python tus_py_test.py --base http://127.0.0.1:PORT --secret SECRET --workdir DIR

Run by tests/resumable/run.sh in a venv that has tuspy. Each case prints `PASS name` or
`FAIL name: reason` (plus indented detail lines); the last line is
`RESULT {"passed": N, "failed": M}`. Exit status 0 only if M is 0.

Cases:
  py-options           OPTIONS /tus/ advertises the tus version, extensions, max size, checksums.
  py-stop-resume       20 MiB in 1 MiB chunks, stop after 10 chunks (an interrupted client),
                       HEAD shows offset 10 MiB and nothing is published yet; a NEW client and
                       uploader given only the upload URL resume from the server's offset and
                       finish; the published file's SHA-256 matches.
  py-disconnect-resume a PATCH whose connection drops mid-body (raw socket); the server keeps
                       what arrived; tuspy resumes from the odd offset with Upload-Checksum
                       (sha1) on every chunk; SHA-256 matches. Non-ASCII file name.
  py-bad-grant         creation with a wrong MAC, or a MAC for another size, is refused (403)
                       and tuspy reports it.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import time
import traceback
import uuid
from urllib.parse import quote, urlsplit

import requests
import tusclient
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

MiB = 1024 * 1024
TIMEOUT = 30  # seconds, for every plain HTTP request this script makes itself

RESULTS = {"passed": 0, "failed": 0}


class CaseFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CaseFailed(msg)


def case(fn):
    """Run one case; any exception fails it with a short reason and a traceback."""
    name = fn.__name__.replace("case_", "py-").replace("_", "-")
    t0 = time.monotonic()
    try:
        fn()
    except CaseFailed as e:
        RESULTS["failed"] += 1
        print(f"FAIL {name}: {e}", flush=True)
    except Exception as e:  # noqa: BLE001 - a crash in a case is a failed case
        RESULTS["failed"] += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        for line in traceback.format_exc().rstrip().splitlines():
            print(f"     {line}", flush=True)
    else:
        RESULTS["passed"] += 1
        print(f"PASS {name} ({time.monotonic() - t0:.1f} s)", flush=True)


def info(msg):
    print(f"INFO {msg}", flush=True)


def show_response(r):
    """A response as detail lines, for failure messages."""
    hdrs = "; ".join(f"{k}: {v}" for k, v in r.headers.items())
    body = r.content[:300]
    return f"{r.request.method} {urlsplit(r.request.url).path} -> {r.status_code} [{hdrs}] body={body!r}"


def mac_v(secret, path, size):
    """XEP-0363 `v` grant (protocols.md §1.2): HMAC-SHA256(secret, path + " " + size), lowercase hex."""
    return hmac.new(secret.encode(), f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def make_file(workdir, name, size):
    p = os.path.join(workdir, name)
    with open(p, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n
    return p


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


class Sluice:
    def __init__(self, base, secret):
        self.base = base.rstrip("/")
        self.secret = secret

    def endpoint(self, path, size, mac=None):
        """The signed tus creation URL for `path` (decoded, UTF-8) and `size`."""
        mac = mac or mac_v(self.secret, path, size)
        return f"{self.base}/tus/{quote(path)}?v={mac}"

    def file_url(self, path):
        return f"{self.base}/upload/{quote(path)}"

    def head_upload(self, url):
        return requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=TIMEOUT)

    def fetch_and_compare(self, path, local):
        """GET the published file and compare length and SHA-256 with the local file."""
        url = self.file_url(path)
        r = requests.get(url, timeout=120)
        check(r.status_code == 200, f"GET published file: {show_response(r)}")
        size = os.path.getsize(local)
        check(len(r.content) == size, f"GET published file: {len(r.content)} bytes, expected {size}")
        got, want = hashlib.sha256(r.content).hexdigest(), sha256_file(local)
        check(got == want, f"GET published file: sha256 {got}, expected {want}")
        cl = r.headers.get("Content-Length")
        check(cl == str(size), f"GET published file: Content-Length {cl!r}, expected {size}")
        info(f"published {urlsplit(url).path} ({size} bytes, sha256 {got[:16]}...)")


def expect_offset(sluice, upload_url, offset, length, metadata=None):
    """HEAD on the upload answers tus 1.0 style with the given offset."""
    r = sluice.head_upload(upload_url)
    check(r.status_code in (200, 204), f"HEAD upload: {show_response(r)}")
    check(r.headers.get("Upload-Offset") == str(offset),
          f"HEAD upload: Upload-Offset {r.headers.get('Upload-Offset')!r}, expected {offset}: {show_response(r)}")
    check(r.headers.get("Upload-Length") == str(length),
          f"HEAD upload: Upload-Length {r.headers.get('Upload-Length')!r}, expected {length}: {show_response(r)}")
    check(r.headers.get("Tus-Resumable") == "1.0.0", f"HEAD upload: no Tus-Resumable: 1.0.0: {show_response(r)}")
    check("no-store" in r.headers.get("Cache-Control", ""), f"HEAD upload: Cache-Control lacks no-store: {show_response(r)}")
    if metadata:
        got = parse_metadata(r.headers.get("Upload-Metadata", ""))
        for k, v in metadata.items():
            check(got.get(k) == v, f"HEAD upload: Upload-Metadata {k}={got.get(k)!r}, expected {v!r}: {show_response(r)}")
    return r


def parse_metadata(header):
    out = {}
    for item in filter(None, (s.strip() for s in header.split(","))):
        key, _, val = item.partition(" ")
        out[key] = base64.b64decode(val).decode("utf-8") if val else ""
    return out


# ----------------------------------------------------------------------------- cases

def case_options():
    r = requests.options(f"{S.base}/tus/", timeout=TIMEOUT)
    check(r.status_code in (200, 204), f"OPTIONS /tus/: {show_response(r)}")
    h = r.headers
    versions = [v.strip() for v in h.get("Tus-Version", "").split(",")]
    check("1.0.0" in versions, f"Tus-Version {h.get('Tus-Version')!r} lacks 1.0.0")
    exts = {v.strip() for v in h.get("Tus-Extension", "").split(",")}
    want = {"creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
            "termination", "concatenation"}
    check(want <= exts, f"Tus-Extension {h.get('Tus-Extension')!r} lacks {sorted(want - exts)}")
    check(h.get("Tus-Max-Size") == str(64 * MiB), f"Tus-Max-Size {h.get('Tus-Max-Size')!r}, expected {64 * MiB} (max_file_size)")
    algos = {v.strip().lower() for v in h.get("Tus-Checksum-Algorithm", "").split(",")}
    check({"sha1", "sha256", "md5"} <= algos, f"Tus-Checksum-Algorithm {h.get('Tus-Checksum-Algorithm')!r} lacks sha1/sha256/md5")
    info(f"OPTIONS /tus/: Tus-Version={h.get('Tus-Version')}; Tus-Extension={h.get('Tus-Extension')}; "
         f"Tus-Max-Size={h.get('Tus-Max-Size')}; Tus-Checksum-Algorithm={h.get('Tus-Checksum-Algorithm')}")


def case_stop_resume():
    size, chunk, stop = 20 * MiB, MiB, 10 * MiB
    name = "big file.bin"
    path = f"{uuid.uuid4()}/{name}"
    local = make_file(ARGS.workdir, "py-stop-resume.bin", size)
    endpoint = S.endpoint(path, size)
    meta = {"filename": name, "filetype": "application/octet-stream"}

    # First client: create, then upload 10 of the 20 chunks and "crash".
    client1 = tus_client.TusClient(endpoint)
    up1 = client1.uploader(file_path=local, chunk_size=chunk, metadata=meta)
    try:
        up1.upload(stop_at=stop)
    except TusCommunicationError as e:
        raise CaseFailed(f"first half: {e} (status {e.status_code}, body {e.response_content!r:.300})")
    upload_url = up1.url
    info(f"created {urlsplit(upload_url).path}; first client stopped at {up1.offset}")
    # Location is path-absolute; Sluice may put it under url_prefix (it accepts both forms).
    check(upload_url.startswith((f"{S.base}/tus/", f"{S.base}/upload/tus/")),
          f"upload URL {upload_url!r} is not under {S.base}/tus/ (or {S.base}/upload/tus/)")
    check(up1.offset == stop, f"first client's offset {up1.offset}, expected {stop}")
    del up1, client1

    # The server's view of the interrupted upload.
    expect_offset(S, upload_url, stop, size, meta)
    r = requests.get(S.file_url(path), timeout=TIMEOUT)
    check(r.status_code == 404, f"half-done upload is already visible at its final URL: {show_response(r)}")

    # Second client, knowing only the upload URL: resumes from the server's offset.
    client2 = tus_client.TusClient(endpoint)
    up2 = client2.uploader(file_path=local, url=upload_url, chunk_size=chunk)
    check(up2.offset == stop, f"resumed uploader got offset {up2.offset} from HEAD, expected {stop}")
    patches = 0
    while up2.offset < size:
        try:
            up2.upload_chunk()
        except TusCommunicationError as e:
            raise CaseFailed(f"resumed PATCH at offset {up2.offset}: {e} (status {e.status_code}, body {e.response_content!r:.300})")
        patches += 1
        check(up2.request.status_code == 204, f"PATCH answered {up2.request.status_code}, expected 204")
        check(patches <= size // chunk, "resumed uploader sent more PATCHes than the file has chunks")
    check(up2.url == upload_url, f"resumed uploader switched to another upload URL {up2.url!r}")
    check(patches == (size - stop) // chunk, f"resume sent {patches} PATCHes, expected {(size - stop) // chunk}")
    check(up2.offset == size, f"final offset {up2.offset}, expected {size}")
    S.fetch_and_compare(path, local)


def raw_partial_patch(upload_url, offset, declared, data):
    """PATCH with Content-Length `declared` but send only `data`, then drop the connection."""
    u = urlsplit(upload_url)
    req = (f"PATCH {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nTus-Resumable: 1.0.0\r\n"
           f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
           f"Content-Length: {declared}\r\n\r\n").encode()
    with socket.create_connection((u.hostname, u.port), timeout=TIMEOUT) as s:
        s.sendall(req + data)
        time.sleep(0.5)  # let the server read and store what we sent
        # A reset rather than a FIN: the client vanished (a phone losing its network).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def case_disconnect_resume():
    size, chunk, first = 6 * MiB, MiB, 2 * MiB
    sent = 512 * 1024 + 123
    name = "très cool – résumé.bin"
    path = f"{uuid.uuid4()}/{name}"
    local = make_file(ARGS.workdir, "py-disconnect.bin", size)
    endpoint = S.endpoint(path, size)

    client1 = tus_client.TusClient(endpoint)
    up1 = client1.uploader(file_path=local, chunk_size=chunk, metadata={"filename": name})
    try:
        up1.upload(stop_at=first)
    except TusCommunicationError as e:
        raise CaseFailed(f"first part: {e} (status {e.status_code}, body {e.response_content!r:.300})")
    upload_url = up1.url
    check(up1.offset == first, f"offset {up1.offset} after the first part, expected {first}")
    expect_offset(S, upload_url, first, size, {"filename": name})

    # The network drops in the middle of the next chunk.
    with open(local, "rb") as f:
        f.seek(first)
        raw_partial_patch(upload_url, first, chunk, f.read(sent))
    # The server may still be noticing the reset; poll HEAD until the offset settles.
    deadline, offset, last = time.monotonic() + 10, None, None
    while time.monotonic() < deadline:
        r = S.head_upload(upload_url)
        if r.status_code in (200, 204) and r.headers.get("Upload-Offset", "").isdigit():
            offset = int(r.headers["Upload-Offset"])
            if offset > first and offset == last:
                break
            last = offset
        time.sleep(0.3)
    info(f"after a PATCH cut at {first}+{sent}, HEAD says Upload-Offset {offset}")
    check(offset is not None, f"HEAD after the dropped PATCH: {show_response(r)}")
    check(first <= offset <= first + sent,
          f"offset {offset} after the dropped PATCH is outside [{first}, {first + sent}]")
    check(offset > first, f"the server kept none of the {sent} bytes that arrived before the disconnect "
                          "(protocols.md §3: keep what arrived before a disconnect)")

    # A new client resumes from the odd offset, with Upload-Checksum: sha1 on every chunk.
    client2 = tus_client.TusClient(endpoint)
    up2 = client2.uploader(file_path=local, url=upload_url, chunk_size=chunk, upload_checksum=True)
    check(up2.offset == offset, f"resumed uploader got offset {up2.offset}, expected {offset}")
    try:
        up2.upload()
    except TusCommunicationError as e:
        raise CaseFailed(f"resume with checksums at offset {up2.offset}: {e} (status {e.status_code}, body {e.response_content!r:.300})")
    check(up2.offset == size, f"final offset {up2.offset}, expected {size}")
    S.fetch_and_compare(path, local)


def case_bad_grant():
    size = 3 * MiB + 7
    local = make_file(ARGS.workdir, "py-bad-grant.bin", size)
    for label, path, mac in (
        ("wrong MAC", f"{uuid.uuid4()}/x.bin", "0" * 64),
        ("MAC for another size", None, None),
    ):
        if path is None:
            path = f"{uuid.uuid4()}/x.bin"
            mac = mac_v(S.secret, path, size + 1)
        up = tus_client.TusClient(S.endpoint(path, size, mac)).uploader(file_path=local, chunk_size=MiB)
        try:
            up.upload()
        except TusCommunicationError as e:
            check(e.status_code == 403, f"{label}: creation refused with {e.status_code}, expected 403 "
                                        f"(body {e.response_content!r:.300})")
        else:
            raise CaseFailed(f"{label}: the upload was accepted (url {up.url})")
        r = requests.get(S.file_url(path), timeout=TIMEOUT)
        check(r.status_code == 404, f"{label}: something was published: {show_response(r)}")


def main():
    global ARGS, S
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--secret", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", action="append", help="run only these cases (py-...)")
    ARGS = ap.parse_args()
    S = Sluice(ARGS.base, ARGS.secret)
    version = getattr(tusclient, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("tuspy")
    info(f"tuspy {version}, requests {requests.__version__}, python {sys.version.split()[0]}")
    for fn in (case_options, case_stop_resume, case_disconnect_resume, case_bad_grant):
        name = fn.__name__.replace("case_", "py-").replace("_", "-")
        if ARGS.only and name not in ARGS.only:
            continue
        case(fn)
    print("RESULT " + json.dumps(RESULTS), flush=True)
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
