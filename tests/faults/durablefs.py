#!/usr/bin/env python3
"""A FUSE passthrough filesystem that also keeps the "durable" view of its tree, for simulated
power loss (case 4).

    python durablefs.py BACKING MOUNTPOINT CONTROL_SOCKET SHADOW_DIR

Every operation is passed through to BACKING (the live tree). Besides it, the process keeps what
a crash-consistent disk would still hold after a power cut, with the strictest POSIX reading:

- a file's content is durable as of its last fsync/fdatasync (a file never synced is empty);
- a directory's entries are durable as of its last fsync on that directory: a new name, a rename
  or a hard link survives only once its parent directory has been fsynced after it (a directory
  made by mkdir is itself only a name in its parent's entries, and its own entries start empty).

Nodes are tracked by identity (the backing inode, re-assigned on every create/mkdir/symlink so a
reused inode number never inherits an old node's state), so a hard link shares its content.

CONTROL_SOCKET is a Unix socket taking one line per connection:
    sync-all       treat the whole live tree as durable (as `sync` would), answers "ok"
    dump DEST      write the durable view as a new directory tree at DEST, answers "ok N files"
    stats          answers "ok fsync=N fsyncdir=M"
"""
import errno
import os
import shutil
import socket
import stat
import sys
import threading

from fuse import FUSE, FuseOSError, Operations


