"""The balancer's active checks of a backend (actors.balancer_actor.check_backend): a TCP
connect, or an HTTP GET of a path answered 2xx."""

from __future__ import annotations

import http.server
import socket
import threading

from actors.balancer_actor import check_backend
from actors.local_cluster import free_ports


class _Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_tcp_and_http_checks_pass_and_fail_for_what_they_should():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        assert check_backend(address, 1.0) == (True, "")
        assert check_backend(address, 1.0, "/health") == (True, "")
        passed, reason = check_backend(address, 1.0, "/missing")
        assert not passed and "503" in reason
    finally:
        server.shutdown()
        server.server_close()
    (closed,) = free_ports(1)
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", closed)) != 0
    passed, reason = check_backend(f"tcp://127.0.0.1:{closed}", 1.0)
    assert not passed and reason.startswith("connect failed")
