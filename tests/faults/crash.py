"""Crash cases: kill -9 during PUTs (1), kill -9 during tus appends (2), simulated power loss on a
FUSE filesystem that keeps only what was fsynced (4)."""
import os
import random
import socket
import subprocess
import sys
import threading
import time

from harness import (CTX, Server, case, get_ok, paced_put, rand_bytes, record, request, sign_v,
                     slot_path, stop_process, track, wait_until, walk_files)

KIB, MIB = 1024, 1024 * 1024


def concurrent_puts_then_kill(srv, uploads, kill_after, rng_seed, deadline=25.0):
    """Start every upload at once (paced), kill -9 the server once `kill_after` of them were
    answered 201 (or at `deadline`). Returns {path: status or None}."""
    status = {}
    done201 = threading.Semaphore(0)
    lock = threading.Lock()

    def one(i, path, data):
        st = paced_put(srv.port, path, data, piece=64 * KIB, pause=(0.0, 0.02),
                       rng=random.Random(rng_seed + i), timeout=deadline + 10)
        with lock:
            status[path] = st
        if st == 201:
            done201.release()

    threads = [threading.Thread(target=one, args=(i, p, d), daemon=True)
               for i, (p, d) in enumerate(uploads.items())]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline
    got = 0
    while got < kill_after and time.monotonic() < end:
        if done201.acquire(timeout=0.05):
            got += 1
    srv.kill9()
    for t in threads:
        t.join(max(0.1, end + 10 - time.monotonic()))
    return status


def classify_store(store_files, uploads):
    """Every file under <store>/files must be the complete content of its upload."""
    bad = []
    for rel in walk_files(store_files):
        with open(os.path.join(store_files, rel), "rb") as f:
            content = f.read()
        expect = uploads.get(rel)
        if expect is None or content != expect:
            bad.append(f"{rel} ({len(content)} bytes"
                       f"{'' if expect is None else f' of {len(expect)}'})")
    return bad


def staging_leftovers(store):
    staging = os.path.join(store, "staging")
    return [p for p in walk_files(staging)] if os.path.isdir(staging) else []


# ----------------------------------------------------------------------------- case 1
@case(1, "kill -9 during 100 concurrent PUTs", 150)
def kill_during_puts():
    rng = random.Random(1)
    srv = Server("c1-kill-put").start()
    uploads = {}
    for i in range(100):
        size = rng.choice([rng.randint(1 * KIB, 64 * KIB), rng.randint(64 * KIB, 4 * MIB)])
        uploads[slot_path(f"f{i:03}.bin")] = rand_bytes(rng, size)
    status = concurrent_puts_then_kill(srv, uploads, kill_after=45, rng_seed=100)
    created = [p for p, s in status.items() if s == 201]
    leftovers_before = staging_leftovers(srv.storage_dir)
    srv.start()
    intact = [p for p in created if get_ok(srv.port, p, uploads[p])]
    bad = classify_store(os.path.join(srv.storage_dir, "files"), uploads)
    leftovers_after = staging_leftovers(srv.storage_dir)
    others = sorted({"cut" if s is None else str(s) for s in status.values() if s != 201})
    ok = len(created) > 0 and len(intact) == len(created) and not bad and not leftovers_after
    fig = (f"{len(created)}/100 answered 201 before the kill (others: {', '.join(others) or '-'}); "
           f"after restart {len(intact)}/{len(created)} byte-identical, "
           f"{len(walk_files(os.path.join(srv.storage_dir, 'files')))} files under files/, "
           f"{len(bad)} incomplete or unknown{(': ' + ', '.join(bad[:5])) if bad else ''}; "
           f"staging entries {len(leftovers_before)} before restart, {len(leftovers_after)} after"
           f"{(': ' + ', '.join(leftovers_after[:5])) if leftovers_after else ''}")
    record(1, "kill -9 during 100 concurrent PUTs", ok, fig)


# ----------------------------------------------------------------------------- case 2
TUS = {"Tus-Resumable": "1.0.0"}


def tus_create(port, path, length):
    st, h, _ = request(port, "POST", f"/tus/{path}?v={sign_v(path, length)}", b"",
                       dict(TUS, **{"Upload-Length": str(length)}))
    if st != 201 or "location" not in h:
        raise AssertionError(f"tus creation of {path}: {st}")
    loc = h["location"]
    return loc[loc.index("/tus/"):] if "/tus/" in loc else loc