class DurableFS(Operations):
    def __init__(self, backing, shadow):
        self.root = os.path.realpath(backing)
        self.shadow = shadow
        self.mutex = threading.RLock()
        self.ids = {}        # backing inode -> node id
        self.kind = {}       # node id -> "d" | "f" | "l"
        self.link_target = {}  # node id -> symlink target
        self.entries = {}    # dir node id -> {name: node id} (durable)
        self.synced = set()  # file node ids with a durable copy in shadow/<id>
        self.next_id = 1
        self.fsyncs = 0
        self.fsyncdirs = 0
        self.root_id = self._node(os.lstat(self.root), new=True)
        self.sync_all()

    # ------------------------------------------------------------------ model
    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _node(self, st, new=False):
        with self.mutex:
            nid = self.ids.get(st.st_ino)
            if new or nid is None:
                nid = self.next_id
                self.next_id += 1
                self.ids[st.st_ino] = nid
                self.synced.discard(nid)
                self.entries.pop(nid, None)
            if stat.S_ISDIR(st.st_mode):
                self.kind[nid] = "d"
            elif stat.S_ISLNK(st.st_mode):
                self.kind[nid] = "l"
            else:
                self.kind[nid] = "f"
            return nid

    def _snap_dir(self, full):
        names = {}
        for name in os.listdir(full):
            try:
                st = os.lstat(os.path.join(full, name))
            except FileNotFoundError:
                continue
            nid = self._node(st)
            if self.kind[nid] == "l":
                self.link_target[nid] = os.readlink(os.path.join(full, name))
            names[name] = nid
        with self.mutex:
            self.entries[self._node(os.lstat(full))] = names

    def _snap_file(self, fd):
        nid = self._node(os.fstat(fd))
        tmp = os.path.join(self.shadow, f"{nid}.tmp.{threading.get_ident()}")
        with open(tmp, "wb") as out:
            off = 0
            while True:
                chunk = os.pread(fd, 1 << 20, off)
                if not chunk:
                    break
                out.write(chunk)
                off += len(chunk)
        os.replace(tmp, os.path.join(self.shadow, str(nid)))
        with self.mutex:
            self.synced.add(nid)

    def sync_all(self):
        for dirpath, dirnames, filenames in os.walk(self.root):
            self._snap_dir(dirpath)
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    continue
                fd = os.open(full, os.O_RDONLY)
                try:
                    self._snap_file(fd)
                finally:
                    os.close(fd)

    def dump(self, dest):
        count = 0

        def walk(nid, path):
            nonlocal count
            os.makedirs(path, exist_ok=True)
            for name, cid in sorted(self.entries.get(nid, {}).items()):
                target = os.path.join(path, name)
                kind = self.kind.get(cid, "f")
                if kind == "d":
                    walk(cid, target)
                elif kind == "l":
                    os.symlink(self.link_target.get(cid, ""), target)
                else:
                    src = os.path.join(self.shadow, str(cid))
                    if cid in self.synced:
                        shutil.copyfile(src, target)
                    else:
                        open(target, "wb").close()
                    count += 1

        with self.mutex:
            walk(self.root_id, dest)
        return count

    # ------------------------------------------------------------------ passthrough
    def getattr(self, path, fh=None):
        try:
            st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        return {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
            "st_atime", "st_mtime", "st_ctime", "st_ino")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise FuseOSError(errno.EACCES)

    def statfs(self, path):
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def _wrap(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise FuseOSError(e.errno or errno.EIO)

    def mkdir(self, path, mode):
        full = self._full(path)
        self._wrap(os.mkdir, full, mode)
        self._node(os.lstat(full), new=True)

    def rmdir(self, path):
        self._wrap(os.rmdir, self._full(path))

    def unlink(self, path):
        self._wrap(os.unlink, self._full(path))

    def rename(self, old, new):
        self._wrap(os.rename, self._full(old), self._full(new))

    def link(self, target, source):
        self._wrap(os.link, self._full(source), self._full(target))

    def symlink(self, target, source):
        full = self._full(target)
        self._wrap(os.symlink, source, full)
        nid = self._node(os.lstat(full), new=True)
        self.link_target[nid] = source

    def readlink(self, path):
        return self._wrap(os.readlink, self._full(path))

    def chmod(self, path, mode):
        self._wrap(os.chmod, self._full(path), mode)

    def chown(self, path, uid, gid):
        self._wrap(os.lchown, self._full(path), uid, gid)

    def utimens(self, path, times=None):
        self._wrap(os.utime, self._full(path), times)

    def create(self, path, mode, fi=None):
        fd = self._wrap(os.open, self._full(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        self._node(os.fstat(fd), new=True)
        return fd

    def open(self, path, flags):
        return self._wrap(os.open, self._full(path), flags & ~os.O_CREAT)

    def read(self, path, size, offset, fh):
        return self._wrap(os.pread, fh, size, offset)

    def write(self, path, data, offset, fh):
        return self._wrap(os.pwrite, fh, data, offset)

    def truncate(self, path, length, fh=None):
        self._wrap(os.truncate, fh if fh is not None else self._full(path), length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def fsync(self, path, datasync, fh):
        self.fsyncs += 1
        self._wrap(self._snap_file, fh)
        return 0

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        self.fsyncdirs += 1
        self._wrap(self._snap_dir, self._full(path))
        return 0


def control_loop(fs, sock_path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                part = conn.recv(4096)
                if not part:
                    break
                line += part
            cmd, _, arg = line.decode().strip().partition(" ")
            try:
                if cmd == "sync-all":
                    fs.sync_all()
                    answer = "ok"
                elif cmd == "dump":
                    answer = f"ok {fs.dump(arg)} files"
                elif cmd == "stats":
                    answer = f"ok fsync={fs.fsyncs} fsyncdir={fs.fsyncdirs}"
                else:
                    answer = f"error unknown command {cmd!r}"
            except Exception as e:  # reported to the harness, which fails the case
                answer = f"error {type(e).__name__}: {e}"
            conn.sendall(answer.encode() + b"\n")


def main():
    backing, mountpoint, sock_path, shadow = sys.argv[1:5]
    os.makedirs(shadow, exist_ok=True)
    fs = DurableFS(backing, shadow)
    threading.Thread(target=control_loop, args=(fs, sock_path), daemon=True).start()
    FUSE(fs, mountpoint, foreground=True, nothreads=False, big_writes=True,
         max_write=131072, fsname="durablefs", attr_timeout=0, entry_timeout=0,
         negative_timeout=0)


if __name__ == "__main__":
    main()
