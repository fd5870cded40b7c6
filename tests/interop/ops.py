#!/usr/bin/env python3
"""Operations scenario of the interop suite: retention, a storage cap, daily quotas, takedown
and a full disk, tried as a new operator would - the settings are in two Sluice configs, the
slots come from the real Prosody and ejabberd, the files are seen and taken down with
`sluice admin`.

Two Sluice instances besides the suite's own (run.sh starts them):
  ops   sluice-ops.toml.in: [retention] max_age (two ejabberd accounts exempt by prefix
        rules), Prosody's JWT `expires` honoured, [quota] daily with ejabberd uploaders,
        [storage] max_total_size, [admin], [audit]
  full  sluice-full.toml.in: storage.dir on a small tmpfs, min_free_space = "0B"
Upload services (prosody.cfg.lua.in, ejabberd.yml.in):
  share-exp.localhost    Prosody mod_http_file_share, http_file_share_expires_after -> ops
  upload-ops.localhost   Prosody mod_http_upload_external v2 (names no uploader)    -> ops
  upload.ops.localhost   ejabberd mod_http_upload on the vhost ops.localhost        -> ops
  upload-full.localhost  Prosody mod_http_upload_external v2                        -> full
Accounts: alice@localhost (Prosody); carol, dave, erin @ops.localhost (ejabberd). Every
password is `<user>-pw`. Output and exit status as client.py's.

    ops.py --sluice target/release/sluice --ops-config W/ops/sluice.toml \
        --full-config W/full/sluice.toml --prosody 127.0.0.1:5222 --ejabberd 127.0.0.1:5223
"""
import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import urllib.parse

from slixmpp.exceptions import IqError, IqTimeout

from client import (Client, Results, b64url_decode, expect_put, get_slot, http_req, info,
                    payload, put_headers, signed_path)

JWT_SERVICE = "share-exp.localhost"
V2_SERVICE = "upload-ops.localhost"
EJ_SERVICE = "upload.ops.localhost"
FULL_SERVICE = "upload-full.localhost"
PROSODY_JID = "alice@localhost"
EXPIRING, QUOTA, OTHER = "carol@ops.localhost", "dave@ops.localhost", "erin@ops.localhost"
OCTETS = "application/octet-stream"
MiB = 1024 * 1024
# Longest wait for an expiry; the configs ask for a few seconds.
MAX_WAIT = 30


def brief(f):
    """A listed file without its digest."""
    return f and {k: v for k, v in f.items() if k != "sha256"}


def size_sum(uploads, paths):
    return sum(u.size for u in uploads if u.path in paths)


def password(jid):
    return jid.split("@")[0] + "-pw"


def sha1(s):
    return hashlib.sha1(s.encode()).hexdigest()


def size_of(s):
    """The config's sizes, in the units the templates use."""
    m = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)\s*", s)
    return int(m[1]) * {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}[m[2]]


def secs_of(s):
    m = re.fullmatch(r"\s*(\d+)\s*s\s*", s)
    return int(m[1])


