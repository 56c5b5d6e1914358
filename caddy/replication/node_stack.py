"""The state machine stack a node runs: sessions (exactly-once) around the service registry
around locks around the user's machine (the key-value store by default). Every layer takes
its own commands and hands the rest inward; each snapshot holds every layer's state."""

from __future__ import annotations

from typing import NamedTuple

from caddy.replication.locks import LockingStateMachine
from caddy.replication.registry import RegistryStateMachine
from caddy.replication.sessions import SessionStateMachine
from caddy.replication.state_machine import StateMachine


class NodeStack(NamedTuple):
    sessions: SessionStateMachine  # what Raft applies entries to
    registry: RegistryStateMachine
    locking: LockingStateMachine


def node_stack(machine: StateMachine) -> NodeStack:
    """The layers around `machine`; the lock layer's clock is the session layer's log time."""
    sessions: SessionStateMachine
    locking = LockingStateMachine(machine, clock=lambda: sessions.log_time_ms)
    registry = RegistryStateMachine(locking)
    sessions = SessionStateMachine(registry)
    return NodeStack(sessions, registry, locking)
