"""A subsystem joins a node through the spec list alone: a toy one, defined here and nowhere
under `actors/` or `caddy/`, gets its prefix's messages, ticks and events, and its own section of
the status document that `caddy-ctl --json status` shows."""

from __future__ import annotations

import threading

import pykka
import pytest

from actors.manager import ClusterManager
from actors.subsystems import DEFAULT_SUBSYSTEMS, NodeContext, SubsystemSpec
from actors.ticker import Tick
from actors.transport import Inbound
from caddy.client import Client
from caddy.config import load_topology
from caddy.events import LeaderElected
from tests.harness import ctl_json, wait_until, write_topology


class ToyActor(pykka.ThreadingActor):
    """Counts ticks, answers `toy.echo` from clients, remembers the events it was told."""

    def __init__(self, context: NodeContext) -> None:
        super().__init__()
        self._transport = context.transport
        self._node_id = context.node_id
        self.ticks = 0
        self.events: list[str] = []
        context.board.contribute("toy", self.section)

    def section(self) -> dict:
        return {"ticks_seen": self.ticks > 0, "events": list(self.events), "node": self._node_id}

    def on_receive(self, message):
        if isinstance(message, Tick):
            self.ticks += 1
        elif isinstance(message, Inbound) and message.route is not None:
            body = {"echo": message.envelope.body.get("say"), "from": self._node_id}
            self._transport.reply(message.route, "toy.echoed", body)
        elif isinstance(message, LeaderElected):
            self.events.append(message.kind)


TOY = SubsystemSpec(
    "toy", ToyActor.start, client_prefixes=("toy",), ticks=True, events=("leader.",)
)


@pytest.fixture
def topology(tmp_path):
    return write_topology(tmp_path, 1)


def test_a_toy_subsystem_joins_through_the_spec_list(topology):
    node = ClusterManager("n1", load_topology(topology), subsystems=(*DEFAULT_SUBSYSTEMS, TOY))
    node.start()
    try:
        assert node.subsystem("toy") is not None
        status = wait_until(
            lambda: (
                (s := (ctl_json(topology, "status", "n1", timeout=5) or {}).get("n1"))
                and s["toy"]["ticks_seen"]
                and s["toy"]["events"]
                and s
            ),
            20,
            "the toy's section, with a tick and the election seen",
        )
        assert status["toy"] == {"ticks_seen": True, "events": ["leader.elected"], "node": "n1"}
        # The fields the built-in sections give (the README's `status` fields) are all there.
        for key in (
            "id",
            "role",
            "state",
            "term",
            "leader",
            "commit_index",
            "applied_index",
            "last_log_index",
            "members",
            "peers",
            "dropped",
        ):
            assert key in status, key
        assert (status["state"], status["leader"]) == ("leader", "n1")
        with Client(topology, timeout=5) as client:
            answers = client.gather(["n1"], "toy.echo", {"say": "hi"}, 5.0)
        assert answers == {"n1": {"echo": "hi", "from": "n1"}}
    finally:
        node.stop(graceful=False)
        pykka.ActorRegistry.stop_all()


def test_a_failing_status_section_does_not_break_the_status_of_the_node(topology):
    def broken(context: NodeContext) -> pykka.ActorRef:
        def section() -> dict:
            raise RuntimeError("toy status is broken")

        context.board.contribute("broken", section)
        return ToyActor.start(context)

    spec = SubsystemSpec("toy", broken)
    node = ClusterManager("n1", load_topology(topology), subsystems=(*DEFAULT_SUBSYSTEMS, spec))
    node.start()
    try:
        status = node.status()
        assert status["broken"] == {"error": "RuntimeError: toy status is broken"}
        assert status["id"] == "n1" and "toy" in status
    finally:
        node.stop(graceful=False)
        pykka.ActorRegistry.stop_all()


def test_a_subsystem_switched_off_has_no_actor_and_its_accessor_says_none(topology):
    started = threading.Event()

    def start(context: NodeContext) -> pykka.ActorRef:
        started.set()
        return ToyActor.start(context)

    spec = SubsystemSpec("toy", start, enabled=lambda config: False)
    node = ClusterManager("n1", load_topology(topology), subsystems=(*DEFAULT_SUBSYSTEMS, spec))
    node.start()
    try:
        assert node.subsystem("toy") is None and not started.is_set()
        assert node.load_balancer() is None  # no services in the topology: no balancer
        assert node.raft() is not None and node.membership() is not None
    finally:
        node.stop(graceful=False)
        pykka.ActorRegistry.stop_all()


def test_two_subsystems_of_one_name_are_refused(topology):
    with pytest.raises(ValueError, match="unique"):
        ClusterManager("n1", load_topology(topology), subsystems=(*DEFAULT_SUBSYSTEMS, TOY, TOY))
