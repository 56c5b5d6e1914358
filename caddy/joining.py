"""Changing a running cluster's membership from outside, one step at a time, until it is what
was asked: what `caddy-ctl add-node`, `caddy-ctl reconfigure` and `caddy-node --join` share.

Each round looks at the live membership, works out the next step and asks the leader for it;
a step the leader refuses (a learner still catching up, another change committing, a new
leader's first commit, or a race with another operator) or that nobody answers is planned again
a moment later, from what is live then, until the deadline.

A new data node joins as a learner and, to vote, is promoted once it holds the log (the leader
refuses the promotion until then, `caddy.reconfig.change_refusal`); a witness joins as one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from caddy.client import Client
from caddy.errors import CaddyError
from caddy.request_policy import RequestFailed

RETRY_S = 0.1

Report = Callable[[str, str, dict[str, list[str]]], None]  # (change, node, membership after)
Step = Callable[[], Any]


def converge(next_step: Callable[[], Step | None], deadline: float, what: str) -> None:
    """Carry out `next_step()` until it returns None (nothing left to do). A round that fails
    with a CaddyError is tried again after RETRY_S, until `deadline` (time.monotonic()): then
    RequestFailed naming `what` and the last reason."""
    while True:
        try:
            step = next_step()
            if step is None:
                return
            step()
            continue
        except CaddyError as error:
            reason = str(error) or type(error).__name__
        if time.monotonic() > deadline:
            raise RequestFailed(f"{what}: {reason}")
        time.sleep(RETRY_S)


def join(
    client: Client, node: str, address: str, role: str, deadline: float, report: Report
) -> None:
    """Make `node` (listening at `address`) a `role` member of the cluster, from wherever it is
    now: added as a learner (or witness) unless it is a member, promoted when it is to vote."""

    def next_step() -> Step | None:
        membership = leaders_membership(client)
        if not any(node in nodes for nodes in membership.values()):
            addition = "add_witness" if role == "witness" else "add_learner"
            return lambda: report(addition, node, change(client, addition, node, address))
        if role == "voter" and node in membership["learners"]:
            return lambda: report("promote", node, change(client, "promote", node))
        return None

    converge(next_step, deadline, f"{node} joining")


def change(
    client: Client, name: str, node: str, address: str | None = None
) -> dict[str, list[str]]:
    """Ask the leader for one membership change (a `caddy.reconfig.Change` value); the
    membership after it."""
    body: dict[str, Any] = {"change": name, "node": node}
    if address is not None:
        body["address"] = address
    return client.admin("admin.change", body)


def leaders_membership(client: Client) -> dict[str, list[str]]:
    """The membership the leader holds now (CONTRACT 8); RequestFailed while it is changing
    (a step is committing: the next one would be refused)."""
    leader = client.leader()
    if leader is None:
        raise RequestFailed("no leader")
    status = client.status(leader)
    if status.get("membership_change_pending"):
        raise RequestFailed("a membership change is committing")
    return status["membership"]
