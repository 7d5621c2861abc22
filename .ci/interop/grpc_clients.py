#!/usr/bin/env python3
"""Calls examples/grpc over a Unix socket with Python's grpcio, an independent
gRPC implementation: the standard health check, unary Echo and
server-streaming Count, from more concurrent clients (each its own channel,
so its own connection) than the server has instances.

The messages are encoded by hand (they are tiny), so no generated code is
needed: EchoRequest {bytes payload = 1}, EchoReply {bytes payload = 1;
uint32 client_pid = 2}, CountRequest {uint32 n = 1}, CountReply {uint32 i = 1}.

usage: grpc_clients.py SOCKET CLIENTS CALLS
"""
import os
import sys
import threading

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def fields(message):
    """The fields of a protobuf message: {number: value}, varints and bytes."""
    out, i = {}, 0
    while i < len(message):
        key, i = read_varint(message, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], i = read_varint(message, i)
        elif wire == 2:
            length, i = read_varint(message, i)
            out[number], i = message[i:i + length], i + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def client(address, index, calls, failures):
    try:
        # grpcio sends the socket path, percent-encoded, as the :authority,
        # which is no valid authority: h2 (under tonic) refuses the stream.
        # Name the authority, as any client of a socket-served gRPC must.
        options = [("grpc.default_authority", "localhost")]
        with grpc.insecure_channel(f"unix:{address}", options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            status = fields(check(b"", timeout=30)).get(1, 0)
            assert status == 1, f"health status {status}, expected 1 (SERVING)"
            echo = channel.unary_unary("/pipeserve.echo.Echo/Echo")
            count = channel.unary_stream("/pipeserve.echo.Echo/Count")
            for call in range(calls):
                payload = os.urandom(64 + 1000 * call)
                reply = fields(echo(b"\x0a" + varint(len(payload)) + payload, timeout=30))
                assert reply.get(1) == payload, "echo payload differs"
                assert reply.get(2) == os.getpid(), f"client_pid {reply.get(2)} != {os.getpid()}"
                n = 10 + index
                seen = [fields(m).get(1, 0) for m in count(b"\x08" + varint(n), timeout=30)]
                assert seen == list(range(n)), f"count {n}: {seen}"
    except Exception as e:  # noqa: BLE001 - reported, and the run fails
        failures.append(f"client {index}: {e!r}")


def main():
    address, clients, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    failures = []
    threads = [threading.Thread(target=client, args=(address, i, calls, failures)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"grpcio: {clients} clients x {calls} x (health, echo, count) ok")


if __name__ == "__main__":
    main()
