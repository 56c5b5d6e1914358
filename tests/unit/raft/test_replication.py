"""Log replication: consistency check, conflict resolution (Figure 7), commit rule (Figure 8),
fast backtracking, pipelining and batching, heartbeats and commit propagation."""

import dataclasses
import random

from caddy.raft.memory_storage import MemoryLogStorage
from caddy.raft.messages import AppendEntries, AppendResponse, Heartbeat
from caddy.raft.node import RaftNode
from caddy.raft.progress import ProgressState
from caddy.raft.ready import StateRole
from caddy.raft.types import Entry, HardState, Membership
from tests.unit.raft.cluster import Cluster


def terms(node):
    return [node.log.term_at(i) for i in range(1, node.last_index + 1)]


def seed_log(cluster, node_id, log_terms, term):
    """Give a node a log with `log_terms` and current term `term`, as if recovered from disk."""
    storage = cluster.storage[node_id] = MemoryLogStorage()
    storage.append([Entry(i, t, data=f"{node_id}{i}".encode()) for i, t in enumerate(log_terms, 1)])
    storage.set_hard_state(HardState(term, None, 0))
    storage.sync()
    cluster.start(node_id)


def test_figure_7_followers_with_any_log_converge_to_the_leaders():
    logs = {
        "leader": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6],
        "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
        "b": [1, 1, 1, 4],
        "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        "e": [1, 1, 1, 4, 4, 4, 4],
        "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    }
    cluster = Cluster(tuple(logs), pre_vote=False, check_quorum=False)
    for node_id, log_terms in logs.items():
        seed_log(cluster, node_id, log_terms, term=7)
    leader = cluster.elect("leader")
    assert leader.term == 8
    cluster.tick(5)
    expected = logs["leader"] + [8]
    for node_id in logs:
        assert terms(cluster.nodes[node_id]) == expected, node_id
        assert cluster.nodes[node_id].commit_index == len(expected)
    # The leader's original entries survived everywhere, the conflicting ones are gone.
    assert cluster.nodes["f"].log.entry_at(4).data == b"leader4"


def test_figure_8_an_earlier_term_entry_is_never_committed_by_counting_replicas():
    nodes = ("s1", "s2", "s3", "s4", "s5")
    cluster = Cluster(nodes, pre_vote=False, check_quorum=False, max_append_entries=1)
    cluster.elect("s1")
    # (a) s1 replicates an entry of its term to s2 only.
    cluster.cut = {("s1", n) for n in ("s3", "s4", "s5")}
    cluster.propose("s1", b"x")
    assert cluster.nodes["s2"].last_index == 2
    cluster.crash("s1")
    cluster.heal()
    # (b) s5 wins with votes from s3 and s4, appends its no-op at index 2 locally, crashes.
    assert cluster.elect_without_replication("s5").state is StateRole.LEADER
    cluster.crash("s5")
    # (c) s1 comes back, leads term 3 and gets its old entry onto a majority (s1, s2, s3),
    # but neither s3 nor s4 receives s1's own-term no-op at index 3.
    s1 = cluster.start("s1")

    def without_new_entries_for_s3(to, message):
        if to in ("s3", "s4") and isinstance(message, AppendEntries):
            kept = tuple(e for e in message.entries if e.index <= 2 and to == "s3")
            return dataclasses.replace(message, entries=kept)
        return message

    for _ in range(2):  # the first attempt runs into the votes s3 and s4 gave s5
        s1.campaign()
        cluster.process("s1")
        for _ in range(20):
            batch, cluster.outbox = cluster.outbox, []
            for _sender, to, message in batch:
                if to not in cluster.down:
                    cluster.nodes[to].step(without_new_entries_for_s3(to, message))
                    cluster.process(to)
    assert s1.state is StateRole.LEADER
    assert [cluster.nodes[n].log.term_at(2) for n in ("s1", "s2", "s3")] == [1, 1, 1]
    assert s1.commit_index < 2, "an entry of an earlier term was committed by counting"
    cluster.outbox = []
    cluster.crash("s1")
    # (d) s5 can still win (its last term is higher) and replace that entry everywhere.
    s5 = cluster.start("s5")
    for _ in range(3):  # votes already cast in s1's term make the first attempt fail
        if s5.state is not StateRole.LEADER:
            s5.campaign()
            cluster.deliver()
    assert s5.state is StateRole.LEADER
    cluster.tick(3)
    for node_id in ("s2", "s3", "s4", "s5"):
        assert cluster.nodes[node_id].log.term_at(2) == 2
        assert b"x" not in cluster.commands(node_id)


def test_a_majority_is_needed_to_commit():
    cluster = Cluster(("a", "b", "c", "d", "e"))
    cluster.elect("a")
    cluster.cut = {("a", n) for n in ("c", "d", "e")}
    cluster.propose("a", b"x")
    assert cluster.commands("a") == []
    cluster.cut = {("a", n) for n in ("d", "e")}
    cluster.tick(2)
    assert cluster.commands("a") == [b"x"]


