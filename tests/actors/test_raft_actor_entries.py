"""The Raft actor's write path, driven in-process: writes proposed together share a log entry,
large ones are cut into entries of bounded size, and every client gets its own answer in order."""

import pytest

from actors import local_cluster
from actors.raft_actor import RaftActor
from actors.status_board import StatusBoard
from actors.transport import ClientRoute, Inbound, InboundBatch
from caddy.config import load_topology
from caddy.raft.codec import to_wire
from caddy.raft.messages import AppendResponse, VoteResponse
from caddy.raft.types import EntryKind
from caddy.replication.kv import KeyValueStore
from caddy.wire import Envelope


class RecordingTransport:
    def __init__(self):
        self.replies = []
        self.reply_calls = 0

    def send(self, peer, kind, body):
        return True

    def reply(self, route, kind, body):
        self.replies.append((route.request_id, kind, body))

    def reply_many(self, replies):
        self.reply_calls += 1
        for route, kind, body in replies:
            self.reply(route, kind, body)


def raft_actor_of(tmp_path):
    topology = local_cluster.write_topology(
        tmp_path, 3, cluster="test", data_dir=str(tmp_path / "data"), raft={"pre_vote": False}
    )
    transport = RecordingTransport()
    actor = RaftActor(load_topology(topology), "n1", transport, KeyValueStore(), StatusBoard())
    return actor, transport


@pytest.fixture
def leader(tmp_path):
    actor, transport = raft_actor_of(tmp_path)
    actor.core.campaign()
    actor._process_ready()
    actor.core.step(VoteResponse(actor.core.term, "n2", True, False))
    actor._process_ready()
    assert actor.core.state.value == "leader"
    acknowledge(actor, actor.core.last_index)
    yield actor, transport
    actor.on_stop()


def acknowledge(actor, index):
    for peer in ("n2", "n3"):
        message = AppendResponse(actor.core.term, peer, True, index, 0, 0)
        envelope = Envelope("test", peer, message.kind, to_wire(message))
        actor.on_receive(InboundBatch([Inbound(envelope)]))


def put(request_id, key, value, seq):
    body = {"key": key, "value": value, "client": "c1", "seq": seq, "ack": 1}
    envelope = Envelope("test", "client", "kv.put", body, request_id)
    return Inbound(envelope, ClientRoute(b"client", request_id))


def command_entries(actor, after):
    entries = actor.core.log.slice(after + 1, 1000, 1 << 30)
    return [entry for entry in entries if entry.kind is EntryKind.COMMAND]


def test_writes_that_arrive_together_share_one_entry_and_each_gets_its_answer(leader):
    actor, transport = leader
    before = actor.core.last_index
    actor.on_receive(InboundBatch([put(i, f"k{i}", i, seq=i) for i in range(1, 6)]))
    assert len(command_entries(actor, before)) == 1
    assert transport.replies == []  # nothing is answered before a quorum has it
    acknowledge(actor, actor.core.last_index)
    assert transport.replies == [(i, "kv.ok", {"value": None}) for i in range(1, 6)]
    assert [actor._locking.inner.read(f"k{i}") for i in range(1, 6)] == [1, 2, 3, 4, 5]


def test_large_writes_are_cut_into_entries_of_bounded_size(leader, monkeypatch):
    actor, transport = leader
    monkeypatch.setattr(actor.service, "_max_entry_bytes", 2500)
    before = actor.core.last_index
    value = b"v" * 1000
    actor.on_receive(InboundBatch([put(i, f"k{i}", value, seq=i) for i in range(1, 6)]))
    entries = command_entries(actor, before)
    assert len(entries) == 3  # two writes fit in 2500 bytes, not three
    assert all(len(entry.data) < 2500 for entry in entries)
    acknowledge(actor, actor.core.last_index)
    assert [request_id for request_id, _, _ in transport.replies] == [1, 2, 3, 4, 5]
    assert all(kind == "kv.ok" for _, kind, _ in transport.replies)


def test_an_entry_lost_to_another_leader_tells_each_of_its_writers_to_retry(leader):
    actor, transport = leader
    actor.on_receive(InboundBatch([put(i, f"k{i}", i, seq=i) for i in range(1, 4)]))
    assert actor._board.raft.pending_writes == 3
    actor.core.step(VoteResponse(actor.core.term + 1, "n2", False, False))  # a newer term
    actor._process_ready()
    assert [(request_id, kind) for request_id, kind, _ in transport.replies] == [
        (1, "kv.error"),
        (2, "kv.error"),
        (3, "kv.error"),
    ]
    assert all(body["retry"] is True for _, _, body in transport.replies)


def test_a_follower_redirects_a_batch_of_requests_in_one_go(tmp_path):
    actor, transport = raft_actor_of(tmp_path)
    try:
        actor.on_receive(InboundBatch([put(i, f"k{i}", i, seq=i) for i in range(1, 4)]))
        assert [(request_id, kind) for request_id, kind, _ in transport.replies] == [
            (1, "kv.redirect"),
            (2, "kv.redirect"),
            (3, "kv.redirect"),
        ]
        assert transport.reply_calls == 1  # one call: the transport can send them in one frame
    finally:
        actor.on_stop()
