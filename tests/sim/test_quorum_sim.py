"""The quorum view (`caddy/quorum.py`) in a seeded simulation of link traffic under faults: frames
dropped and delayed, symmetric partitions, one-way cuts, paused nodes, and configuration
changes (with the old and new configuration both in force for a while), over 3 to 5 nodes with
witnesses and learners. Every node judges its view every 50 ms, as the FencingActor does.

Checked at every judgement, against an oracle that recomputes from the ground truth (which frames
each node received, and when) with its own, brute-force counting:
- the view is exactly right: `has_quorum` is whether the members heard within the window (and the
  node itself) hold a majority of each configuration's voting members with a data voter among
  them, and `reachable` is that set;
- the transitions tell every change and nothing else: quorum lost and regained alternate, `since`
  moves exactly when `has_quorum` does, partition events carry the complement;
- no split brain in the view: when a symmetric partition has held longer than the window, no two
  nodes on different sides both believe they have quorum.
"""

from __future__ import annotations

import random

import pytest

from caddy.quorum import (
    PARTITION_DETECTED,
    PARTITION_HEALED,
    QUORUM_LOST,
    QUORUM_REGAINED,
    QuorumRule,
    QuorumTracker,
    Reachability,
)
from caddy.raft.types import Membership

STEP_MS = 10
JUDGE_EVERY_MS = 50
WINDOW_MS = 500
HEARTBEAT_MS = 250
RUN_MS = 60_000
SEEDS = range(40)


def oracle_can_progress(memberships: list[Membership], present: set[str]) -> bool:
    for membership in memberships:
        voting = list(membership.voters) + list(membership.witnesses)
        votes = sum(1 for member in voting if member in present)
        has_data_voter = any(member in present for member in membership.voters)
        if not voting or votes * 2 <= len(voting) or not has_data_voter:
            return False
    return True


