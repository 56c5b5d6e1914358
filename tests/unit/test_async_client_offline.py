"""The asyncio client without a running cluster: its write window, full send queues, close().

The window: a new sequence number never runs more than `max_in_flight` ahead of the oldest
unanswered write (the cluster keeps only that many answers).
"""

import asyncio
import time

import pytest
import zmq

import caddy.async_client
from caddy.async_client import AsyncClient
from caddy.client import socket_options
from caddy.config import load_topology
from caddy.errors import Timeout, Unavailable
from tests.harness import write_topology


def test_a_slow_oldest_write_holds_back_new_sequence_numbers(tmp_path):
    client = AsyncClient(load_topology(write_topology(tmp_path, 3)), max_in_flight=8)
    sent: list[tuple[int, int]] = []  # (seq, ack) in the order requests went out
    release_first = asyncio.Event()

    async def fake_call(kind, body):
        sent.append((body["seq"], body["ack"]))
        if body["seq"] == 1:
            await release_first.wait()
        return None

    client._call = fake_call

    async def scenario():
        writes = [asyncio.create_task(client.put(f"k{i}", i)) for i in range(30)]
        for _ in range(50):  # let everything that may run, run
            await asyncio.sleep(0)
        assert max(seq for seq, _ in sent) == 8, "ran ahead of the unanswered seq 1"
        assert all(ack == 1 for _, ack in sent)
        release_first.set()
        await asyncio.gather(*writes)

    asyncio.run(scenario())
    assert sorted(seq for seq, _ in sent) == list(range(1, 31))


async def ticking(counter: list[int]) -> None:
    while True:
        counter[0] += 1
        await asyncio.sleep(0.01)


def test_full_send_queues_never_freeze_the_event_loop(tmp_path, monkeypatch):
    """Nobody listens and each node's queue holds one message: after the first request every send
    fails at once, and the client must still yield to the loop while it waits for its deadline."""

    def one_message_queue(sock):
        socket_options(sock)
        sock.setsockopt(zmq.SNDHWM, 1)

    monkeypatch.setattr(caddy.async_client, "socket_options", one_message_queue)
    client = AsyncClient(load_topology(write_topology(tmp_path, 3)), timeout=0.5)

    async def scenario():
        ticks = [0]
        ticker = asyncio.create_task(ticking(ticks))
        with pytest.raises(Unavailable):
            await client.put("k", 1)  # fills the queues
        before, started = ticks[0], time.monotonic()
        with pytest.raises((Unavailable, Timeout)):
            await client.put("k", 2)
        ran = ticks[0] - before
        ticker.cancel()
        await client.close()
        return ran, time.monotonic() - started

    ran, elapsed = asyncio.run(scenario())
    assert ran >= 5, f"the loop ran other tasks {ran} times in {elapsed:.2f} s"


def test_close_ends_requests_in_flight_and_leaves_nothing_open(tmp_path):
    client = AsyncClient(load_topology(write_topology(tmp_path, 3)), timeout=30)

    async def scenario():
        put = asyncio.create_task(client.put("k", 1))  # nobody listens: it keeps retrying
        for _ in range(20):
            await asyncio.sleep(0)
        await client.close()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(put, 5)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        return others

    assert asyncio.run(scenario()) == []
    assert client._sockets == {} and client._readers == []
