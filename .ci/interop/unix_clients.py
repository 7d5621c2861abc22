#!/usr/bin/env python3
"""Test scaffolding, not part of pipeserve: independent clients of
examples/echo_server over a Unix socket, written with Python's standard
library only.

usage: unix_clients.py SOCKET len|line THREADS ROUNDS
       unix_clients.py SOCKET drain THREADS SERVER_PID

len:  4-byte big-endian length + payload, sizes 0 B to 1 MiB, pipelined and
      one by one.
line: newline-terminated lines (LF and CRLF), then a half-close: every line
      sent before the half-close must be answered.
drain: each thread sends 3 frames to a server started with --delay-ms; once
      all are sent, SIGINT goes to SERVER_PID; every reply must still arrive,
      then the end of the connection.
Prints "replies=R" and exits 0 only if every reply was right.
"""
import socket
import struct
import sys
import threading

SIZES = [0, 1, 4095, 4096, 65537, 102400, 1 << 20]
errors = []
replies = 0
lock = threading.Lock()


def payload(seed, n):
    return bytes((seed * 31 + i) % 251 for i in range(n))


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def len_client(path, tid, rounds):
    global replies
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    for r in range(rounds):
        # One by one.
        for i, n in enumerate(SIZES):
            body = payload(tid + r + i, n)
            s.sendall(struct.pack(">I", n) + body)
            (m,) = struct.unpack(">I", recv_exact(s, 4))
            if recv_exact(s, m) != body:
                raise AssertionError(f"reply to a {n}-byte frame differs")
        # Pipelined: all small frames in one write, then every reply.
        bodies = [payload(tid + k, k * 13) for k in range(32)]
        s.sendall(b"".join(struct.pack(">I", len(b)) + b for b in bodies))
        for b in bodies:
            (m,) = struct.unpack(">I", recv_exact(s, 4))
            if recv_exact(s, m) != b:
                raise AssertionError("pipelined reply differs")
        with lock:
            replies += len(SIZES) + len(bodies)
    s.close()


def line_client(path, tid, rounds):
    global replies
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    lines = [f"line {tid} {r} {'x' * (r * 100)}" for r in range(rounds)]
    out = b"".join(l.encode() + (b"\r\n" if i % 2 else b"\n") for i, l in enumerate(lines))
    s.sendall(out)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    expected = b"".join(l.encode() + b"\n" for l in lines)
    if bytes(got) != expected:
        raise AssertionError(f"line replies differ: {bytes(got)[:80]!r}...")
    with lock:
        replies += len(lines)
    s.close()


def drain_client(path, tid, sent):
    global replies
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    bodies = [payload(tid * 3 + k, 100 + k) for k in range(3)]
    s.sendall(b"".join(struct.pack(">I", len(b)) + b for b in bodies))
    sent.release()
    for b in bodies:
        (m,) = struct.unpack(">I", recv_exact(s, 4))
        if recv_exact(s, m) != b:
            raise AssertionError("reply after Ctrl-C differs")
        with lock:
            replies += 1
    if s.recv(1) != b"":
        raise AssertionError("expected the end of the connection after the replies")
    s.close()


def drain(path, threads, pid):
    import os
    import signal
    import time

    sent = threading.Semaphore(0)
    ts = [threading.Thread(target=run, args=(drain_client, path, t, sent)) for t in range(threads)]
    for t in ts:
        t.start()
    for _ in ts:
        sent.acquire()
    time.sleep(0.2)
    os.kill(pid, signal.SIGINT)
    for t in ts:
        t.join()
    expected = 3 * threads
    print(f"replies={replies} errors={len(errors)} (after Ctrl-C, {expected} expected)")
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(1 if errors or replies != expected else 0)


def run(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - report every failure
        errors.append(f"{fn.__name__}{args[1:]}: {e}")


def main():
    path, mode, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "drain":
        drain(path, threads, rounds)
    fn = {"len": len_client, "line": line_client}[mode]
    ts = [threading.Thread(target=run, args=(fn, path, t, rounds)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"replies={replies} errors={len(errors)}")
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