def tus_patch(port, loc, offset, data, timeout=30):
    st, h, _ = request(port, "PATCH", loc, data, dict(TUS, **{
        "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}),
        timeout=timeout)
    return st, int(h.get("upload-offset", -1))


def slow_patch(port, loc, offset, data, sent_counter, idx):
    """A PATCH of `data` that sends it in 16 KiB pieces, 20 ms apart (killed midway)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall((f"PATCH {loc} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                   f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode())
        for i in range(0, len(data), 16 * KIB):
            s.sendall(data[i:i + 16 * KIB])
            sent_counter[idx] = i + len(data[i:i + 16 * KIB])
            time.sleep(0.02)
    except OSError:
        pass
    finally:
        s.close()


@case(2, "kill -9 during tus 1.0 PATCH, resume", 90)
def kill_during_tus():
    rng = random.Random(2)
    srv = Server("c2-kill-tus").start()
    n = 6
    items = []
    for i in range(n):
        size = rng.randint(2 * MIB, 6 * MIB)
        path = slot_path(f"t{i}.bin")
        data = rand_bytes(rng, size)
        loc = tus_create(srv.port, path, size)
        first = rng.randint(size // 5, size // 2)
        st, off = tus_patch(srv.port, loc, 0, data[:first])
        if st != 204 or off != first:
            raise AssertionError(f"first PATCH of {path}: {st}, offset {off}")
        items.append((path, data, loc, first))
    sent = [0] * n
    threads = [threading.Thread(target=slow_patch, daemon=True,
                                args=(srv.port, loc, first, data[first:], sent, i))
               for i, (path, data, loc, first) in enumerate(items)]
    for t in threads:
        t.start()
    # Kill once every PATCH is well under way but none is finished.
    wait_until(lambda: all(s >= 256 * KIB for s in sent), 15)
    srv.kill9()
    for t in threads:
        t.join(10)
    srv.start()
    figures, ok = [], True
    for i, (path, data, loc, first) in enumerate(items):
        st, h, _ = request(srv.port, "HEAD", loc, headers=TUS)
        off = int(h.get("upload-offset", -1))
        acked = first
        reached = first + sent[i]
        if st != 200 or not acked <= off <= reached:
            ok = False
            figures.append(f"{path}: HEAD {st} offset {off} (acknowledged {acked}, sent {reached})")
            continue
        st2, off2 = tus_patch(srv.port, loc, off, data[off:])
        same = st2 == 204 and off2 == len(data) and get_ok(srv.port, path, data)
        ok = ok and same
        figures.append(f"{off / MIB:.2f}/{len(data) / MIB:.2f} MiB"
                       f"{'' if same else f' resume {st2} offset {off2} NOT identical'}")
    record(2, "kill -9 during tus 1.0 PATCH, resume", ok,
           f"{n} uploads killed mid-PATCH; offsets after restart (resumed from): "
           + ", ".join(figures) + ("; all byte-identical after resuming" if ok else ""))


# ----------------------------------------------------------------------------- case 4
class DurableMount:
    """durablefs.py over <dir>/backing mounted at <dir>/mnt, with its control socket."""

    def __init__(self, d):
        self.dir = d
        self.backing = os.path.join(d, "backing")
        self.mnt = os.path.join(d, "mnt")
        self.sock = os.path.join(d, "ctl.sock")
        for p in (self.backing, self.mnt):
            os.makedirs(p, exist_ok=True)
        self.log = open(os.path.join(d, "durablefs.log"), "ab")
        self.proc = track(subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "durablefs.py"),
             self.backing, self.mnt, self.sock, os.path.join(d, "shadow")],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True))
        if not wait_until(lambda: os.path.ismount(self.mnt) and os.path.exists(self.sock), 20):
            raise RuntimeError("durablefs did not mount")

    def ctl(self, cmd, timeout=120):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(self.sock)
            s.sendall(cmd.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                part = s.recv(4096)
                if not part:
                    break
                answer += part
        finally:
            s.close()
        answer = answer.decode().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"durablefs {cmd}: {answer}")
        return answer

    def unmount(self):
        stop_process(self.proc, grace=10)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.log.close()


def power_loss(durability):
    name = f"c4-power-{durability}"
    rng = random.Random(4)
    d = os.path.join(CTX.work, name)
    os.makedirs(d, exist_ok=True)
    fs = DurableMount(d)
    try:
        srv = Server(name, storage_dir=fs.mnt, durability=durability).start()
        fs.ctl("sync-all")  # the store's layout existed long before the uploads
        uploads = {slot_path(f"p{i:02}.bin"): rand_bytes(rng, rng.randint(1 * KIB, 1 * MIB))
                   for i in range(30)}
        status = concurrent_puts_then_kill(srv, uploads, kill_after=20, rng_seed=400)
        stats = fs.ctl("stats")
        rebuilt = os.path.join(d, "after-power-loss")
        fs.ctl(f"dump {rebuilt}")
    finally:
        fs.unmount()
    created = [p for p, s in status.items() if s == 201]
    after = Server(name + "-restart", storage_dir=rebuilt, durability=durability).start()
    survived = [p for p in created if get_ok(after.port, p, uploads[p])]
    bad = classify_store(os.path.join(rebuilt, "files"), uploads)
    lost = len(created) - len(survived)
    fig = (f"{len(created)}/30 answered 201 before the plug was pulled; {len(survived)} survived "
           f"byte-identical, {lost} lost; {len(bad)} files under files/ incomplete or unknown"
           f"{(': ' + ', '.join(bad[:3])) if bad else ''} (durablefs saw {stats[3:]})")
    return created, lost, bad, fig


@case(4, "power loss on a FUSE fs that keeps only fsynced state", 150)
def power_loss_cases():
    for durability in ("fsync", "none"):
        title = f'power loss, durability = "{durability}"'
        try:
            created, lost, bad, fig = power_loss(durability)
        except Exception as e:
            record("4a" if durability == "fsync" else "4b", title, False, f"error: {type(e).__name__}: {e}")
            continue
        if durability == "fsync":
            ok = bool(created) and lost == 0 and not bad
            record("4a", title, ok, fig + ("" if ok else "  <- every 201'd file must survive"))
        else:
            ok = bool(created) and lost > 0
            record("4b", title, ok, fig + (" (loss observed: the check can fail)" if ok else
                                           "  <- expected lost files without fsync"))
