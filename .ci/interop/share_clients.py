#!/usr/bin/env python3
"""Test scaffolding, not part of pipeserve: the per-user share of
examples/echo_server (--per-user N) against independent clients, written
with Python's standard library only.

usage: share_clients.py SOCKET hold N
       share_clients.py SOCKET calls N SECONDS

hold:  opens N connections, sends one length-prefixed frame on each and
       waits up to 2 s for its echo; prints "served=S refused=R waiting=W"
       (refused: closed without a reply), then holds the connections open
       until stdin closes (run it as another user).
calls: N round trips on one connection, within SECONDS; prints
       "answered=A of N" and exits 0 only if all were answered, right.
"""
import socket
import struct
import sys
import time


def frame(body):
    return struct.pack(">I", len(body)) + body


def read_reply(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def hold(path, n):
    served = refused = waiting = 0
    held = []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        request = frame(b"hold %d" % i)
        s.settimeout(2)
        try:
            s.sendall(request)
            if read_reply(s, len(request)) != request:
                sys.exit("hold: a wrong reply")
            served += 1
        except socket.timeout:
            waiting += 1
        except (EOFError, ConnectionError):
            refused += 1
        held.append(s)
    print(f"served={served} refused={refused} waiting={waiting}", flush=True)
    sys.stdin.read()


def calls(path, n, seconds):
    deadline = time.monotonic() + seconds
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(seconds)
    s.connect(path)
    answered = 0
    try:
        for i in range(n):
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            request = frame(b"call %d" % i)
            s.sendall(request)
            if read_reply(s, len(request)) == request:
                answered += 1
    except (socket.timeout, EOFError, ConnectionError) as e:
        print(f"answered={answered} of {n} ({type(e).__name__})")
        sys.exit(1)
    print(f"answered={answered} of {n}")
    sys.exit(0 if answered == n else 1)


if __name__ == "__main__":
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hold":
        hold(path, int(sys.argv[3]))
    elif mode == "calls":
        calls(path, int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(__doc__)
