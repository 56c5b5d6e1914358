"""`caddy-node`: run one node in the foreground, or supervise every node of a topology.

Exit status: 0 clean stop, 2 invalid arguments or topology, 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from caddy.config import LOG_LEVELS, ClusterConfig, ConfigError, load_topology

if TYPE_CHECKING:
    from actors.manager import ClusterManager

log = logging.getLogger("caddy.node")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CHILD_STOP_GRACE_S = 10.0
JOIN_WAIT_S = 3600.0  # the longest a joining node asks to be added and promoted
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 with usage: keep that, no traceback
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, checked; argparse prints usage and one error line and exits 2 otherwise.

    TOPOLOGY and --node ID are non-empty (whether ID is a node of TOPOLOGY is checked once the
    topology is loaded); --data-dir DIR is non-empty and, when it exists, a directory;
    --log-level LEVEL is one of LOG_LEVELS, in any case.
    """
    parser = _UsageParser(
        prog="caddy-node",
        description="Run one CADDY node (--node), or every node of TOPOLOGY as child processes.",
    )
    parser.add_argument("topology", type=_non_empty, metavar="TOPOLOGY", help="topology file")
    parser.add_argument(
        "--node", type=_non_empty, metavar="ID", help="run only this node, in the foreground"
    )
    parser.add_argument(
        "--data-dir", type=_data_dir, metavar="DIR", help="override the topology's data_dir"
    )
    parser.add_argument(
        "--join",
        action="store_true",
        help="with --node: join a running cluster (added as a learner, promoted once caught "
        "up when the topology makes it a voter) instead of starting the topology's membership",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"logging level: {', '.join(LOG_LEVELS)} (default: the topology's log_level, INFO)",
    )
    return parser.parse_args(argv)


def _non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _data_dir(text: str) -> str:
    path = Path(_non_empty(text))
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


def _load(args: argparse.Namespace) -> ClusterConfig:
    """The topology, with --data-dir in force: at start, and for each settings reload."""
    config = load_topology(args.topology)
    if args.data_dir:
        config = dataclasses.replace(config, data_dir=Path(args.data_dir).resolve())
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    if args.node is None:
        if args.join:
            print("caddy-node: --join: only with --node ID", file=sys.stderr)
            return EXIT_USAGE
        _configure_logging("supervisor", args.log_level or config.log_level)
        return Supervisor(args, config).run()
    if args.node not in {node.id for node in config.nodes}:
        known = ", ".join(node.id for node in config.nodes)
        print(
            f"caddy-node: --node: no node {args.node!r} in {args.topology} (nodes: {known})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _configure_logging(args.node, args.log_level or config.log_level)
    return run_node(args.node, config, join=args.join, reload_from=partial(_load, args))


def _configure_logging(node_label: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s [{node_label}] %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _ask_to_join(node_id: str, config: ClusterConfig) -> None:
    """Ask the cluster to add this node (a learner first; promoted when it is to vote)."""
    from caddy import joining
    from caddy.client import Client
    from caddy.errors import CaddyError

    node = config.node(node_id)

    def report(change: str, node_id: str, membership: dict) -> None:
        log.info("joined: %s %s (voters %s)", change, node_id, ", ".join(membership["voters"]))

    deadline = time.monotonic() + JOIN_WAIT_S
    try:
        with Client(config) as client:
            joining.join(client, node_id, node.address, node.role, deadline, report)
    except CaddyError as error:
        log.error("could not join the cluster: %s; add it with caddy-ctl add-node", error)


def _reload_soon(manager: ClusterManager) -> None:
    """On SIGHUP: reload on a thread of its own (a signal handler must not wait for actors)."""
    log.info("received SIGHUP: reloading the settings")
    threading.Thread(target=manager.reload, name="caddy-reload", daemon=True).start()


def _stop_event_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def run_node(
    node_id: str,
    config: ClusterConfig,
    join: bool = False,
    reload_from: Callable[[], ClusterConfig] | None = None,
) -> int:
    """Run one node until SIGTERM or SIGINT, then stop it gracefully; with `join`, as a node
    joining a running cluster, which it asks to add it. SIGHUP reloads the live settings from
    `reload_from()` (`ClusterManager.reload`)."""
    import pykka

    from actors.manager import ClusterManager  # imported here: supervisor mode needs no zmq

    for warning in config.warnings:  # advice about the topology, not an error
        log.warning("%s", warning)
    stop = _stop_event_on_signals()
    manager = ClusterManager(node_id, config, join=join, reload_from=reload_from)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _reload_soon(manager))
    try:
        manager.start()
    except Exception as error:
        log.error("cannot start: %s", error)
        manager.stop()
        pykka.ActorRegistry.stop_all()
        return EXIT_FAILURE
    if join:
        threading.Thread(
            target=_ask_to_join, args=(node_id, config), name="caddy-join", daemon=True
        ).start()
    status = EXIT_OK
    try:
        while not stop.wait(0.5):
            failed = manager.failed_actors()
            if failed:  # a node missing a subsystem must not linger half alive
                log.error("stopping: %s died; see the error above", ", ".join(failed))
                status = EXIT_FAILURE
                break
    finally:
        manager.stop(graceful=status == EXIT_OK)
        pykka.ActorRegistry.stop_all()
    return status


class Supervisor:
    """Starts every node as a child process, reports exits, and stops them all on a signal."""

    def __init__(self, args: argparse.Namespace, config: ClusterConfig) -> None:
        self._args = args
        self._config = config
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _command(self, node_id: str) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "actors.node_process",
            self._args.topology,
            "--node",
            node_id,
        ]
        if self._args.log_level:
            command += ["--log-level", self._args.log_level]
        if self._args.data_dir:
            command += ["--data-dir", self._args.data_dir]
        return command

    def run(self) -> int:
        stop = _stop_event_on_signals()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        for node in self._config.nodes:
            self._children[node.id] = subprocess.Popen(
                self._command(node.id), env=env, preexec_fn=_die_with_parent
            )
            log.info("started node %s (pid %d)", node.id, self._children[node.id].pid)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self._forward(signal.SIGHUP))
        reported: set[str] = set()
        while not stop.wait(0.2):
            for node_id, child in self._children.items():
                if child.poll() is not None and node_id not in reported:
                    reported.add(node_id)
                    log.warning("node %s exited with status %d", node_id, child.returncode)
            if len(reported) == len(self._children):
                log.error("every node has exited")
                return EXIT_FAILURE
        return self._stop_children()

    def _forward(self, sig: int) -> None:
        """SIGHUP to the supervisor: every node reloads its settings."""
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(sig)

    def _stop_children(self) -> int:
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_GRACE_S
        status = EXIT_OK
        for node_id, child in self._children.items():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("node %s did not stop in %.0f s; killing it", node_id, CHILD_STOP_GRACE_S)
                child.kill()
                child.wait()
            if child.returncode not in (0, -signal.SIGTERM):
                status = EXIT_FAILURE
        log.info("all nodes stopped")
        return status


def _die_with_parent() -> None:
    """Child side: get SIGTERM when the supervisor dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
