"""The libzmq 4.3.5 abort of issue 18 (`Assertion failed: !_io_error (stream_engine_base.cpp:310)`)
under an attack of other socket types, forged and duplicate routing ids and floods: reproduced on
the routers' old options in a bare victim process, absent from the options the transport uses now
(`actors.transport.configure_router`), and survived by a live node.

How the abort is reached (README, "The ZeroMQ abort"): libzmq stops reading a connection whose
queue is full (RCVHWM) or gone (a handover); a reset then marks the engine `_io_error` without
closing it; and a write reaches `out_event` anyway, either from the router's heartbeat timer or
from a PING decoded when reading resumes. The attacker here does both: raw ZMTP connections that
flood frames with PINGs among them faster than the victim reads and end with a TCP reset, and
pyzmq sockets of every type, some with the routing ids of the nodes.

Run as a script, this module is the victim or the attacker:
`python -m tests.cluster.test_zmq_abort victim old|new PEER_PORT CLIENT_PORT SECONDS KEEPALIVE_MS`
`python -m tests.cluster.test_zmq_abort attack PEER_PORT CLIENT_PORT SECONDS SEED`
"""

from __future__ import annotations

import random
import select
import signal
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from actors.local_cluster import REPO, free_ports
from actors.transport import DRAIN_BATCH, HEARTBEAT_KIND, SOCKET_LIMIT_FACTOR, configure_router
from caddy.client import Client
from caddy.config import TransportSettings, load_topology
from tests.fuzz.connections import raw_flooder, socket_type_attacker
from tests.fuzz.zmtp import envelope, zmtp_connect, zmtp_frame
from tests.harness import LocalCluster, wait_until, write_topology

LIMIT = 1024 * 1024  # the topologies' transport.max_message_bytes
OLD_RUNS = 5  # the old options abort in the first run as a rule (10 of 10 runs of 10 s)
NEW_RUNS = 2
RUN_S = 4.0
ATTACK_S = 6.0
KEEPALIVE_MS = 1000  # short, so that the old routers' heartbeat timer fires during an attack
NODE_IDS = [b"n1", b"n2", b"n3"]


# ----- the attacker --------------------------------------------------------------------------


def attack(peer_port: int, client_port: int, seconds: float, seed: int) -> None:
    ports = (peer_port, client_port)
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=raw_flooder, args=(ports, deadline, random.Random(seed * 10 + i)))
        for i in range(4)
    ] + [
        threading.Thread(
            target=socket_type_attacker, args=(ports, deadline, random.Random(seed * 10 + i))
        )
        for i in range(4, 6)
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 2)


# ----- the victim ----------------------------------------------------------------------------


def _old_router_options(router: zmq.Socket, settings: TransportSettings, peer: bool) -> None:
    """The routers' options before issue 18 (as in actors/transport.py then)."""
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes * SOCKET_LIMIT_FACTOR)
    router.setsockopt(zmq.SNDHWM, settings.send_hwm)
    router.setsockopt(zmq.RCVHWM, settings.send_hwm)
    router.setsockopt(zmq.HEARTBEAT_IVL, settings.keep_alive_ms)
    router.setsockopt(zmq.HEARTBEAT_TIMEOUT, settings.keep_alive_ms * 3)
    router.setsockopt(zmq.HANDSHAKE_IVL, settings.connect_timeout_ms)
    if peer:
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)


def victim(arrangement: str, peer_port: int, client_port: int, seconds: float, keep: int) -> None:
    """Two routers bound like a node's, read the way the node reads them (sleep in poll(2) on
    their ZMQ_FDs, drain up to a batch each, decode every frame); exits 0 after `seconds`."""
    settings = TransportSettings(max_message_bytes=LIMIT, keep_alive_ms=keep)
    context = zmq.Context()
    routers = []
    for port, peer in ((peer_port, True), (client_port, False)):
        router = context.socket(zmq.ROUTER)
        if arrangement == "old":
            _old_router_options(router, settings, peer)
        else:
            configure_router(router, settings)
        router.bind(f"tcp://127.0.0.1:{port}")
        routers.append(router)
    print("ready", flush=True)
    poller = select.poll()
    by_fd = {}
    for router in routers:
        by_fd[router.get(zmq.FD)] = router
        poller.register(router.get(zmq.FD), select.POLLIN)
    deadline = time.monotonic() + seconds
    pending = set(routers)
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(0 if pending else 20):
            pending.add(by_fd[fd])
        for router in list(pending):
            pending.discard(router)
            for _ in range(DRAIN_BATCH):
                try:
                    router.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                frame = router.recv(zmq.NOBLOCK, copy=False)
                while frame.more:
                    frame = router.recv(zmq.NOBLOCK, copy=False)
                try:
                    msgpack.unpackb(frame.bytes)
                except Exception:  # noqa: BLE001 - garbage is expected
                    pass
            else:
                pending.add(router)  # stopped at the batch bound: more may wait
    for router in routers:
        router.close(0)
    context.term()


