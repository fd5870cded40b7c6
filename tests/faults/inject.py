"""Injected I/O errors (case 3): fsync failing with EIO (strace attached to the running server
for the length of one upload) and a write failing with ENOSPC (a real, small, full tmpfs).

strace's `inject=write:error=ENOSPC` cannot be aimed at the upload: tokio wakes its threads
through write(2) on an eventfd, and failing those would take the runtime down, not the upload.
A tmpfs smaller than the upload gives the same errno from the kernel, exactly on the upload's
write. fsync is only ever called on files and directories, so injecting it is safe while the
server is idle apart from the one upload under test."""
import os
import random
import re
import subprocess
import time

from harness import (Server, case, case_dir, get_ok, rand_bytes, record, request, put_v,
                     slot_path, stop_process, streaming_put, track, wait_until, walk_files)

KIB, MIB = 1024, 1024 * 1024


class Strace:
    """strace attached to every thread of a running server, injecting EIO into fsync."""

    def __init__(self, srv, log_path, path_filter=None):
        args = ["strace", "-f", "-y", "-p", str(srv.pid), "-o", log_path,
                "-e", "trace=fsync,fdatasync", "-e", "inject=fsync:error=EIO"]
        if path_filter:
            args += ["-P", path_filter]
        self.log_path = log_path
        self.proc = track(subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True))
        if not wait_until(srv.threads_traced, 10):
            stop_process(self.proc)
            raise RuntimeError("strace did not attach to every thread within 10 s")
        self.srv = srv

    def detach(self):
        stop_process(self.proc, grace=10)
        wait_until(lambda: not any_traced(self.srv), 5)
        with open(self.log_path, errors="replace") as f:
            return [l.strip() for l in f if "INJECTED" in l]


def any_traced(srv):
    for t in os.listdir(f"/proc/{srv.pid}/task"):
        try:
            with open(f"/proc/{srv.pid}/task/{t}/status") as f:
                if "TracerPid:\t0\n" not in f.read():
                    return True
        except OSError:
            pass
    return False


def still_serving(srv, control_path, control_data, rng):
    """After the fault: health, the earlier file, and a new upload all work."""
    st_health = request(srv.port, "GET", "/health", timeout=5)[0]
    old_ok = get_ok(srv.port, control_path, control_data)
    new_path, new_data = slot_path("after.bin"), rand_bytes(rng, 100 * KIB)
    st_new = put_v(srv.port, new_path, new_data)
    new_ok = st_new == 201 and get_ok(srv.port, new_path, new_data)
    ok = st_health == 200 and old_ok and new_ok
    return ok, (f"afterwards /health {st_health}, earlier file {'intact' if old_ok else 'NOT served'}, "
                f"new PUT {st_new}{'' if new_ok else ' NOT served back'}")


def short(syscall_line):
    """`123 fsync(12</x/data/staging/put-ab..>) = -1 EIO ...` -> `fsync(staging/put-ab..)`"""
    m = re.search(r"(f\w*sync)\(\d+<([^>]*)>", syscall_line)
    if not m:
        return syscall_line[:80]
    path = m.group(2)
    for marker in ("/staging/", "/files/", "/meta/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    return f"{m.group(1)}({path[:40]})"


def eio_case(cid, title, dir_fsync):
    rng = random.Random(31 if dir_fsync else 30)
    srv = Server(f"c3-eio-{'dir' if dir_fsync else 'file'}").start()
    control_path, control_data = slot_path("before.bin"), rand_bytes(rng, 64 * KIB)
    if put_v(srv.port, control_path, control_data) != 201:
        raise AssertionError("control upload failed")
    path = slot_path("victim.bin")
    data = rand_bytes(rng, 1 * MIB)
    # The whole process (every fsync) for one upload, or only fsyncs of the upload's new
    # parent directory, which the server syncs after the hard link that publishes the file.
    filt = os.path.join(srv.storage_dir, "files", path.split("/")[0]) if dir_fsync else None
    tracer = Strace(srv, os.path.join(srv.dir, "strace.log"), filt)
    try:
        st = put_v(srv.port, path, data)
    finally:
        injected = tracer.detach()
    st_get = request(srv.port, "GET", "/" + path)[0]
    leftovers = [p for p in walk_files(os.path.join(srv.storage_dir, "staging")) if "put-" in p]
    serving_ok, serving = still_serving(srv, control_path, control_data, rng)
    hit = bool(injected) and (("/files/" in injected[0]) if dir_fsync else ("/staging/put-" in injected[0]))
    ok = st == 500 and st_get == 404 and hit and not leftovers and serving_ok
    fig = (f"injected EIO into {', '.join(short(l) for l in injected[:3]) or 'NOTHING'}; PUT {st} "
           f"(want 500), GET of the name {st_get} (want 404), {len(leftovers)} staged leftovers; "
           + serving)
    record(cid, title, ok, fig)


@case(3, "fsync EIO and write ENOSPC during an upload", 120)
def io_errors():
    eio_case("3a", "fsync of the staged upload fails with EIO", dir_fsync=False)
    eio_case("3b", "fsync of the new parent directory fails with EIO (after the link)",
             dir_fsync=True)
    enospc_case()


def enospc_case():
    cid, title = "3c", "write fails with ENOSPC (upload larger than a full 8 MiB tmpfs)"
    rng = random.Random(32)
    d = case_dir("c3-enospc")
    store = os.path.join(d, "tmpfs")
    os.makedirs(store, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", store], check=True)
    try:
        # No free-space reserve: the point is the write that fails, not the refusal before it.
        srv = Server("c3-enospc", storage_dir=store, storage={"min_free_space": "0B"}).start()
        control_path, control_data = slot_path("before.bin"), rand_bytes(rng, 64 * KIB)
        if put_v(srv.port, control_path, control_data) != 201:
            raise AssertionError("control upload failed")
        path, data = slot_path("big.bin"), rand_bytes(rng, 12 * MIB)
        st, note = streaming_put(srv.port, path, data)
        st_get = request(srv.port, "GET", "/" + path)[0]
        leftovers = [p for p in walk_files(os.path.join(store, "staging")) if "put-" in p]
        time.sleep(0.2)
        free_mib = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize / MIB
        serving_ok, serving = still_serving(srv, control_path, control_data, rng)
        ok = st == 507 and st_get == 404 and not leftovers and serving_ok
        record(cid, title, ok,
               f"PUT of 12 MiB {st} (want 507; {note}), GET of the name {st_get} (want 404), "
               f"{len(leftovers)} staged leftovers, {free_mib:.1f} MiB free again; " + serving)
        srv.stop()
    finally:
        subprocess.run(["umount", "-l", store], check=False)