class QuorumWorld:
    def __init__(self, seed: int) -> None:
        rng = self.rng = random.Random(seed)
        count = rng.choice((3, 4, 5))
        self.ids = [f"n{i}" for i in range(1, count + 1)]
        roles = {
            node: rng.choice(("voter", "voter", "voter", "witness", "learner")) for node in self.ids
        }
        roles[self.ids[0]] = "voter"  # at least one data voter
        self.memberships = [self._membership(roles)]
        self.heard: dict[tuple[str, str], int] = {}  # (receiver, sender) -> last delivery, ms
        self.in_flight: list[tuple[int, str, str]] = []  # (deliver at, sender, receiver)
        self.cut: set[tuple[str, str]] = set()  # (sender, receiver) links down
        self.sides: tuple[set[str], set[str]] | None = None  # a symmetric partition's sides
        self.partition_since = 0
        self.paused: set[str] = set()
        self.drop_rate = rng.choice((0.0, 0.05, 0.3))
        self.max_delay_ms = rng.choice((1, 40, 300))
        self.next_beat = {node: rng.randrange(HEARTBEAT_MS) for node in self.ids}
        # Times are in ms throughout: the core takes any unit, and ints keep the oracle exact.
        self.views = {node: Reachability(node, WINDOW_MS) for node in self.ids}
        rule = QuorumRule.of(*self.memberships)
        self.trackers = {node: QuorumTracker(rule, 0) for node in self.ids}
        self.split_checks = 0
        self.told: dict[str, int] = {}  # transitions by kind, over all nodes

    def _membership(self, roles: dict[str, str]) -> Membership:
        def having(role: str) -> frozenset[str]:
            return frozenset(node for node, r in roles.items() if r == role)

        return Membership(having("voter"), having("learner"), having("witness"))

    def run(self) -> None:
        for now in range(0, RUN_MS, STEP_MS):
            self._faults(now)
            self._send(now)
            self._deliver(now)
            if now % JUDGE_EVERY_MS == 0:
                for node in self.ids:
                    if node not in self.paused:
                        self._judge(node, now)
                self._check_no_split_brain(now)

    def _faults(self, now: int) -> None:
        rng = self.rng
        if rng.random() < 0.002:  # a symmetric partition, or healing it
            if self.sides is None:
                shuffled = self.ids[:]
                rng.shuffle(shuffled)
                at = rng.randrange(1, len(shuffled))
                self.sides = (set(shuffled[:at]), set(shuffled[at:]))
                self.partition_since = now
                self.cut = {(a, b) for a in self.sides[0] for b in self.sides[1]}
                self.cut |= {(b, a) for a, b in self.cut}
            else:
                self.sides, self.cut = None, set()
        if self.sides is None and rng.random() < 0.001:  # a one-way cut
            a, b = rng.sample(self.ids, 2)
            self.cut.add((a, b))
        if rng.random() < 0.001:
            node = rng.choice(self.ids)
            self.paused ^= {node}  # pause, or resume
        if rng.random() < 0.0005:  # a configuration change: both in force for a while
            roles = {
                node: rng.choice(("voter", "voter", "witness", "learner")) for node in self.ids
            }
            roles[rng.choice(self.ids)] = "voter"
            self.memberships = [self.memberships[-1], self._membership(roles)]
        elif len(self.memberships) == 2 and rng.random() < 0.01:
            self.memberships = [self.memberships[-1]]  # the change committed

    def _send(self, now: int) -> None:
        for sender in self.ids:
            if sender in self.paused or now < self.next_beat[sender]:
                continue
            self.next_beat[sender] = now + HEARTBEAT_MS
            for receiver in self.ids:
                if receiver == sender or (sender, receiver) in self.cut:
                    continue
                if self.rng.random() < self.drop_rate:
                    continue
                delay = self.rng.randint(1, self.max_delay_ms)
                self.in_flight.append((now + delay, sender, receiver))

    def _deliver(self, now: int) -> None:
        still = []
        for at, sender, receiver in self.in_flight:
            if at > now:
                still.append((at, sender, receiver))
            elif receiver not in self.paused:  # a paused node reads it when resumed: lost here
                self.heard[(receiver, sender)] = at
                self.views[receiver].heard_from(sender, at)
        self.in_flight = still

    def _judge(self, node: str, now: int) -> None:
        """As the FencingActor: its periodic look, against the configuration in force."""
        tracker = self.trackers[node]
        before = tracker.state
        rule = QuorumRule.of(*self.memberships)
        reachable = self.views[node].reachable(rule.members, now)
        changes = tracker.update(reachable, now, rule)
        self._check(node, now, before, changes)

    def _check(self, node: str, now: int, before, changes) -> None:
        members = set().union(*(m.voters | m.witnesses | m.learners for m in self.memberships))
        present = {
            member
            for member in members
            if member == node or self.heard.get((node, member), -WINDOW_MS - 1) >= now - WINDOW_MS
        }
        state = self.trackers[node].state
        expected = oracle_can_progress(self.memberships, present)
        where = f"{node} at {now} ms"
        assert state.has_quorum == expected, f"{where}: has_quorum {state.has_quorum}"
        assert set(state.reachable) == present, f"{where}: reachable {state.reachable}"
        kinds = [change.kind for change in changes]
        for kind in kinds:
            self.told[kind] = self.told.get(kind, 0) + 1
        if state.has_quorum != before.has_quorum:
            assert kinds[0] == (QUORUM_REGAINED if state.has_quorum else QUORUM_LOST), where
            assert state.since == now, where
        else:
            assert QUORUM_LOST not in kinds and QUORUM_REGAINED not in kinds, where
            assert state.since == before.since, where
        for change in changes:
            assert set(change.unreachable) == members - set(change.reachable), where
            if change.kind == PARTITION_HEALED:
                assert not change.unreachable, where
            elif change.kind == PARTITION_DETECTED:
                assert change.unreachable, where

    def _check_no_split_brain(self, now: int) -> None:
        if self.sides is None or now - self.partition_since <= WINDOW_MS + self.max_delay_ms:
            return
        believers = [
            node
            for node in self.ids
            if node not in self.paused and self.trackers[node].state.has_quorum
        ]
        sides_believing = {0 if node in self.sides[0] else 1 for node in believers}
        assert len(sides_believing) <= 1, f"at {now} ms both sides believe: {believers}"
        self.split_checks += 1


@pytest.mark.parametrize("seed", SEEDS)
def test_the_quorum_view_is_exact_and_never_split_under_faults(seed):
    world = QuorumWorld(seed)
    world.run()


def test_the_seeds_reach_partitions_and_quorum_changes():
    """The faults are not vacuous: across the seeds, views lose and regain quorum and see
    partitions form and heal, and split brain is checked during partitions many times."""
    told: dict[str, int] = {}
    checks = 0
    for seed in SEEDS:
        world = QuorumWorld(seed)
        world.run()
        checks += world.split_checks
        for kind, count in world.told.items():
            told[kind] = told.get(kind, 0) + count
    assert checks > 1000, checks
    for kind in (QUORUM_LOST, QUORUM_REGAINED, PARTITION_DETECTED, PARTITION_HEALED):
        assert told.get(kind, 0) > 10, told