class Instance:
    """One Sluice instance as its operator sees it: the config, the data dir, `sluice admin`."""

    def __init__(self, sluice, config_path):
        self.sluice, self.config_path = sluice, config_path
        with open(config_path, "rb") as f:
            self.config = tomllib.load(f)
        self.dir = self.config["storage"]["dir"]
        listen = self.config["server"]["listen"][0]
        self.base_url = f"http://{listen}{self.config['server']['url_prefix']}/"
        self.health_url = f"http://{listen}/health"

    def admin(self, *args):
        """Run `sluice admin --config C ARGS --json`; returns (parsed JSON or None, description)."""
        cmd = [self.sluice, "admin", "--config", self.config_path, *args, "--json"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return None, f"$ {shlex.join(cmd)}: timed out"
        desc = (f"$ {shlex.join(cmd)} -> exit {p.returncode}; stdout={p.stdout[:400]!r} "
                f"stderr={p.stderr[:400]!r}")
        if p.returncode != 0:
            return None, desc
        try:
            return json.loads(p.stdout), desc
        except ValueError:
            return None, desc + " (not JSON)"

    def admin_table(self, *args):
        cmd = [self.sluice, "admin", "--config", self.config_path, *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, f"$ {shlex.join(cmd)} -> exit {p.returncode}; stderr={p.stderr[:300]!r}"

    def listing(self):
        """{path: file} of every listed file, and the description of the call."""
        data, desc = self.admin("list", "--all")
        return (None if data is None else {f["path"]: f for f in data["files"]}), desc

    def on_disk(self, path):
        return os.path.exists(os.path.join(self.dir, "files", path))

    def files_in(self, sub):
        """Regular files under DIR/SUB (relative to DIR)."""
        out = []
        for root, _dirs, files in os.walk(os.path.join(self.dir, sub)):
            out += [os.path.relpath(os.path.join(root, f), self.dir) for f in files]
        return out

    def leftovers(self, u):
        """Files left under files/ by a refused upload (below its slot directory), and in staging/."""
        return self.files_in(os.path.join("files", u.path.split("/")[0])) + self.files_in("staging")


class Upload:
    """One slot from an XMPP server and what happened to its PUT."""

    def __init__(self, base_url, put_url, get_url, headers, size, ctype, seed):
        self.put_url, self.get_url, self.headers = put_url, get_url, headers
        self.path = signed_path(put_url, base_url)
        self.size, self.ctype = size, ctype
        self.body = payload(size, f"{seed}/{put_url}")
        self.sha256 = hashlib.sha256(self.body).hexdigest()
        self.resp = None
        self.expires_at = None  # from the listing or the JWT, for the expiry checks

    def put_hdrs(self):
        return put_headers(self.headers, self.size, self.ctype)

    def claims(self):
        """The JWT claims of a mod_http_file_share slot."""
        return json.loads(b64url_decode(self.headers["Authorization"][7:].split(".")[1]))


class Ops:
    def __init__(self, args, res):
        self.args, self.res = args, res
        self.ops = Instance(args.sluice, args.ops_config)
        self.full = Instance(args.sluice, args.full_config) if args.full_config else None
        self.clients = {}

    # ---- plumbing
    async def blocking(self, fn, *a, **kw):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*a, **kw))

    async def http(self, *a, **kw):
        return await self.blocking(http_req, *a, **kw)

    async def admin(self, inst, *a):
        return await self.blocking(inst.admin, *a)

    async def login(self, jid, server):
        xmpp = Client(jid, password(jid))
        host, port = server.rsplit(":", 1)
        xmpp.connect(host=host, port=int(port))
        try:
            await asyncio.wait_for(xmpp.ready, self.args.timeout)
        except Exception as e:  # noqa: BLE001
            self.res.fail(f"log in as {jid} at {server}", repr(e))
            return None
        self.clients[jid] = xmpp
        return xmpp

    async def slot(self, jid, service, inst, name, size, ctype=OCTETS):
        """A fresh slot; None (and a FAIL) if the XMPP server refuses it."""
        try:
            put_url, get_url, hdrs = await get_slot(self.clients[jid], service, name, size, ctype,
                                                    self.args.timeout)
        except (IqError, IqTimeout) as e:
            self.res.fail(f"{jid}: slot for {name!r} ({size} B) from {service}", repr(e))
            return None
        return Upload(inst.base_url, put_url, get_url, hdrs, size, ctype, f"{jid}/{name}")

    async def upload(self, jid, service, inst, name, size, ctype=OCTETS, expect=False):
        """Slot + PUT (with `Expect: 100-continue` if `expect`); the Upload, its .resp set."""
        u = await self.slot(jid, service, inst, name, size, ctype)
        if u is not None:
            if expect:
                u.resp = await self.blocking(expect_put, u.put_url, u.put_hdrs(), u.body)
            else:
                u.resp = await self.http("PUT", u.put_url, u.body, u.put_hdrs())
        return u

    async def uploaded(self, what, *a, **kw):
        """upload() that must answer 201 (one check); the Upload or None."""
        u = await self.upload(*a, **kw)
        if u is None:
            return None
        ok = self.res.check(u.resp.status == 201, f"{what}: PUT -> 201",
                            f"PUT {u.put_url} -> {u.resp.describe()}")
        return u if ok else None

    def shown(self, ok, what, short, desc):
        """A check whose PASS line shows `short`; a FAIL adds `desc` (the whole exchange)."""
        return self.res.check(ok, what, short if ok else f"{short}\n     {desc}", show=True)

    async def get_is(self, u, status, what, method="GET"):
        r = await self.http(method, u.get_url)
        ok = r.status == status
        if ok and status == 200 and method == "GET":
            ok = hashlib.sha256(r.body).hexdigest() == u.sha256
        return self.res.check(ok, f"{what}: {method} -> {status}",
                              f"{method} {u.get_url} -> {r.describe()}")

    async def sleep_until(self, t):
        await asyncio.sleep(min(MAX_WAIT, max(0.0, t - time.time())))

    # ---- 1. retention
    async def expiring_uploads(self):
        """carol's ejabberd file (plain max_age) and alice's JWT file (`expires` claim)."""
        res, ops = self.res, self.ops
        res.scope = "retention"
        max_age = secs_of(ops.config["retention"]["max_age"])
        carol = await self.uploaded(f"{EJ_SERVICE} carol's file (plain max_age {max_age} s)",
                                    EXPIRING, EJ_SERVICE, ops, "expiring.txt", 1500, "text/plain")
        jwt = await self.uploaded(f"{JWT_SERVICE} alice's file (slot JWT with `expires`)",
                                  PROSODY_JID, JWT_SERVICE, ops, "expiring.jpg", 3000, "image/jpeg")
        listed, desc = await self.blocking(ops.listing)
        if carol:
            await self.get_is(carol, 200, "carol's file before max_age")
            await self.get_is(carol, 200, "carol's file again (hot copy)")
            f = (listed or {}).get(carol.path)
            carol.expires_at = f and f["expires_at"]
            self.shown(f is not None and f["uploader"] == sha1(EXPIRING)
                       and f["expires_at"] == f["uploaded_at"] + max_age,
                       "sluice admin list: carol's file, uploader sha1(carol@ops.localhost), "
                       "expires_at = uploaded_at + max_age", brief(f), desc)
        if jwt:
            c = jwt.claims()
            info(f"{JWT_SERVICE} slot claims: {c}")
            f = (listed or {}).get(jwt.path)
            jwt.expires_at = c.get("expires")
            self.shown(f is not None and f["uploader"] == PROSODY_JID and c.get("expires")
                       and f["expires_at"] == c["expires"] < f["uploaded_at"] + max_age,
                       "sluice admin list: alice's file, uploader alice@localhost, expires_at = "
                       "the JWT's `expires` (before max_age)", f"{brief(f)}; JWT iat={c.get('iat')} "
                       f"expires={c.get('expires')}", desc)
            await self.get_is(jwt, 200, "alice's JWT file before `expires`")
            await self.get_is(jwt, 200, "alice's JWT file again (hot copy)")
        return carol, jwt

    async def jwt_expiry(self, jwt):
        if not (jwt and jwt.expires_at):
            return
        self.res.scope = "retention"
        await self.sleep_until(jwt.expires_at + 0.3)
        await self.get_is(jwt, 404, f"alice's JWT file {time.time() - jwt.expires_at:.1f} s past `expires`")
        await self.get_is(jwt, 404, "alice's JWT file past `expires`", method="HEAD")

    async def max_age_expiry(self, carol, jwt):
        res, ops = self.res, self.ops
        res.scope = "retention"
        if not (carol and carol.expires_at):
            return
        await self.sleep_until(carol.expires_at + 0.3)
        await self.get_is(carol, 404, f"carol's file {time.time() - carol.expires_at:.1f} s past max_age")
        res.check(ops.on_disk(carol.path), "carol's expired file is still on disk until the sweep",
                  "files/" + carol.path)
        before, _ = await self.blocking(ops.listing)
        data, desc = await self.admin(ops, "sweep")
        gone = [u for u in (carol, jwt) if u]
        self.shown(data is not None and data["files"] >= len(gone)
                   and data["bytes"] >= sum(u.size for u in gone),
                   f"sluice admin sweep removes the expired files (at least {len(gone)})", data, desc)
        on_disk = [u.path for u in gone if ops.on_disk(u.path)]
        res.check(not on_disk, "swept files are gone from files/", f"still there: {on_disk}")
        after, desc = await self.blocking(ops.listing)
        listed = [u.path for u in gone if u.path in (after or {})]
        res.check(after is not None and not listed, "swept files are no longer listed",
                  f"still listed: {listed}; {desc}")
        kept = [p for p, f in (before or {}).items() if f["uploader"] in (sha1(QUOTA), sha1(OTHER))]
        lost = [p for p in kept if p not in (after or {}) or not ops.on_disk(p)]
        res.check(kept and not lost, f"files under a max_age = \"0s\" rule survive the sweep ({len(kept)})",
                  f"lost: {lost}")
        # README: the sweeper deletes expired files "and the path can then be used again".
        r = await self.http("PUT", carol.put_url, carol.body, carol.put_hdrs())
        res.check(r.status == 201, "carol's slot used again after the sweep: PUT -> 201",
                  f"PUT {carol.put_url} -> {r.describe()}")
        if r.status == 201:
            await self.get_is(carol, 200, "carol's re-uploaded file")

    # ---- 2. daily quota
    async def quota(self):
        res, ops = self.res, self.ops
        res.scope = "daily quota"
        daily = size_of(ops.config["quota"]["daily"])
        size = 100 * 1024
        fits = daily // size
        accepted, refused = [], None
        for i in range(fits + 3):
            u = await self.upload(QUOTA, EJ_SERVICE, ops, f"quota-{i}.bin", size, expect=True)
            if u is None:
                return []
            if u.resp.status != 201:
                refused = u
                break
            accepted.append(u)
        res.check(len(accepted) == fits,
                  f"dave uploads {size} B files until the daily quota ({daily} B): {fits} accepted",
                  f"{len(accepted)} accepted")
        if refused is None:
            res.fail("dave's upload past the daily quota is refused", "every upload got 201")
            return accepted
        r = refused.resp
        ra = r.header("Retry-After") or ""
        self.shown(r.status == 429 and ra.isdigit() and 0 < int(ra) <= 86400,
                   "dave's upload past the daily quota -> 429 with Retry-After (seconds, <= 1 day)",
                   f"{r.status}, Retry-After: {ra}",
                   f"PUT {refused.put_url} (Expect: 100-continue) -> {r.describe()}")
        res.check(r.sent_body is False, "the 429 came before the body (no 100 Continue)",
                  f"PUT {refused.put_url} -> {r.describe()}")
        await self.get_is(refused, 404, "dave's refused upload published nothing")
        for u in accepted:
            await self.get_is(u, 200, f"dave's {u.path.rsplit('/', 1)[-1]} still served")
        other = await self.uploaded("erin (another JID) uploads after dave's refusal",
                                    OTHER, EJ_SERVICE, ops, "other.bin", size)
        if other:
            await self.get_is(other, 200, "erin's file")
        return accepted + ([other] if other else [])

    # ---- 3. listing, stats and takedown
    async def listing_and_takedown(self, kept):
        res, ops = self.res, self.ops
        res.scope = "admin + takedown"
        listed, desc = await self.blocking(ops.listing)
        missing = [u.path for u in kept if u.path not in (listed or {})]
        res.check(listed is not None and not missing,
                  f"sluice admin list --json shows the uploaded files ({len(kept)})",
                  f"missing {missing}; {desc}")
        wrong = [(u.path, listed[u.path]["uploader"]) for u in kept if u.path in (listed or {})
                 and listed[u.path]["uploader"] != u.path.split("/")[0]]
        res.check(listed is not None and not wrong,
                  "each ejabberd file's uploader is its first path segment (sha1 of the JID)",
                  f"wrong: {wrong}")
        rc, table, tdesc = await self.blocking(ops.admin_table, "list", "--uploader", sha1(QUOTA))
        dave = [u.path for u in kept if u.path.startswith(sha1(QUOTA))]
        res.check(rc == 0 and all(p in table for p in dave) and sha1(OTHER) not in table,
                  "sluice admin list --uploader <dave> (table) shows dave's files only", f"{tdesc}\n{table}")
        stats, sdesc = await self.admin(ops, "stats")
        self.shown(listed is not None and stats is not None and stats["files"] == len(listed)
                   and stats["bytes"] == sum(f["size"] for f in listed.values())
                   and any(t["uploader"] == sha1(QUOTA) and t["bytes"] == size_sum(kept, dave)
                           for t in stats["top_uploaders"]),
                   "sluice admin stats --json: files and bytes match the listing, dave among the top "
                   "uploaders", stats and {k: stats[k] for k in ("files", "bytes")}, sdesc)

        # A small file (hot-cacheable), GET twice, take it down.
        u = await self.uploaded("erin's file to take down", OTHER, EJ_SERVICE, ops, "takedown.jpg",
                                20000, "image/jpeg")
        if not u:
            return
        await self.get_is(u, 200, "before the takedown")
        await self.get_is(u, 200, "before the takedown, again (hot copy)")
        data, desc = await self.admin(ops, "delete", u.path, "--reason", "interop takedown")
        self.shown(data is not None and data["files"] == 1 and data["bytes"] == u.size,
                   f"sluice admin delete {u.path}", data, desc)
        await self.get_is(u, 410, "taken-down file at once")
        await self.get_is(u, 410, "taken-down file", method="HEAD")
        res.check(not ops.on_disk(u.path), "the taken-down file is gone from files/", "files/" + u.path)
        r = await self.blocking(expect_put, u.put_url, u.put_hdrs(), u.body)
        self.shown(r.status is not None and 400 <= r.status < 500 and r.sent_body is False,
                   "its slot used again -> refused before the body (4xx)", r.status,
                   f"PUT {u.put_url} (Expect: 100-continue) -> {r.describe()}")
        # What ejabberd would sign if it handed out this path again, for another size.
        body = payload(777, "again")
        mac = hmac.new(self.args.secret.encode(), f"{u.path} 777".encode(), hashlib.sha256).hexdigest()
        url = ops.base_url + urllib.parse.quote(u.path) + "?v=" + mac
        r = await self.http("PUT", url, body, [("Content-Length", "777"), ("Content-Type", "image/jpeg")])
        self.shown(r.status is not None and 400 <= r.status < 500,
                   "a new slot for the taken-down path (valid MAC, other size) -> refused (4xx)",
                   r.status, f"PUT {url} -> {r.describe()}")
        await self.get_is(u, 410, "taken-down file after the new PUTs")
        listed, desc = await self.blocking(ops.listing)
        res.check(listed is not None and u.path not in listed, "the taken-down file is no longer listed", desc)
        await self.audit_log(u)

    async def audit_log(self, taken_down):
        res, ops = self.res, self.ops
        path = ops.config.get("audit", {}).get("path")
        if not path:
            return
        lines, deadline = [], time.time() + 5  # written by a background thread
        while time.time() < deadline:
            with open(path, encoding="utf-8") as f:
                lines = [json.loads(x) for x in f if x.strip()]
            if any(e.get("event") == "admin" and e.get("action") == "delete" for e in lines):
                break
            await asyncio.sleep(0.1)
        dele = [e for e in lines if e.get("event") == "delete" and e.get("path") == taken_down.path]
        adm = [e for e in lines if e.get("event") == "admin" and e.get("action") == "delete"]
        res.check(len(dele) == 1 and dele[0].get("reason") == "admin" and dele[0].get("by") == "admin"
                  and dele[0].get("uploader") == sha1(OTHER)
                  and adm and adm[-1]["params"].get("reason") == "interop takedown",
                  "audit log: the takedown (reason admin, by admin, uploader) and the admin request "
                  "with its reason", f"delete lines {dele}; admin delete lines {adm}")
        ups = [e for e in lines if e.get("event") == "upload"]
        res.check(any(e.get("path") == taken_down.path for e in ups),
                  "audit log: the upload of the taken-down file", f"{len(ups)} upload lines")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        token = ops.config["admin"]["token"].get("secret", "")
        leaks = [n for n, s in (("secret", self.args.secret), ("admin token", token),
                                ("a MAC", urllib.parse.urlsplit(taken_down.put_url).query[2:]))
                 if s and s in text]
        res.check(not leaks, "audit log holds no secret, token or MAC", f"found {leaks}")

    # ---- 4. storage cap
    async def cap(self):
        res, ops = self.res, self.ops
        res.scope = "storage cap"
        cap = size_of(ops.config["storage"]["max_total_size"])
        stats, desc = await self.admin(ops, "stats")
        if not res.check(stats is not None and stats["bytes"] < cap,
                         f"stored bytes below max_total_size ({cap})", desc):
            return
        room = cap - stats["bytes"]
        u = await self.upload(PROSODY_JID, V2_SERVICE, ops, "over-cap.bin", room + 1, expect=True)
        if u:
            self.shown(u.resp.status == 507 and u.resp.sent_body is False,
                       f"upload of {room + 1} B with {room} B left under the cap -> 507 before the body",
                       u.resp.status, f"PUT {u.put_url} (Expect: 100-continue) -> {u.resp.describe()}")
            res.check(not ops.on_disk(u.path.split("/")[0]) and not ops.files_in("staging"),
                      "nothing of it under files/ or staging/", f"{ops.leftovers(u)}")
            await self.get_is(u, 404, "the refused upload")
        u = await self.uploaded(f"upload of exactly the {room} B left", PROSODY_JID, V2_SERVICE, ops,
                                "fits.bin", room)
        if u:
            await self.get_is(u, 200, "the file that fills the cap")
        stats, desc = await self.admin(ops, "stats")
        res.check(stats is not None and stats["bytes"] == cap, "stats: stored bytes = max_total_size", desc)
        u = await self.upload(PROSODY_JID, V2_SERVICE, ops, "one-more.txt", 1, "text/plain")
        if u:
            res.check(u.resp.status == 507, "at the cap, a 1-byte upload -> 507",
                      f"PUT {u.put_url} -> {u.resp.describe()}")

    # ---- 5. a really full disk
    async def full_disk(self):
        res, full = self.res, self.full
        res.scope = "full disk"
        stored, refusals = [], []
        # Fill with 1 MiB files until one is refused, then the rest with 64 KiB and 4 KiB ones.
        for size, tries in ((MiB, 16), (64 * 1024, 24), (4096, 24)):
            for _ in range(tries):
                u = await self.upload(PROSODY_JID, FULL_SERVICE, full, f"fill-{len(stored):03}.bin", size)
                if u is None:
                    return
                if u.resp.status == 201:
                    stored.append(u)
                    continue
                refusals.append(u)
                break
        sizes = {s: sum(1 for u in stored if u.size == s) for s in (MiB, 64 * 1024, 4096)}
        info(f"full disk: stored {sizes} (size: count), refused {[u.size for u in refusals]}")
        res.check(len(refusals) == 3 and all(u.resp.status == 507 for u in refusals),
                  f"filling the tmpfs: 1 MiB, 64 KiB and 4 KiB uploads each end in 507 "
                  f"({len(stored)} files stored)",
                  "; ".join(f"{u.size} B: PUT {u.put_url} -> {u.resp.describe()}" for u in refusals))
        bad = []
        for u in stored:
            r = await self.http("GET", u.get_url)
            if r.status != 200 or hashlib.sha256(r.body).hexdigest() != u.sha256:
                bad.append(f"GET {u.get_url} -> {r.describe()}")
        res.check(stored and not bad, f"every 201'd file is served byte-identical ({len(stored)})",
                  "\n     ".join(bad))
        leftovers = sorted({f for u in refusals for f in full.leftovers(u)})
        res.check(not leftovers, "no file of the refused uploads in files/ or staging/", f"{leftovers}")
        dirs = [u.path.split("/")[0] for u in refusals if full.on_disk(u.path.split("/")[0])]
        if dirs:
            info(f"full disk: refused uploads left empty slot directories: {['files/' + d for d in dirs]}")
        for u in refusals[:1]:
            await self.get_is(u, 404, "a refused upload")
        r = await self.http("GET", full.health_url)
        res.check(r.status == 200, "GET /health on the full disk -> 200", r.describe())
        listed, desc = await self.blocking(full.listing)
        res.check(listed is not None and set(listed) == {u.path for u in stored},
                  "sluice admin list shows exactly the 201'd files",
                  desc if listed is None else
                  f"extra {set(listed) - {u.path for u in stored}}, "
                  f"missing {({u.path for u in stored}) - set(listed)}")
        if not stored:
            return
        victim = stored[0]
        data, desc = await self.admin(full, "delete", victim.path, "--reason", "disk full")
        self.shown(data is not None and data["files"] == 1, f"sluice admin delete {victim.path} on the full disk",
                   data, desc)
        await self.get_is(victim, 410, "the deleted file")
        u = await self.uploaded("after the delete, a 512 KiB upload", PROSODY_JID, FULL_SERVICE, full,
                                "after.bin", 512 * 1024)
        if u:
            await self.get_is(u, 200, "the upload after the delete")
        bad = []
        for s in stored[1:]:
            r = await self.http("GET", s.get_url)
            if r.status != 200 or hashlib.sha256(r.body).hexdigest() != s.sha256:
                bad.append(f"GET {s.get_url} -> {r.describe()}")
        res.check(not bad, "the other files are still served byte-identical", "\n     ".join(bad))

    async def run(self):
        a = self.args
        res = self.res
        for jid, server in ((PROSODY_JID, a.prosody), (EXPIRING, a.ejabberd), (QUOTA, a.ejabberd),
                            (OTHER, a.ejabberd)):
            if await self.login(jid, server) is None:
                return
        res.ok(f"log in as {PROSODY_JID} (Prosody) and carol, dave, erin @ops.localhost (ejabberd)")
        for inst in filter(None, (self.ops, self.full)):
            r = await self.http("GET", inst.health_url)
            res.check(r.status == 200, f"sluice at {inst.base_url} is up", r.describe())
        try:
            carol, jwt = await self.expiring_uploads()  # their clocks run during what follows
            await self.jwt_expiry(jwt)
            kept = await self.quota()
            await self.listing_and_takedown(kept)
            await self.cap()
            await self.max_age_expiry(carol, jwt)
            if self.full:
                await self.full_disk()
            else:
                res.scope = "full disk"
                res.skip("full disk", "no --full-config (run.sh could not mount a tmpfs)")
        finally:
            for x in self.clients.values():
                x.disconnect()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sluice", required=True, help="the sluice binary (for `sluice admin`)")
    ap.add_argument("--ops-config", required=True)
    ap.add_argument("--full-config", help="the full-disk instance's config (omit to skip)")
    ap.add_argument("--prosody", required=True, help="HOST:PORT of Prosody's c2s listener")
    ap.add_argument("--ejabberd", required=True, help="HOST:PORT of ejabberd's c2s listener")
    ap.add_argument("--secret", required=True, help="the shared secret (to sign a slot for a taken-down path)")
    ap.add_argument("--label", default="ops")
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR,
                        format="%(levelname)s %(name)s %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    res = Results(args.label)
    res.scope = "setup"
    loop.run_until_complete(Ops(args, res).run())
    for scope, (p, f, k) in res.by_scope.items():
        print(f"SCENARIO {args.label}: {scope}: {p} passed, {f} failed, {k} skipped", flush=True)
    print("RESULT " + json.dumps({"passed": res.passed, "failed": res.failed, "skipped": res.skipped}), flush=True)
    sys.exit(1 if res.failed or not res.passed else 0)


if __name__ == "__main__":
    main()
