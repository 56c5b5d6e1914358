"""SWIM failure detection on 5 real `caddy-node` processes; prints one JSON line.

Per gossip profile: time from kill -9 of a random node to the first and the last dead verdict among
the survivors, false deaths (also under short SIGSTOPs), and idle peer traffic per node.
Usage: python bench/gossip.py [--profile lan|fast|both] [--kills N] [--stops N] [--pause-s S]
       [--idle-s S] [--poll-ms MS] [--seed N] [--gossip KEY=VALUE ...] [--keep]
       (--gossip overrides an integer key of the topology's gossip section, e.g. suspicion_mult=3)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from actors import local_cluster  # noqa: E402
from actors.local_cluster import LocalCluster  # noqa: E402
from actors.transport import HEARTBEAT_KIND  # noqa: E402
from caddy.client import Client  # noqa: E402
from caddy.config import ClusterConfig  # noqa: E402
from caddy.errors import CaddyError  # noqa: E402
from caddy.wire import Codec  # noqa: E402

NODE_IDS = ("n1", "n2", "n3", "n4", "n5")
PROFILES = ("lan", "fast")
PAUSE_S = {"lan": 1.5, "fast": 0.3}  # SIGSTOP lengths, well inside each profile's suspicion time
REQUEST_TIMEOUT_S = 0.2  # a watcher's wait for one view; a stopped or dead node costs this much
CONVERGE_TIMEOUT_S = 60.0
SETTLE_S = 3.0  # after convergence, before the idle window: the join news is still being gossiped
NEVER_MS = 3_600_000  # an interval that never elapses within a run: silences a periodic sender
ZMTP_FRAME_OVERHEAD = 2  # flags and length bytes of a short ZeroMQ frame
POLL_S = 0.02  # how often a wait for a cluster state looks again
wait_until = partial(local_cluster.wait_until, every=POLL_S)


class BenchError(Exception):
    """The cluster did not reach a state the benchmark needs (a node did not answer)."""


def write_topology(folder: Path, gossip: dict[str, Any], quiet: bool) -> Path:
    """Five voters on free loopback ports. `quiet`: no Raft election ever starts (so no leader
    heartbeats) and the transport's peer heartbeats never fire, leaving gossip alone on the wire."""
    sections: dict[str, Any] = {"gossip": gossip}
    if quiet:
        sections["raft"] = {
            "election_timeout_min_ms": NEVER_MS,
            "election_timeout_max_ms": NEVER_MS,
        }
        sections["transport"] = {"peer_heartbeat_ms": NEVER_MS, "peer_silence_ms": NEVER_MS + 1}
    return local_cluster.write_topology(
        folder, len(NODE_IDS), cluster="bench", data_dir=str(folder / "data"), **sections
    )


def pause(cluster: LocalCluster, node_id: str, seconds: float) -> None:
    """SIGSTOP the node for `seconds`, then let it run again."""
    cluster.pause(node_id)
    try:
        time.sleep(seconds)
    finally:
        cluster.resume(node_id)


# ----- watching every node's view ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sighting:
    """`observer` reported `member` in `state` at `at` (monotonic; the answer's arrival)."""

    at: float
    observer: str
    member: str
    state: str


