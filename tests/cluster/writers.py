"""Writers for fault tests: each step's writes are retried until the cluster confirms them, and
the checks that find every confirmed write applied exactly once."""

import threading

from caddy.client import Client
from caddy.errors import CaddyError
from tests.harness import wait_until


class CasWriter(threading.Thread):
    """Increments `counter` by cas and puts a unique key per step; retries each step until done.

    As the only writer, every cas must succeed exactly once: a False means a write was lost or
    applied twice. `acknowledged` lists the steps whose writes the cluster confirmed.
    """

    def __init__(self, topology, prefix: str = ""):
        super().__init__(daemon=True)
        self.topology = topology
        self.prefix = prefix  # writers with different prefixes use different keys
        self.acknowledged = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self):
        with Client(self.topology, timeout=30) as client:
            while not self.stop.is_set():
                step = self.acknowledged
                try:
                    if not client.cas(f"{self.prefix}counter", step or None, step + 1):
                        self.failures.append(f"cas {step} -> {step + 1} did not apply")
                        return
                    client.put(f"{self.prefix}step-{step + 1}", step + 1)
                except CaddyError as error:
                    self.failures.append(f"step {step + 1}: {error!r}")
                    return
                self.acknowledged = step + 1


def check_all_acknowledged(topology, acknowledged, prefix: str = ""):
    with Client(topology, timeout=20) as client:
        assert client.get(f"{prefix}counter") == acknowledged
        for step in range(1, acknowledged + 1):
            assert client.get(f"{prefix}step-{step}") == step


def writes_reach(writer, count, timeout=30):
    wait_until(
        lambda: writer.acknowledged >= count or writer.failures,
        timeout,
        f"{count} acknowledged steps",
    )
    assert not writer.failures, writer.failures