def _attack_victim(arrangement: str, seed: int) -> tuple[int, str]:
    """One victim process under one attack of RUN_S seconds: its exit status and stderr."""
    peer_port, client_port = free_ports(2)
    module = [sys.executable, "-m", "tests.cluster.test_zmq_abort"]
    args = ["victim", arrangement, str(peer_port), str(client_port), str(RUN_S), str(KEEPALIVE_MS)]
    target = subprocess.Popen(
        [*module, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    attacker = None
    try:
        assert target.stdout.readline().strip() == "ready", target.stderr.read()
        attacker = _start_attacker(peer_port, client_port, RUN_S, seed)
        _, err = target.communicate(timeout=RUN_S + 30)
        return target.returncode, err
    finally:
        for process in (target, attacker):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def _start_attacker(peer_port: int, client_port: int, seconds: float, seed: int):
    args = ["attack", str(peer_port), str(client_port), str(seconds), str(seed)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.test_zmq_abort", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ----- the tests -----------------------------------------------------------------------------


def test_the_old_router_options_abort_under_the_attack():
    """Stops at the first abort (in the first run as a rule, within a second)."""
    outcomes = []
    for seed in range(OLD_RUNS):
        status, err = _attack_victim("old", seed)
        outcomes.append(status)
        if status == -signal.SIGABRT:
            assert "!_io_error" in err and "stream_engine_base.cpp:310" in err, err
            return
    raise AssertionError(f"no abort in {OLD_RUNS} runs of {RUN_S} s: exit statuses {outcomes}")


def test_the_transports_router_options_survive_the_same_attack():
    for seed in range(NEW_RUNS):
        status, err = _attack_victim("new", seed)
        assert status == 0, f"run {seed}: exit status {status}\n{err[-2000:]}"


def test_a_node_under_the_attack_keeps_its_pid_and_serves_writes(tmp_path, processes):
    topology = write_topology(
        tmp_path,
        3,
        transport={"max_message_bytes": LIMIT, "keep_alive_ms": KEEPALIVE_MS},
        raft={"max_append_bytes": LIMIT // 4},
        replication={"snapshot_chunk_bytes": LIMIT // 4},
    )
    local = LocalCluster(topology, processes)
    local.start("n1", "n2", "n3")
    config = load_topology(topology)
    with Client(topology, timeout=10) as client:
        target = local.leader(client)
        pid = local.nodes[target].pid
        client.put("before", 1)
        node = config.node(target)
        attacker = _start_attacker(_port(node.address), _port(node.client_address), ATTACK_S, 1)
        written = 0
        try:
            while attacker.poll() is None:
                client.put(f"during-{written}", written)
                written += 1
        finally:
            if attacker.poll() is None:
                attacker.kill()
            attacker.wait()
        assert local.nodes[target].poll() is None, f"{target} exited under the attack"
        assert local.nodes[target].pid == pid
        local.check_alive()
        client.put("after", 2)
        assert client.get("before") == 1 and client.get("after") == 2
        assert written > 0 and client.get(f"during-{written - 1}") == written - 1
        states = ("leader", "follower")
        wait_until(lambda: client.status(target)["state"] in states, 20, f"{target} settled")


def test_a_node_cuts_a_connection_that_floods_faster_than_it_reads(tmp_path, processes):
    """With no queue limit, the backlog check is what bounds a connection's unread bytes: one
    raw ZMTP connection that never stops sending frames no check refuses (a heartbeat naming a
    peer: a hostile frame would get it cut at its first) is cut (measured: after ~31 MB, node RSS
    peak ~90 MB; without the check the same 512 MB flood went in in 3 s, RSS 1 GB)."""
    topology = write_topology(
        tmp_path,
        3,
        transport={"max_message_bytes": LIMIT},
        raft={"max_append_bytes": LIMIT // 4},
        replication={"snapshot_chunk_bytes": LIMIT // 4},
    )
    local = LocalCluster(topology, processes)
    local.start("n1", "n2", "n3")
    node = load_topology(topology).node("n1")
    with Client(topology, timeout=10) as client:
        local.leader(client)
        pid = local.nodes["n1"].pid
        conn = zmtp_connect(_port(node.address), b"DEALER")
        chunk = zmtp_frame(envelope(kind=HEARTBEAT_KIND)) * 20_000
        with pytest.raises(ConnectionError):  # reset by the node
            for _ in range(64 * 16 * 1024 * 1024 // len(chunk)):  # 64 times the limit here
                conn.sendall(chunk)
        conn.close()
        wait_until(
            lambda: client.status("n1")["dropped"].get("inbound-backlog", 0) >= 1,
            10,
            "the connection counted as cut",
        )
        assert local.nodes["n1"].poll() is None and local.nodes["n1"].pid == pid
        assert local.memory_kb("VmHWM")["n1"] < 400 * 1024, local.memory_kb("VmHWM")
        client.put("after", 1)
        assert client.get("after") == 1


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "victim":
        victim(rest[0], int(rest[1]), int(rest[2]), float(rest[3]), int(rest[4]))
    else:
        attack(int(rest[0]), int(rest[1]), float(rest[2]), int(rest[3]))