class Views:
    """The latest view of every node and every change of any of them, fed by the watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, str]] = {}
        self.changes: list[Sighting] = []

    def record(self, observer: str, at: float, view: dict[str, str]) -> None:
        with self._lock:
            before = self._latest.get(observer, {})
            for member, state in view.items():
                if before.get(member) != state:
                    self.changes.append(Sighting(at, observer, member, state))
            self._latest[observer] = view

    def forget(self, observer: str) -> None:
        """The observer restarts with an empty view: its next answer is all news."""
        with self._lock:
            self._latest.pop(observer, None)

    def state(self, observer: str, member: str) -> str | None:
        with self._lock:
            return self._latest.get(observer, {}).get(member)

    def first_change(self, observer: str, member: str, state: str, since: float) -> float | None:
        with self._lock:
            return next(
                (
                    change.at
                    for change in self.changes
                    if change.at >= since
                    and (change.observer, change.member, change.state) == (observer, member, state)
                ),
                None,
            )

    def all_see(self, observers: list[str], member: str, state: str) -> bool:
        return all(self.state(observer, member) == state for observer in observers)

    def converged(self, nodes: tuple[str, ...] = NODE_IDS) -> bool:
        """Each of `nodes` sees each other one alive."""
        return all(
            self.state(observer, member) == "alive"
            for observer in nodes
            for member in nodes
            if member != observer
        )


class Watcher(threading.Thread):
    """Asks one node for its membership view every `period_s`, with its own Client."""

    def __init__(self, config: ClusterConfig, node_id: str, period_s: float, views: Views):
        super().__init__(daemon=True, name=f"watch-{node_id}")
        self._config = config
        self._node_id = node_id
        self._period_s = period_s
        self._views = views
        self.stopping = threading.Event()

    def run(self) -> None:
        with Client(self._config, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stopping.is_set():
                asked = time.monotonic()
                try:
                    answer = client.gather(
                        [self._node_id], "client.members", {}, REQUEST_TIMEOUT_S
                    )[self._node_id]
                except CaddyError:
                    answer = None
                if answer is not None:
                    view = {
                        member: info["state"]
                        for member, info in answer["members"].items()
                        if member != self._node_id
                    }
                    self._views.record(self._node_id, time.monotonic(), view)
                self.stopping.wait(max(0.0, asked + self._period_s - time.monotonic()))


class LiveSpans:
    """When each node was up and known to all: a dead verdict about it then is a false death."""

    def __init__(self) -> None:
        self._spans: dict[str, list[list[float]]] = {node_id: [] for node_id in NODE_IDS}

    def begin(self, node_id: str, at: float) -> None:
        self._spans[node_id].append([at, math.inf])

    def end(self, node_id: str, at: float) -> None:
        self._spans[node_id][-1][1] = at

    def false_deaths(self, views: Views) -> list[Sighting]:
        return [
            change
            for change in views.changes
            if change.state == "dead"
            and any(start <= change.at < end for start, end in self._spans[change.member])
        ]


# ----- idle traffic ------------------------------------------------------------------------------

_SS_SOCKET = re.compile(r"(\S+):(\d+)\s+(\S+):(\d+)\s+users:.*?pid=(\d+)")
_SS_BYTES_SENT = re.compile(r"\bbytes_sent:(\d+)")


def peer_bytes_sent(cluster: LocalCluster) -> dict[str, int]:
    """Bytes each node has sent on its peer connections (both ends), from the kernel's TCP_INFO.

    Client connections are left out, so the benchmark's own polling is not counted.
    """
    peer_ports = {int(node.address.rsplit(":", 1)[1]) for node in cluster.config.nodes}
    owner = {process.pid: node_id for node_id, process in cluster.nodes.items()}
    listing = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    sent = dict.fromkeys(NODE_IDS, 0)
    current: tuple[str, bool] | None = None
    for line in listing.splitlines():
        if match := _SS_SOCKET.search(line):
            node_id = owner.get(int(match.group(5)))
            is_peer = int(match.group(2)) in peer_ports or int(match.group(4)) in peer_ports
            current = (node_id, is_peer) if node_id else None
        elif current and current[1] and (found := _SS_BYTES_SENT.search(line)):
            sent[current[0]] += int(found.group(1))
            current = None
    return sent


def peer_messages_sent(client: Client) -> dict[str, int]:
    """Messages each node's transport has sent to all peers (its status' per-peer `msgs_out`)."""
    totals = {}
    for node_id, status in client.statuses().items():
        if status is None:
            raise BenchError(f"node {node_id} did not answer a status request")
        totals[node_id] = sum(peer["msgs_out"] for peer in status["peers"].values())
    return totals


def measure_idle(cluster: LocalCluster, seconds: float) -> dict[str, float]:
    """Bytes and messages sent to peers per second per node over an idle window."""
    with Client(cluster.config, timeout=2.0) as client:
        bytes_before, messages_before = peer_bytes_sent(cluster), peer_messages_sent(client)
        started = time.monotonic()
        time.sleep(seconds)
        bytes_after, messages_after = peer_bytes_sent(cluster), peer_messages_sent(client)
        elapsed = time.monotonic() - started
    nodes = len(NODE_IDS)
    sent = sum(bytes_after.values()) - sum(bytes_before.values())
    messages = sum(messages_after.values()) - sum(messages_before.values())
    return {
        "bytes_per_s_per_node": round(sent / elapsed / nodes, 1),
        "msgs_per_s_per_node": round(messages / elapsed / nodes, 2),
    }


def heartbeat_bytes_per_s(config: ClusterConfig) -> float:
    """What the transport's link heartbeats alone put on the wire per node (from frame size)."""
    frame = len(Codec(config.cluster, NODE_IDS[0]).encode(HEARTBEAT_KIND, {}))
    peers = len(NODE_IDS) - 1
    return peers * (frame + ZMTP_FRAME_OVERHEAD) * 1000 / config.transport.peer_heartbeat_ms


