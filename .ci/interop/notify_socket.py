#!/usr/bin/env python3
"""Test scaffolding, not part of pipeserve: systemd's end of sd_notify(3).

usage: notify_socket.py PATH SECONDS

Binds a datagram socket at PATH (what NOTIFY_SOCKET names) and prints each
notification as one line, its assignments separated by spaces (e.g.
"READY=1 STATUS=listening on /run/x.sock"), until one says STOPPING=1 or
SECONDS pass.
"""
import socket
import sys
import time

path, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        msg = s.recv(4096).decode()
    except socket.timeout:
        break
    print(" ".join(msg.strip().split("\n")), flush=True)
    if "STOPPING=1" in msg.split("\n"):
        break
