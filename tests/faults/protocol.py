"""Protocol abuse: malformed HTTP/1.1 and smuggling (8), fuzzing with hypothesis (9), HTTP/2
floods (10)."""
import os
import random
import time

from harness import (CTX, Attacker, Prober, RssSampler, Server, case, case_dir, parse_responses,
                     put_v, rand_bytes, raw_exchange, record, request, sign_v, slot_path,
                     walk_files)

KIB, MIB = 1024, 1024 * 1024


# ----------------------------------------------------------------------------- case 8
def smuggled(tag):
    return f"GET /smuggled-{tag} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def malformed_requests(tus_loc):
    """(name, bytes, allow_answer_then_close). Each request carries a pipelined or body-hidden
    second request; at most one response may come back."""
    H = "Host: 127.0.0.1\r\n"
    s = smuggled
    chunked_ext = b"5;" + b"x" * 100_000 + b"\r\nhello\r\n0\r\n\r\n"
    return [
        ("CL+TE (TE wins: smuggled after the 0 chunk)",
         (f"POST /health HTTP/1.1\r\n{H}Content-Length: {5 + len(s('clte'))}\r\n"
          "Transfer-Encoding: chunked\r\n\r\n").encode() + b"0\r\n\r\n" + s("clte"), True),
        ("TE+CL (CL wins: smuggled inside a chunk)",
         (f"POST /health HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
          ).encode() + f"{len(s('tecl')):x}\r\n".encode() + s("tecl") + b"\r\n0\r\n\r\n", True),
        ("duplicate Content-Length 5 / 50",
         (f"POST /health HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 50\r\n\r\n"
          ).encode() + b"hello" + s("dupcl"), False),
        ("signed Content-Length +5",
         f"POST /health HTTP/1.1\r\n{H}Content-Length: +5\r\n\r\n".encode() + b"hello" + s("signed"),
         False),
        ("Content-Length 0x5",
         f"POST /health HTTP/1.1\r\n{H}Content-Length: 0x5\r\n\r\n".encode() + b"hello" + s("hex"),
         False),
        ("obs-fold header",
         f"GET /health HTTP/1.1\r\n{H}X-Folded: a\r\n  b\r\n\r\n".encode() + s("fold"), False),
        ("obs-fold Content-Length",
         f"POST /health HTTP/1.1\r\n{H}Content-Length: 5\r\n 0\r\n\r\n".encode() + b"hello" + s("foldcl"),
         False),
        ("bare CR in a header value",
         f"GET /health HTTP/1.1\r\n{H}X-Bad: a\rb\r\n\r\n".encode() + s("cr"), False),
        ("bare CR as line end",
         f"GET /health HTTP/1.1\r{H}\r\n".encode() + s("crline"), False),
        ("whitespace before the colon (Content-Length : 5)",
         f"POST /health HTTP/1.1\r\n{H}Content-Length : 5\r\n\r\n".encode() + b"hello" + s("ws"),
         False),
        ("whitespace before the colon (Transfer-Encoding : chunked)",
         f"POST /health HTTP/1.1\r\n{H}Transfer-Encoding : chunked\r\n\r\n".encode()
         + b"0\r\n\r\n" + s("wste"), False),
        ("Transfer-Encoding: chunked, identity",
         f"POST /health HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n".encode()
         + b"0\r\n\r\n" + s("teid"), False),
        ("Transfer-Encoding: xchunked",
         f"POST /health HTTP/1.1\r\n{H}Transfer-Encoding: xchunked\r\n\r\n".encode()
         + b"0\r\n\r\n" + s("xchunked"), False),
        ("NUL in a header value",
         f"GET /health HTTP/1.1\r\n{H}X-Nul: a\0b\r\n\r\n".encode() + s("nul"), False),
        ("missing Host",
         b"GET /health HTTP/1.1\r\n\r\n" + s("nohost"), False),
        ("duplicate Host",
         f"GET /health HTTP/1.1\r\n{H}Host: other.example\r\n\r\n".encode() + s("duphost"), False),
        ("oversized chunk extension (100 kB) on a tus PATCH",
         (f"PATCH {tus_loc} HTTP/1.1\r\n{H}Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
          "Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
          ).encode() + chunked_ext + s("chunkext"), False),
    ]


@case(8, "malformed HTTP/1.1 and request smuggling", 90)
def malformed():
    srv = Server("c8-malformed").start()
    path, size = slot_path("tus.bin"), 1000
    st, h, _ = request(srv.port, "POST", f"/tus/{path}?v={sign_v(path, size)}", b"",
                       {"Tus-Resumable": "1.0.0", "Upload-Length": str(size)})
    if st != 201:
        raise AssertionError(f"tus creation: {st}")
    loc = h["location"]
    loc = loc[loc.index("/tus/"):]
    for i, (name, data, may_answer) in enumerate(malformed_requests(loc)):
        received, closed = raw_exchange(srv.port, data, idle=1.5, total=5)
        responses = parse_responses(received)
        statuses = [r[0] for r in responses]
        first = statuses[0] if statuses else None
        rejected = first is None or 400 <= first < 500
        ok = len(responses) <= 1 and (rejected or (may_answer and closed))
        if not responses:
            what = "no answer, connection closed" if closed else "no answer, connection left open"
        else:
            what = (f"{first}" + (f" then {', '.join(map(str, statuses[1:]))} (a second response!)"
                                  if len(statuses) > 1 else "")
                    + (", then closed" if closed else ", connection kept open"))
        want = "want 4xx or close" + (", or one answer then close" if may_answer else "") + \
               ", never a second response"
        record(f"8{chr(ord('a') + i)}", name, ok, f"{what} ({want})")
    if not srv.alive() or request(srv.port, "GET", "/health")[0] != 200:
        record("8z", "server still serving after the malformed requests", False, "it is not")


