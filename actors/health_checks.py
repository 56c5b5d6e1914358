"""Runs a node's own health checks — the topology's commands, TCP connects and HTTP GETs, and
Python callables given in code — each round on threads of their own, so that a check that hangs
costs its timeout and never blocks the node. A round passes when every check passes."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from actors.shell import run_shell
from caddy.config import HealthCheck

UserCheck = Callable[[], object]  # passes unless it returns False or raises
MAX_REASON = 200  # characters of a failed check's explanation kept


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One round: passed, or the first failure's explanation."""

    passed: bool
    reason: str = ""


class HealthCheckRunner:
    """`run(timeout_s)` runs every check at once and returns when all finished or the timeout
    passed (a check still running then has failed; a command is killed)."""

    def __init__(
        self, node_id: str, checks: Sequence[HealthCheck], user_checks: Sequence[UserCheck] = ()
    ) -> None:
        self._node_id = node_id
        self._checks: list[tuple[str, Callable[[float], str | None]]] = []
        for check in checks:
            target = check.target.replace("{node}", node_id)
            self._checks.append((f"{check.kind} {target}", _runner(check.kind, target, node_id)))
        for user_check in user_checks:
            name = getattr(user_check, "__name__", repr(user_check))
            self._checks.append((f"check {name}", _call(user_check)))
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, 2 * len(self._checks)), thread_name_prefix=f"caddy-health-{node_id}"
        )

    def __len__(self) -> int:
        return len(self._checks)

    def run(self, timeout_s: float) -> RoundResult:
        futures: list[tuple[str, Future[str | None]]] = [
            (name, self._pool.submit(check, timeout_s)) for name, check in self._checks
        ]
        wait([future for _, future in futures], timeout=timeout_s + 0.5)
        for name, future in futures:
            if not future.done():
                return RoundResult(False, f"{name}: no answer within {timeout_s:g} s")
            try:
                problem = future.result()
            except Exception as error:  # a check's own failure is its verdict, never ours
                problem = f"{type(error).__name__}: {error}"
            if problem is not None:
                return RoundResult(False, f"{name}: {problem}"[:MAX_REASON])
        return RoundResult(True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _runner(kind: str, target: str, node_id: str) -> Callable[[float], str | None]:
    if kind == "command":
        return lambda timeout_s: _run_command(target, node_id, timeout_s)
    if kind == "tcp":
        return lambda timeout_s: tcp_check(target, timeout_s)
    return lambda timeout_s: http_check(target, timeout_s)


def _run_command(command: str, node_id: str, timeout_s: float) -> str | None:
    return run_shell(command, {"CADDY_NODE": node_id}, timeout_s)


def tcp_check(target: str, timeout_s: float) -> str | None:
    """Why a TCP connect to HOST:PORT failed within `timeout_s`, or None when it succeeded."""
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as error:
        return f"connect failed: {error.strerror or error}"


def http_check(url: str, timeout_s: float) -> str | None:
    """Why a GET of `url` got no 2xx answer within `timeout_s`, or None when it did."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as error:
        return f"GET failed: {getattr(error, 'reason', None) or error}"
    return None if 200 <= status < 300 else f"HTTP status {status}"


def _call(user_check: UserCheck) -> Callable[[float], str | None]:
    def run(timeout_s: float) -> str | None:
        return "returned False" if user_check() is False else None

    return run