# ----- one profile -------------------------------------------------------------------------------


def start_watched(folder: Path, gossip: dict[str, Any], quiet: bool, poll_s: float):
    topology = write_topology(folder, gossip, quiet)
    cluster = LocalCluster(topology)
    views = Views()
    watchers = [Watcher(cluster.config, node_id, poll_s, views) for node_id in NODE_IDS]
    return cluster, views, watchers


def converge(cluster: LocalCluster, views: Views, nodes: tuple[str, ...] = NODE_IDS) -> float:
    wait_until(
        lambda: cluster.check_alive() or views.converged(nodes),
        CONVERGE_TIMEOUT_S,
        f"{', '.join(nodes)} to see each other alive",
    )
    return time.monotonic()


def start_all(cluster: LocalCluster, views: Views, watchers: list[Watcher]) -> float:
    """Start the nodes one after the other, each once the previous ones see each other.

    Started all at once, the nodes' first join messages are lost while the peer connections
    are still being set up, and the members can split into groups that never learn of each other.
    """
    for watcher in watchers:
        watcher.start()
    for count, node_id in enumerate(NODE_IDS, start=1):
        cluster.start(node_id)
        converged_at = converge(cluster, views, NODE_IDS[:count])
    return converged_at


def quiet_gossip_traffic(folder: Path, gossip: dict[str, Any], idle_s: float, poll_s: float):
    """Idle traffic of a cluster whose only periodic peer messages are gossip."""
    cluster, views, watchers = start_watched(folder, gossip, True, poll_s)
    try:
        start_all(cluster, views, watchers)
        for watcher in watchers:  # the idle window sees no client requests at all
            watcher.stopping.set()
        time.sleep(SETTLE_S)
        return measure_idle(cluster, idle_s)
    finally:
        cluster.cleanup()


def has_leader(client: Client) -> bool:
    return any(s is not None and s.get("state") == "leader" for s in client.statuses().values())


def detect_kill(
    cluster: LocalCluster, views: Views, victim: str, timeout: float
) -> tuple[float, float, float]:
    """kill -9 `victim`; seconds to the first and last survivor's dead verdict, and to the
    first suspicion."""
    survivors = [node_id for node_id in NODE_IDS if node_id != victim]
    killed_at = time.monotonic()
    cluster.kill(victim)
    views.forget(victim)
    wait_until(
        lambda: views.all_see(survivors, victim, "dead"), timeout, f"every survivor: {victim} dead"
    )
    verdicts = [views.first_change(s, victim, "dead", killed_at) for s in survivors]
    suspicions = [views.first_change(s, victim, "suspect", killed_at) for s in survivors]
    first_suspect = min((at for at in suspicions if at is not None), default=math.nan)
    return (
        min(verdicts) - killed_at,
        max(verdicts) - killed_at,
        first_suspect - killed_at,
    )


