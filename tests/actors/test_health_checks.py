"""A node's own health checks (actors.health_checks): each kind passes and fails as documented,
and a check that hangs costs its timeout, is killed, and fails the round."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from actors.health_checks import HealthCheckRunner
from caddy.config import HealthCheck


def run(*checks: HealthCheck, user=(), timeout_s: float = 2.0):
    runner = HealthCheckRunner("n7", checks, user)
    try:
        return runner.run(timeout_s)
    finally:
        runner.close()


def test_no_checks_pass() -> None:
    assert run().passed


def test_a_command_passes_on_exit_0_and_sees_its_node(tmp_path) -> None:
    (tmp_path / "n7.ok").touch()
    check = HealthCheck("command", f'test -f {tmp_path}/{{node}}.ok && test "$CADDY_NODE" = n7')
    assert run(check).passed


def test_a_failing_command_says_its_status_and_last_stderr_line() -> None:
    result = run(HealthCheck("command", "echo first >&2; echo 'disk full' >&2; exit 3"))
    assert not result.passed
    assert (
        result.reason == "command echo first >&2; echo 'disk full' >&2; exit 3: "
        "exit status 3: disk full"
    )


def test_a_command_that_hangs_is_killed_with_its_children_at_the_timeout(tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = run(HealthCheck("command", f"sleep 60 & echo $! > {pid_file}; wait"), timeout_s=0.5)
    assert not result.passed and "still running after 0.5 s (killed)" in result.reason
    assert time.monotonic() - started < 30  # not the 60 s the command wanted
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the command's child {child} outlived the check")


@pytest.fixture
def listening() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


def test_tcp_passes_when_something_listens(listening: int) -> None:
    assert run(HealthCheck("tcp", f"127.0.0.1:{listening}")).passed


def test_tcp_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        result = run(HealthCheck("tcp", f"127.0.0.1:{port}"))
    assert not result.passed and "connect failed" in result.reason


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the handler's API)
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_passes_on_2xx_and_fails_otherwise(http_port: int) -> None:
    assert run(HealthCheck("http", f"http://127.0.0.1:{http_port}/ok")).passed
    result = run(HealthCheck("http", f"http://127.0.0.1:{http_port}/sick"))
    assert not result.passed and "HTTP status 503" in result.reason


def test_a_user_check_fails_by_returning_false_or_raising() -> None:
    def database_up() -> bool:
        return False

    def replica_lag() -> None:
        raise RuntimeError("lag 12 s")

    assert run(user=[lambda: True, lambda: None]).passed
    assert run(user=[database_up]).reason == "check database_up: returned False"
    assert run(user=[replica_lag]).reason == "check replica_lag: RuntimeError: lag 12 s"


def test_every_check_must_pass(tmp_path) -> None:
    result = run(HealthCheck("command", "true"), HealthCheck("command", "false"))
    assert not result.passed and result.reason.startswith("command false: exit status 1")
