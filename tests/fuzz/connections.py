"""Connection-level attackers on a node's ports, each a loop until a deadline: raw ZMTP floods
ending in a reset, sockets of every ZeroMQ type with forged and duplicate routing ids, raw TCP
garbage, churn of short-lived connections, half-open connections and slow handshakes."""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import zmq

from tests.fuzz.zmtp import GREETING, PING, envelope, zmtp_connect, zmtp_frame

NODE_IDS = [b"n1", b"n2", b"n3"]


def raw_flooder(ports: tuple[int, int], deadline: float, rnd: random.Random) -> None:
    """Hand-written ZMTP peers that never read: a flood with PINGs among the frames, then a
    reset (SO_LINGER 0), so that a stopped connection is reset while PINGs wait in its buffer."""
    body = envelope()
    while time.monotonic() < deadline:
        socket_type = rnd.choice([b"DEALER", b"DEALER", b"REQ", b"ROUTER"])
        identity = rnd.choice([*NODE_IDS, b"client", os.urandom(4)])
        delimiter = zmtp_frame(b"", more=True) if socket_type == b"REQ" else b""
        chunk = b"".join(
            (PING if i % 3 == 0 else b"") + delimiter + zmtp_frame(body) for i in range(2000)
        )
        try:
            conn = zmtp_connect(rnd.choice(ports), socket_type, identity)
        except OSError:
            time.sleep(0.01)
            continue
        try:
            conn.settimeout(0.2)
            limit, sent = rnd.choice([64 << 10, 1 << 20, 8 << 20]), 0
            while sent < limit and time.monotonic() < deadline:
                sent += conn.send(chunk)
        except OSError:  # the victim stopped reading (timeout) or closed
            pass
        finally:
            if rnd.random() < 0.5:
                time.sleep(rnd.random() * 0.3)  # give a heartbeat time to find it
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


def socket_type_attacker(ports: tuple[int, int], deadline: float, rnd: random.Random) -> None:
    """pyzmq sockets of every type, with forged and duplicate routing ids and fast heartbeats,
    flooding, closed and reopened."""
    context = zmq.Context()
    kinds = [zmq.DEALER, zmq.DEALER, zmq.REQ, zmq.ROUTER, zmq.PUSH, zmq.PUB, zmq.PAIR, zmq.SUB]
    body = envelope()
    while time.monotonic() < deadline:
        sockets = []
        for _ in range(rnd.randint(2, 6)):
            kind = rnd.choice(kinds)
            sock = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, rnd.choice([1, 5, 50]))
            if kind in (zmq.DEALER, zmq.REQ, zmq.ROUTER):
                sock.setsockopt(zmq.ROUTING_ID, rnd.choice(NODE_IDS))
            if kind == zmq.ROUTER:
                sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"victim")
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(f"tcp://127.0.0.1:{rnd.choice(ports)}")
            sockets.append((kind, sock))
        until = min(deadline, time.monotonic() + rnd.random() * 0.5)
        while time.monotonic() < until:
            for kind, sock in sockets:
                try:
                    if kind == zmq.ROUTER:
                        sock.send_multipart([b"victim", body], zmq.NOBLOCK)
                    elif kind == zmq.REQ:
                        sock.send(body, zmq.NOBLOCK)
                    elif kind != zmq.SUB:
                        for _ in range(50):
                            sock.send(body, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        for _, sock in sockets:
            sock.close(0)
    context.term()


def _raw_connection(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def raw_garbage(ports: tuple[int, int], deadline: float, rnd: random.Random) -> None:
    """Connections that send random bytes, a broken greeting, or a good greeting and then
    garbage; closed or reset."""
    while time.monotonic() < deadline:
        conn = _raw_connection(rnd.choice(ports))
        if conn is None:
            time.sleep(0.01)
            continue
        choice = rnd.randrange(3)
        try:
            if choice == 0:
                conn.sendall(rnd.randbytes(rnd.choice([1, 10, 64, 4096, 65536])))
            elif choice == 1:
                greeting = bytearray(GREETING)
                greeting[rnd.randrange(len(greeting))] = rnd.randrange(256)
                conn.sendall(bytes(greeting) + rnd.randbytes(100))
            else:
                conn.sendall(GREETING + rnd.randbytes(rnd.choice([1, 100, 10_000])))
        except OSError:
            pass
        if rnd.random() < 0.5:
            _reset(conn)
        else:
            conn.close()


def connection_churn(ports: tuple[int, int], deadline: float, rnd: random.Random) -> None:
    """Thousands of short-lived connections: bare TCP connects, and DEALERs that connect, send
    one frame and close at once."""
    context = zmq.Context()
    body = envelope(sender="n9")
    while time.monotonic() < deadline:
        port = rnd.choice(ports)
        if rnd.random() < 0.5:
            conn = _raw_connection(port)
            if conn is not None:
                (_reset if rnd.random() < 0.5 else socket.socket.close)(conn)
            continue
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, rnd.choice([0, 50]))
        sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            sock.send(body, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        sock.close()
    context.term()


HALF_OPEN_HELD = 200  # connections held open at once, sending nothing


def half_open(ports: tuple[int, int], deadline: float, rnd: random.Random) -> None:
    """Many TCP connections that never say a word (the node's handshake timeout closes them),
    renewed as they close."""
    held: list[socket.socket] = []
    while time.monotonic() < deadline:
        while len(held) < HALF_OPEN_HELD and time.monotonic() < deadline:
            conn = _raw_connection(rnd.choice(ports))
            if conn is None:
                break
            held.append(conn)
        time.sleep(0.2)
        for conn in list(held):  # a closed one reads as EOF
            conn.setblocking(False)
            try:
                if conn.recv(4096) == b"":
                    held.remove(conn)
                    conn.close()
            except BlockingIOError:
                pass
            except OSError:
                held.remove(conn)
                conn.close()
    for conn in held:
        conn.close()


def slow_handshake(ports: tuple[int, int], deadline: float, rnd: random.Random) -> None:
    """Greetings a byte at a time, up to a few at once."""
    pending: list[tuple[socket.socket, int]] = []
    while time.monotonic() < deadline:
        while len(pending) < 20:
            conn = _raw_connection(rnd.choice(ports))
            if conn is None:
                break
            pending.append((conn, 0))
        time.sleep(0.1)
        still = []
        for conn, sent in pending:
            try:
                conn.send(GREETING[sent : sent + 1])
            except OSError:
                conn.close()
                continue
            if sent + 1 < len(GREETING):
                still.append((conn, sent + 1))
            else:
                conn.close()
        pending = still
    for conn, _ in pending:
        conn.close()