def run_profile(profile: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    gossip = {"profile": profile, **args.gossip}
    poll_s = args.poll_ms / 1000
    cluster, views, watchers = start_watched(folder / "cluster", gossip, False, poll_s)
    spans = LiveSpans()
    settings = cluster.config.gossip
    suspicion_min_s = settings.suspicion_mult * settings.probe_interval_ms / 1000
    detect_timeout = 3 * settings.suspicion_max_timeout_mult * suspicion_min_s + 10
    pause_s = args.pause_s if args.pause_s is not None else PAUSE_S[profile]
    kills: list[tuple[float, float, float]] = []
    try:
        converged_at = start_all(cluster, views, watchers)
        for node_id in NODE_IDS:
            spans.begin(node_id, converged_at)
        with Client(cluster.config, timeout=1.0) as client:
            wait_until(lambda: has_leader(client), 30, "a Raft leader")
        time.sleep(SETTLE_S)
        idle = measure_idle(cluster, args.idle_s)
        for _ in range(args.kills):
            time.sleep(rng.uniform(0, settings.probe_interval_ms / 1000))  # a random phase
            victim = rng.choice(NODE_IDS)
            spans.end(victim, time.monotonic())
            kills.append(detect_kill(cluster, views, victim, detect_timeout))
            cluster.start(victim)
            back_at = converge(cluster, views)
            spans.begin(victim, back_at)
        for _ in range(args.stops):
            time.sleep(rng.uniform(0, settings.probe_interval_ms / 1000))
            pause(cluster, rng.choice(NODE_IDS), pause_s)
            converge(cluster, views)
        time.sleep(SETTLE_S)  # a late false verdict still counts
        cluster.check_alive()
    finally:
        for watcher in watchers:
            watcher.stopping.set()
        cluster.cleanup()
    quiet = quiet_gossip_traffic(folder / "quiet", gossip, args.idle_s, poll_s)
    false = spans.false_deaths(views)
    firsts = [first for first, _, _ in kills]
    lasts = [last for _, last, _ in kills]
    suspects = [suspect for _, _, suspect in kills]
    heartbeats = heartbeat_bytes_per_s(cluster.config)
    return {
        "first_dead_median_s": _median(firsts),
        "first_dead_max_s": _max(firsts),
        "all_dead_median_s": _median(lasts),
        "all_dead_max_s": _max(lasts),
        "all_minus_first_max_s": _max([last - first for first, last, _ in kills]),
        "first_suspect_median_s": _median(suspects),
        "false_deaths": len(false),
        "false_death_sightings": [
            f"{s.observer} saw {s.member} dead at +{s.at - converged_at:.1f} s" for s in false[:5]
        ],
        "idle_bytes_per_s_per_node": idle["bytes_per_s_per_node"],
        "idle_msgs_per_s_per_node": idle["msgs_per_s_per_node"],
        "idle_gossip_only_bytes_per_s_per_node": quiet["bytes_per_s_per_node"],
        "idle_gossip_only_msgs_per_s_per_node": quiet["msgs_per_s_per_node"],
        "idle_link_heartbeat_bytes_per_s_per_node_computed": round(heartbeats, 1),
        "idle_raft_bytes_per_s_per_node_remainder": round(
            idle["bytes_per_s_per_node"] - quiet["bytes_per_s_per_node"] - heartbeats, 1
        ),
        "kills": [[round(first, 2), round(last, 2)] for first, last, _ in kills],
        "stops": args.stops,
        "stop_s": pause_s,
        "settings": {
            **asdict(settings),
            "tick_ms": cluster.config.tick_ms,
            "raft_heartbeat_ms": cluster.config.raft.heartbeat_ms,
            "peer_heartbeat_ms": cluster.config.transport.peer_heartbeat_ms,
        },
    }


def _median(values: Any) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _max(values: Any) -> float | None:
    return round(max(values), 3) if values else None


# ----- main --------------------------------------------------------------------------------------


def gossip_override(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    try:
        return key.strip(), int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=INTEGER, got {text!r}") from None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=[*PROFILES, "both"], default="both")
    parser.add_argument("--kills", type=int, default=10, help="kill -9 rounds per profile")
    parser.add_argument("--stops", type=int, default=3, help="SIGSTOP rounds per profile")
    parser.add_argument("--pause-s", type=float, help="SIGSTOP length (default: lan 1.5, fast 0.3)")
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle traffic window")
    parser.add_argument("--poll-ms", type=float, default=30.0, help="each node's view is read")
    parser.add_argument("--seed", type=int, default=1, help="victims and kill moments")
    parser.add_argument(
        "--gossip", type=gossip_override, action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    args = parser.parse_args()
    args.gossip = dict(args.gossip)
    load_at_start = os.getloadavg()
    # Unwind on Ctrl-C (even when started with SIGINT ignored) and on SIGTERM: the finally
    # clauses kill every node process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profiles = PROFILES if args.profile == "both" else (args.profile,)
    started = time.monotonic()
    with local_cluster.scratch_folder("caddy-bench-gossip-", keep=args.keep) as folder:
        if args.keep:
            print(f"keeping {folder}", file=sys.stderr)
        results = {profile: run_profile(profile, args, folder / profile) for profile in profiles}
    print(
        json.dumps(
            {
                **results,
                "run": {
                    "nodes": len(NODE_IDS),
                    "kills": args.kills,
                    "poll_ms": args.poll_ms,
                    "seed": args.seed,
                    "gossip_overrides": args.gossip,
                    "seconds": round(time.monotonic() - started),
                    "idle_window_s": args.idle_s,
                    "traffic": "TCP payload bytes on peer connections (kernel TCP_INFO), "
                    "heartbeats of the transport and Raft included; gossip_only: a cluster "
                    "with no Raft leader and no transport heartbeats",
                },
                "machine": {
                    "python": platform.python_version(),
                    "cpu": cpu_model(),
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_avg_at_start": [round(x, 2) for x in load_at_start],
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