# ----------------------------------------------------------------------------- case 9
@case(9, "fuzzed paths, queries and headers (hypothesis)", 300)
def fuzz():
    import fuzz as fz
    d = case_dir("c9-fuzz")
    store = os.path.join(d, "store")
    sentinel = os.path.join(d, "sentinel")
    cwd = os.path.join(d, "cwd")
    for p in (sentinel, cwd):
        os.makedirs(p, exist_ok=True)
    with open(os.path.join(sentinel, "keep.txt"), "w") as f:
        f.write("sentinel\n")
    srv = Server("c9-fuzz", storage_dir=store, cwd=cwd).start()
    known = put_v(srv.port, "known/dir/file.txt", b"known content\n")
    if known != 201:
        raise AssertionError(f"setup upload: {known}")
    top_before = sorted(os.listdir(CTX.work))
    store_before = set(os.listdir(store))  # files/, meta/, staging/ and the server's own files
    report = fz.run_all(srv.port, os.environ.get("FUZZ_SCALE", "1"))
    # Nothing may appear outside the store's trees: the sentinel dir, the server's cwd, the case
    # dir, the work dir and the store's own top level are all compared with before.
    outside = []
    if walk_files(sentinel) != ["keep.txt"]:
        outside.append(f"sentinel/ now holds {walk_files(sentinel)[:5]}")
    if walk_files(cwd):
        outside.append(f"server cwd holds {walk_files(cwd)[:5]}")
    extra_case = sorted(set(os.listdir(d)) - {"store", "sentinel", "cwd", "sluice.toml", "sluice.log"})
    if extra_case:
        outside.append(f"case dir holds {extra_case[:5]}")
    extra_work = sorted(set(os.listdir(CTX.work)) - set(top_before))
    if extra_work:
        outside.append(f"work dir holds new {extra_work[:5]}")
    extra_store = sorted(set(os.listdir(store)) - store_before)
    if extra_store:
        outside.append(f"store top level holds {extra_store[:5]}")
    real_files = os.path.realpath(os.path.join(store, "files"))
    for rel in walk_files(os.path.join(store, "files")):
        rp = os.path.realpath(os.path.join(store, "files", rel))
        if not rp.startswith(real_files + os.sep):
            outside.append(f"files/{rel} resolves to {rp}")
    alive = srv.alive()
    for name, n, violations, figure in report:
        ok = not violations
        record(f"9{name[0]}", f"fuzz: {name}", ok,
               f"{n} requests, {figure}"
               + (f"; {len(violations)} violations, e.g. {violations[:3]}" if violations else ""))
    stored = len(walk_files(os.path.join(store, "files")))
    record("9z", "fuzz: nothing written outside storage.dir", not outside and alive,
           f"{stored} files stored, all under files/; sentinel, cwd and work dir unchanged"
           if not outside and alive else "; ".join(outside) + ("" if alive else "; server DIED"))


# ----------------------------------------------------------------------------- case 10
FLOODS = ["rapid-reset", "continuation", "settings", "ping"]


@case(10, "HTTP/2 floods over h2c", 120)
def h2_floods():
    seconds = 6
    srv = Server("c10-h2").start()
    rng = random.Random(10)
    big_path, big = "big.bin", rand_bytes(rng, 8 * MIB)
    small_path, small = slot_path("small.txt"), rand_bytes(rng, 2 * KIB)
    for p, data in ((big_path, big), (small_path, small)):
        if put_v(srv.port, p, data, timeout=60) != 201:
            raise AssertionError(f"setup upload of {p}")
    for _ in range(20):
        request(srv.port, "GET", "/" + small_path)
    for i, kind in enumerate(FLOODS):
        time.sleep(0.5)
        rss0 = srv.rss_kib()
        sampler = RssSampler(srv)
        sampler.start()
        prober = Prober(srv.port, [("/health", None), ("/" + small_path, small)], every=0.05,
                        timeout=3)
        cpu0 = srv.cpu_seconds()
        attack = Attacker(os.path.join(srv.dir, f"{kind}.out"), "h2", kind, srv.port, seconds)
        prober.start()
        counts = attack.finish(seconds + 20)
        prober.stop()
        cpu = srv.cpu_seconds() - cpu0
        time.sleep(1.0)
        peak = sampler.stop()
        rss1 = srv.rss_kib() if srv.alive() else 0
        worst = max(prober.latencies + [f[2] for f in prober.failures], default=99)
        growth = (peak - rss0) / 1024
        alive = srv.alive()
        ok = alive and not prober.failures and worst < 1.0 and growth < 32 and prober.latencies
        record(f"10{chr(ord('a') + i)}", f"h2 {kind} flood", ok,
               f"{seconds} s: other clients {prober.figure()} (want all served within 1 s); "
               f"RSS {rss0 / 1024:.1f} -> peak {peak / 1024:.1f} -> after {rss1 / 1024:.1f} MiB "
               f"(want growth < 32 MiB); server CPU {cpu:.1f} s; attacker: "
               + Attacker.figure(counts)
               + ("" if alive else "; server DIED"))
        if not alive:
            break
