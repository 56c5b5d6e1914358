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


def start_writers(topology, count: int, first_steps: int = 5) -> list[CasWriter]:
    """`count` writers on keys of their own, each once it has `first_steps` acknowledged."""
    writers = [CasWriter(topology, prefix=f"w{i}-") for i in range(count)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writes_reach(writer, first_steps)
    return writers


def finish_writers(topology, writers: list[CasWriter], more_steps: int = 5) -> None:
    """Let each writer get `more_steps` further, stop them, and check that none failed and every
    acknowledged write is there, once."""
    for writer in writers:
        writes_reach(writer, writer.acknowledged + more_steps)
    for writer in writers:
        writer.stop.set()
        writer.join(30)
    for writer in writers:
        assert not writer.failures, writer.failures
        check_all_acknowledged(topology, writer.acknowledged, prefix=writer.prefix)
