"""Hand-written ZMTP 3.1 for attackers: frames, properties, the NULL greeting, a PING, and a
connection through the handshake that pyzmq would never make (any socket type, any identity,
then whatever bytes the attacker likes)."""

from __future__ import annotations

import socket
import struct

import msgpack


def envelope(sender: str = "n2", kind: str = "raft.append") -> bytes:
    return msgpack.packb([1, "test", sender, kind, 0, 0, {"term": 1}], use_bin_type=True)


def zmtp_frame(body: bytes, *, command: bool = False, more: bool = False) -> bytes:
    flags = (0x04 if command else 0) | (0x01 if more else 0)
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def zmtp_property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


# ZMTP 3.1, NULL mechanism, as a client; then a PING with TTL 0 (arms no timer on the victim).
GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\x00") + bytes(32)
PING = zmtp_frame(b"\x04PING\x00\x00ctx", command=True)


def zmtp_connect(port: int, socket_type: bytes, identity: bytes = b"") -> socket.socket:
    """A TCP connection through ZMTP's handshake: greetings and READYs both ways (data sent
    before the other side's READY is taken for a handshake command, and fails it)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    ready = zmtp_property(b"Socket-Type", socket_type)
    if identity:
        ready += zmtp_property(b"Identity", identity)
    conn.sendall(GREETING + zmtp_frame(b"\x05READY" + ready, command=True))
    receive_exactly(conn, len(GREETING))
    flags, size = receive_exactly(conn, 2)
    if flags & 0x02:  # a long frame
        size = struct.unpack(">Q", bytes([size]) + receive_exactly(conn, 7))[0]
    receive_exactly(conn, size)
    return conn


def receive_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = conn.recv(count - len(data))
        if not more:
            raise ConnectionError("closed during the handshake")
        data += more
    return data