def test_conflict_hints_skip_a_whole_divergent_term_at_once():
    cluster = Cluster(pre_vote=False, check_quorum=False)
    seed_log(cluster, "a", [1] * 3 + [3] * 5, term=3)
    seed_log(cluster, "b", [1] * 3 + [3] * 5, term=3)
    seed_log(cluster, "c", [1] * 3 + [2] * 60, term=3)
    cluster.elect("a")
    cluster.tick(3)
    rejections = [
        m
        for r in cluster.readies["c"]
        for _, m in r.messages
        if isinstance(m, AppendResponse) and not m.success
    ]
    assert 1 <= len(rejections) <= 2
    assert terms(cluster.nodes["c"]) == terms(cluster.nodes["a"])


def follower(log_terms, commit=0):
    storage = MemoryLogStorage()
    storage.append([Entry(i, t) for i, t in enumerate(log_terms, 1)])
    storage.set_hard_state(HardState(max(log_terms), None, commit))
    storage.sync()
    return RaftNode(
        "b",
        Membership(frozenset({"a", "b", "c"})),
        storage_state=storage.load(),
        rng=random.Random(1),
        heartbeat_ticks=1,
        election_ticks_min=10,
        election_ticks_max=20,
    )


def test_a_stale_append_never_truncates_matching_entries():
    node = follower([1, 1, 1, 1, 1])
    node.step(AppendEntries(1, "a", 1, 1, (Entry(2, 1), Entry(3, 1)), 0))
    assert node.last_index == 5
    response = node.ready().messages[-1][1]
    assert response.success and response.index == 3


def test_a_real_conflict_truncates_from_the_first_differing_entry():
    node = follower([1, 1, 2, 2, 2])
    node.step(AppendEntries(3, "a", 2, 1, (Entry(3, 2), Entry(4, 3)), 0))
    assert terms(node) == [1, 1, 2, 3]
    ready = node.ready()
    assert [(e.index, e.term) for e in ready.entries] == [(4, 3)]


def test_consistency_check_rejects_with_hints():
    node = follower([1, 1, 2, 2, 2])
    node.step(AppendEntries(3, "a", 4, 3, (), 0))
    response = node.ready().messages[-1][1]
    assert not response.success
    assert (response.index, response.conflict_term, response.conflict_index) == (4, 2, 3)
    node.step(AppendEntries(3, "a", 9, 3, (), 0))
    response = node.ready().messages[-1][1]
    assert (response.conflict_term, response.conflict_index) == (0, 6)


def test_follower_commit_never_passes_what_the_leader_sent_and_never_goes_down():
    node = follower([1, 1, 1, 1, 1])
    node.step(AppendEntries(1, "a", 1, 1, (Entry(2, 1),), 5))
    assert node.commit_index == 2
    node.step(Heartbeat(1, "a", 1, 0))
    assert node.commit_index == 2
    node.step(Heartbeat(1, "a", 4, 0))
    assert node.commit_index == 4


def test_pipelining_is_bounded_by_the_inflight_window_and_batches_by_count():
    cluster = Cluster(max_inflight=3, max_append_entries=2)
    leader = cluster.elect("a")
    assert leader.progress_of("b").state is ProgressState.REPLICATE
    cluster.outbox = []
    leader.propose_many([b"%d" % i for i in range(20)])
    cluster.process("a")
    appends = [m for _, to, m in cluster.outbox if to == "b" and isinstance(m, AppendEntries)]
    assert len(appends) == 3
    assert all(len(m.entries) == 2 for m in appends)
    cluster.deliver()
    cluster.tick(3)
    assert len(cluster.commands("b")) == 20


def test_batching_by_bytes_keeps_at_least_one_entry():
    cluster = Cluster(max_append_bytes=10, max_append_entries=100)
    leader = cluster.elect("a")
    cluster.outbox = []
    leader.propose_many([b"123456", b"123456", b"x" * 50])
    cluster.process("a")
    sizes = [
        [len(e.data) for e in m.entries]
        for _, to, m in cluster.outbox
        if to == "b" and isinstance(m, AppendEntries)
    ]
    assert sizes[0] == [6]
    cluster.deliver()
    cluster.tick(3)
    assert len(cluster.commands("b")) == 3


def test_a_probing_leader_sends_one_append_at_a_time():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.isolate("c")
    cluster.propose("a", b"x")
    progress = leader.progress_of("c")
    leader.report_unreachable("c")
    assert progress.state is ProgressState.PROBE
    cluster.outbox = []
    leader.propose_many([b"1", b"2"])
    leader.propose(b"3")
    cluster.process("a")
    to_c = [m for _, to, m in cluster.outbox if to == "c" and isinstance(m, AppendEntries)]
    assert len(to_c) <= 1
    cluster.heal()
    cluster.tick(3)
    assert cluster.commands("c") == [b"x", b"1", b"2", b"3"]


