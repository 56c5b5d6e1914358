"""The asyncio client against real node processes: concurrent operations, requests sharing
frames, and writes in flight together through a kill -9 of the leader, each applied exactly once."""

import asyncio
import threading

import pytest

from caddy.async_client import AsyncClient
from caddy.client import Client
from caddy.config import ConfigError
from caddy.errors import CaddyError, WireError
from tests.harness import started_cluster, wait_until

NODES = ("n1", "n2", "n3")
CHAINS = 32  # concurrent writers in one client, each owning a counter


@pytest.fixture
def cluster(tmp_path, processes):
    return started_cluster(tmp_path, processes, 3, raft={"snapshot_threshold": 200})


def test_concurrent_operations_from_one_async_client(cluster):
    async def scenario():
        async with AsyncClient(cluster.topology, timeout=20) as client:
            await asyncio.gather(*(client.put(f"k{i}", i) for i in range(300)))
            values = await asyncio.gather(*(client.get(f"k{i}") for i in range(300)))
            assert values == list(range(300))
            assert await client.cas("k7", 7, "seven") is True
            assert await client.cas("k7", 7, "again") is False
            assert await client.get("k7") == "seven"
            assert await client.delete("k7") is True
            assert await client.delete("k7") is False
            assert await client.get("k7") is None
            with pytest.raises(WireError):
                await client.put("bad", {1, 2})  # a set is no msgpack value
            with pytest.raises(TypeError):
                await client.put(7, "not a str key")
            leader = await client.leader()
            statuses = await client.statuses()
            assert set(statuses) == set(NODES) and all(statuses.values())
            assert statuses[leader]["state"] == "leader"
            assert (await client.status(leader))["followers"].keys() == set(NODES) - {leader}
            with pytest.raises(ConfigError):
                await client.status("n9")
        with Client(cluster.topology, timeout=20) as sync_client:
            assert sync_client.leader() == leader

    asyncio.run(scenario())


def test_coalesced_writes_and_reads_each_get_their_own_answer(cluster):
    """Many tasks, each through put, get, cas, delete and get of its own key at once: the
    requests of each step share frames, and every answer must still be its request's."""

    async def lifecycle(client, n):
        key, value = f"life-{n}", n + 1
        await client.put(key, value)
        assert await client.get(key) == value
        assert await client.cas(key, value, -value) is True
        assert await client.cas(key, value, value) is False
        assert await client.get(key) == -value
        assert await client.delete(key) is True
        assert await client.get(key) is None
        return n

    async def scenario():
        async with AsyncClient(cluster.topology, timeout=20) as client:
            sent_items = []
            send = client._send

            def counting_send(node_id, frame, items):
                sent_items.append(len(items))
                send(node_id, frame, items)

            client._send = counting_send
            await client.put("warm-up", 0)  # finds the leader
            assert await asyncio.gather(*(lifecycle(client, n) for n in range(200))) == list(
                range(200)
            )
            return sent_items

    sent_items = asyncio.run(scenario())
    assert sum(sent_items) >= 1 + 200 * 7
    assert len(sent_items) < sum(sent_items) / 10, "requests did not share frames"


class CasChains:
    """CHAINS tasks, each incrementing its own counter by cas: as the only writer of it, every
    cas must succeed exactly once; a False means a write was lost or applied twice."""

    def __init__(self, topology):
        self.topology = topology
        self.acknowledged = [0] * CHAINS
        self.failures: list[str] = []
        self.stopping = False

    async def run(self):
        async with AsyncClient(self.topology, timeout=30) as client:
            await asyncio.gather(*(self.chain(client, n) for n in range(CHAINS)))

    async def chain(self, client, n):
        while not self.stopping and not self.failures:
            step = self.acknowledged[n]
            try:
                if not await client.cas(f"counter-{n}", step or None, step + 1):
                    self.failures.append(f"chain {n}: cas {step} -> {step + 1} did not apply")
                    return
            except CaddyError as error:
                self.failures.append(f"chain {n} step {step + 1}: {error!r}")
                return
            self.acknowledged[n] = step + 1


def test_writes_in_flight_through_a_leader_kill_apply_exactly_once(cluster):
    chains = CasChains(cluster.topology)
    loop = asyncio.new_event_loop()

    def reach(total, timeout=60):
        wait_until(
            lambda: sum(chains.acknowledged) >= total or chains.failures,
            timeout,
            f"{total} acknowledged writes",
        )
        assert not chains.failures, chains.failures

    runner = threading.Thread(target=lambda: loop.run_until_complete(chains.run()), daemon=True)
    runner.start()
    with Client(cluster.topology, timeout=20) as client:
        reach(500)
        old_leader = cluster.leader(client)
        cluster.kill(old_leader)
        reach(sum(chains.acknowledged) + 500)
        assert cluster.leader(client) != old_leader
        chains.stopping = True
        runner.join(60)
        assert not runner.is_alive() and not chains.failures, chains.failures
        for n, acknowledged in enumerate(chains.acknowledged):
            assert client.get(f"counter-{n}") == acknowledged
    loop.close()
