"""The asyncio client's write window: a new sequence number never runs more than
`max_in_flight` ahead of the oldest unanswered write (the cluster keeps only that many answers)."""

import asyncio

from caddy.async_client import AsyncClient
from caddy.config import load_topology
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
