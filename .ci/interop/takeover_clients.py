#!/usr/bin/env python3
"""Test scaffolding, not part of pipeserve: clients hammering
examples/echo_server while it is upgraded (--upgradable, then --takeover),
written with Python's standard library only.

usage: takeover_clients.py SOCKET THREADS STOPFILE

THREADS threads each loop connect -> one length-prefixed request -> its
reply -> close, until STOPFILE exists (or for at most 120 s, so that a
failed run leaves nothing behind). A connect that finds no socket
(ENOENT) or nobody listening (ECONNREFUSED) is "not_found", any other
failed connect or request "failed"; a full backlog (EAGAIN) is retried and
counted as "busy". Prints "sent=S answered=A not_found=N busy=B failed=F"
and exits 0 only if every request sent was answered, rightly, and nothing
was not found or failed.
"""
import errno
import os
import socket
import struct
import sys
import threading
import time

counts = {"sent": 0, "answered": 0, "not_found": 0, "busy": 0, "failed": 0}
lock = threading.Lock()


def count(key):
    with lock:
        counts[key] += 1


def read_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed before the reply")
        buf += chunk
    return bytes(buf)


def loop(path, ident, stopfile):
    n = 0
    give_up = time.monotonic() + 120
    while not os.path.exists(stopfile) and time.monotonic() < give_up:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
                print(f"client {ident}: not found: {e}", file=sys.stderr)
                count("not_found")
            elif e.errno == errno.EAGAIN:
                count("busy")
            else:
                print(f"client {ident}: connect failed: {e}", file=sys.stderr)
                count("failed")
            time.sleep(0.001)
            continue
        n += 1
        body = b"client %d request %d" % (ident, n)
        count("sent")
        try:
            s.sendall(struct.pack(">I", len(body)) + body)
            (length,) = struct.unpack(">I", read_exact(s, 4))
            reply = read_exact(s, length)
        except (OSError, EOFError) as e:
            print(f"client {ident}: request {n} failed: {e}", file=sys.stderr)
            count("failed")
            s.close()
            continue
        s.close()
        if reply != body:
            sys.exit(f"client {ident}: a wrong reply {reply!r} to {body!r}")
        count("answered")


def main():
    path, threads, stopfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    workers = [threading.Thread(target=loop, args=(path, i, stopfile)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    c = counts
    print(" ".join(f"{k}={v}" for k, v in c.items()))
    ok = c["sent"] == c["answered"] and c["not_found"] == 0 and c["failed"] == 0 and c["sent"] > 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