def test_heartbeats_carry_commit_no_higher_than_the_followers_match():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.isolate("c")
    cluster.propose("a", b"x")
    cluster.outbox = []
    leader.tick()
    cluster.process("a")
    beats = {to: m for _, to, m in cluster.outbox if isinstance(m, Heartbeat)}
    assert beats["b"].commit == leader.commit_index
    assert beats["c"].commit == leader.progress_of("c").match < leader.commit_index


def test_leader_counts_only_its_own_persisted_entries():
    cluster = Cluster(("a", "b", "c", "d", "e"))
    leader = cluster.elect("a")
    index, _ = leader.propose(b"x")
    ready = leader.ready()  # taken but not yet persisted
    assert [e.index for e in ready.entries] == [index]
    for to, message in ready.messages:  # sent early, as a parallel-append driver might
        if to in ("b", "c"):
            cluster.nodes[to].step(message)
            cluster.process(to)
    for _, to, message in cluster.outbox:
        if to == "a":
            leader.step(message)
    cluster.outbox = []
    assert leader.commit_index < index, "committed with two durable copies out of five"
    leader.advance(ready)
    assert leader.commit_index == index


def test_an_append_from_an_older_term_changes_nothing_and_reveals_the_newer_term():
    node = follower([1, 1, 3, 3])
    node.step(AppendEntries(2, "old", 2, 1, (Entry(3, 2), Entry(4, 2), Entry(5, 2)), 4))
    assert terms(node) == [1, 1, 3, 3] and node.commit_index == 0
    assert node.leader is None
    [(to, answer)] = node.ready().messages
    assert to == "old" and answer.term == 3 and not answer.success


def replicate_without_ticks(data):
    """A 3-node cluster whose leader "a" committed `data`; no tick has passed since. Heartbeats
    (which carry the commit index too) are rare, so a tick means an announcement."""
    cluster = Cluster(heartbeat_ticks=5)
    leader = cluster.elect("a")
    index, _ = leader.propose(data)
    cluster.process("a")
    cluster.deliver()
    assert leader.commit_index == index
    return cluster, leader, index


def appends_sent(cluster):
    return [(to, m) for _, to, m in cluster.outbox if isinstance(m, AppendEntries)]


def test_a_commit_reaches_followers_on_the_next_tick_in_one_append_each():
    cluster, leader, index = replicate_without_ticks(b"x")
    assert all(cluster.nodes[f].commit_index < index for f in "bc"), "announced before a tick"
    leader.tick()
    cluster.process("a")
    announced = appends_sent(cluster)
    assert sorted(to for to, _ in announced) == ["b", "c"]
    assert all(not m.entries and m.commit == index for _, m in announced)
    cluster.deliver()
    assert all(cluster.nodes[f].commit_index == index for f in "bc")
    leader.tick()
    cluster.process("a")
    assert not appends_sent(cluster), "announced twice"


def test_a_heartbeat_carries_the_commit_so_no_announcement_follows_it():
    cluster = Cluster()  # a heartbeat every tick
    leader = cluster.elect("a")
    index, _ = leader.propose(b"x")
    cluster.process("a")
    cluster.deliver()
    leader.tick()
    cluster.process("a")
    beats = [m for _, _, m in cluster.outbox if isinstance(m, Heartbeat)]
    assert len(beats) == 2 and all(m.commit == index for m in beats)
    assert not appends_sent(cluster), "announced beside a heartbeat that carried it"


def test_entries_carry_the_commit_so_no_announcement_follows_them():
    cluster, leader, first = replicate_without_ticks(b"x")
    leader.propose(b"y")  # its AppendEntries tells the followers that x committed
    cluster.process("a")
    carried = [m for _, m in appends_sent(cluster)]
    assert len(carried) == 2 and all(m.commit == first and m.entries for m in carried)
    cluster.outbox = []
    leader.tick()
    cluster.process("a")
    assert not appends_sent(cluster), "x's commit announced again after y carried it"


def test_the_leader_reports_each_followers_match_and_state_and_a_follower_reports_none():
    cluster = Cluster()
    leader = cluster.elect("a")
    cluster.propose("a", b"x")
    assert leader.follower_progress() == {
        "b": {"match": leader.last_index, "state": "replicate"},
        "c": {"match": leader.last_index, "state": "replicate"},
    }
    leader.report_undelivered("b", Heartbeat(leader.term, "a", 0, 0))
    leader.report_unreachable("c")
    assert leader.follower_progress()["b"]["state"] == "probe"
    assert leader.follower_progress()["c"]["state"] == "probe"
    assert cluster.nodes["b"].follower_progress() == {}
