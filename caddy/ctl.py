"""`caddy-ctl`: status, membership and key-value operations from the shell.

Human-readable tables by default, one JSON document with --json; errors are one line on stderr.

Exit status: 0 success; 1 a failed operation (no answer, absent key, cas mismatch, a lock not
acquired, anything unexpected); 2 invalid arguments or topology; 130 interrupted (Ctrl-C); `lock`
with a COMMAND: the command's. Never a traceback.

Every argument is checked before anything goes on the network:

- `--timeout SECONDS`: a finite number, 0 < SECONDS <= `MAX_TIMEOUT_S` (one hour).
- `--topology PATH`: non-empty; the file must load (`caddy.config.load_topology`).
- `COMMAND`: one of the subcommands; each takes exactly its positional arguments.
- `KEY`: a non-empty string; `VALUE`, `EXPECTED`, `NEW`: strings (stored as given, never parsed as
  JSON), possibly empty. All must be valid UTF-8 and, together, within the largest write of the
  topology (`transport.max_message_bytes` less 4 KiB of framing, see `caddy.sizes`).
- `NODE` (status, votes): non-empty, and one of the topology's node ids.
- `lock NAME`: NAME of 1 to 128 characters; `--ttl` as `--timeout`, `--wait` 0 to one hour; the
  COMMAND after `--` runs with the token in `$CADDY_FENCING_TOKEN` and its exit status is
  caddy-ctl's (127 when it cannot be started; 1 when it succeeded but the lock was lost while it
  ran). Without COMMAND the lock is held, and renewed, until caddy-ctl is interrupted.

Mistakes argparse can see alone print its usage and one `caddy-ctl: error: ...` line; mistakes that
need the topology (unknown NODE, a KEY or write over the largest size) print one `caddy-ctl: ...`
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from caddy import joining, reconfig_plan
from caddy.bounds import MAX_NAME_LENGTH
from caddy.client import Client
from caddy.config import ClusterConfig, ConfigError, load_topology
from caddy.errors import CaddyError, LockLost, Unavailable, ValueTooLarge
from caddy.raft.membership import MAX_ADDRESS_LENGTH
from caddy.raft.types import Membership
from caddy.reconfig_plan import TRANSFER, Step, Target
from caddy.replication.registry import MAX_WEIGHT
from caddy.request_policy import check_size

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CANNOT_RUN = 127  # lock's COMMAND could not be started (as a shell says)
DEFAULT_TIMEOUT_S = 5.0
WATCH_POLL_S = 0.2  # how often `watch` asks each node for its new events
MAX_TIMEOUT_S = 3600.0  # longer than any failover; a larger value is a typo, not a wish
_SHOWN_CHARS = 40  # an argument quoted in an error message is cut to this many characters


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)}\n")


# ----- argument types: each raises ArgumentTypeError, which argparse turns into usage + one line --


def timeout_seconds(text: str) -> float:
    """`--timeout`: a finite number of seconds, 0 < SECONDS <= MAX_TIMEOUT_S."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds, got {_shown(text)}"
        ) from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds, more than 0 and at most {MAX_TIMEOUT_S:g}, "
            f"got {_shown(text)}"
        )
    return seconds


def wait_seconds(text: str) -> float:
    """`--wait`: a finite number of seconds, 0 <= SECONDS <= MAX_TIMEOUT_S."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return timeout_seconds(text)


def name_text(text: str) -> str:
    """NAME of `lock`, ID of `add-node`: 1 to MAX_NAME_LENGTH characters of valid UTF-8."""
    name = non_empty_text(text)
    if len(name) > MAX_NAME_LENGTH:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_NAME_LENGTH} characters, got {len(name)}: {_shown(name)}"
        )
    return name


def peer_address(text: str) -> str:
    """ADDRESS of `add-node`: tcp://HOST:PORT, at most MAX_ADDRESS_LENGTH characters."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path:
        raise argparse.ArgumentTypeError(f"must be tcp://HOST:PORT, got {_shown(text)}")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise argparse.ArgumentTypeError(f"at most {MAX_ADDRESS_LENGTH} characters")
    return text


def backend_weight(text: str) -> int:
    """W of `backend add --weight` and `backend weight`: an integer 1 to 1,000,000."""
    try:
        weight = int(text)
    except ValueError:
        weight = 0
    if not 1 <= weight <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(
            f"must be an integer 1 to {MAX_WEIGHT}, got {_shown(text)}"
        )
    return weight


def non_empty_text(text: str) -> str:
    """KEY, NODE and --topology: a non-empty string of valid UTF-8."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text_value(text)


def text_value(text: str) -> str:
    """VALUE, EXPECTED and NEW: any string of valid UTF-8 (the empty string included)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # undecodable bytes reach argv as lone surrogates
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8 (at character {error.start}): {_shown(text)}"
        ) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _UsageParser(prog="caddy-ctl", description="Query and operate a CADDY cluster.")
    parser.add_argument(
        "--topology", required=True, type=non_empty_text, metavar="TOPOLOGY", help="topology file"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"seconds, more than 0 and at most {MAX_TIMEOUT_S:g} (default {DEFAULT_TIMEOUT_S:g})",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_UsageParser)
    status = commands.add_parser("status", help="one row per node")
    status.add_argument("node", nargs="?", type=non_empty_text, metavar="NODE", help="this node")
    commands.add_parser("members", help="the gossip view of the membership")
    commands.add_parser("quorum", help="per node: whether it can reach a quorum, and whom")
    votes = commands.add_parser("votes", help="NODE's latest votes: term, candidate, granted, why")
    votes.add_argument("node", type=non_empty_text, metavar="NODE")
    put = commands.add_parser("put", help="store VALUE (a string) under KEY")
    put.add_argument("key", type=non_empty_text, metavar="KEY")
    put.add_argument("value", type=text_value, metavar="VALUE")
    get = commands.add_parser("get", help="print the value of KEY (exit 1 when absent)")
    get.add_argument("key", type=non_empty_text, metavar="KEY")
    delete = commands.add_parser("delete", help="remove KEY")
    delete.add_argument("key", type=non_empty_text, metavar="KEY")
    cas = commands.add_parser("cas", help="set KEY to NEW if it holds EXPECTED (exit 1 if not)")
    cas.add_argument("key", type=non_empty_text, metavar="KEY")
    cas.add_argument("expected", type=text_value, metavar="EXPECTED")
    cas.add_argument("new", type=text_value, metavar="NEW")
    commands.add_parser("leader", help="print the leader's id")
    lock = commands.add_parser(
        "lock",
        help="acquire NAME and print its token; with COMMAND, run it holding the lock",
        usage="caddy-ctl lock [-h] [--ttl SECONDS] [--wait SECONDS] NAME [-- COMMAND ...]",
    )
    lock.add_argument("name", type=name_text, metavar="NAME")
    lock.add_argument(
        "--ttl", type=timeout_seconds, default=10.0, metavar="SECONDS", help="lease (default 10)"
    )
    lock.add_argument(
        "--wait",
        type=wait_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait in line this long when it is held (default 0: exit 1 at once)",
    )
    drain = commands.add_parser(
        "drain", help="NODE takes no new requests, finishes those in flight, hands leadership over"
    )
    drain.add_argument("node", type=non_empty_text, metavar="NODE")
    drain.add_argument(
        "--timeout",
        dest="drain_timeout",
        type=wait_seconds,
        default=None,
        metavar="SECONDS",
        help="the longest wait for requests in flight (default: failover.drain_timeout_ms)",
    )
    undrain = commands.add_parser("undrain", help="NODE takes client requests again")
    undrain.add_argument("node", type=non_empty_text, metavar="NODE")
    commands.add_parser("watch", help="every node's events, one per line, until Ctrl-C")
    add_node = commands.add_parser(
        "add-node", help="ID (at ADDRESS) joins as a learner; a voter once caught up"
    )
    add_node.add_argument("node", type=name_text, metavar="ID")
    add_node.add_argument("address", type=peer_address, metavar="ADDRESS")
    add_node.add_argument("--client-address", type=non_empty_text, metavar="A")
    add_node.add_argument("--role", choices=("voter", "learner", "witness"), default="voter")
    remove_node = commands.add_parser("remove-node", help="remove ID from the cluster")
    remove_node.add_argument("node", type=non_empty_text, metavar="ID")
    remove_node.add_argument(
        "--force",
        action="store_true",
        help="even when the healthy members would then lack a quorum: the cluster may stop "
        "taking writes until the missing members return",
    )
    for name, text in (
        ("promote", "learner ID becomes a voter"),
        ("demote", "voter ID becomes a learner"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("node", type=non_empty_text, metavar="ID")
    transfer = commands.add_parser(
        "transfer-leader", help="move leadership to ID, or to the best caught-up voter"
    )
    transfer.add_argument("node", nargs="?", type=non_empty_text, metavar="ID")
    check = commands.add_parser("check-restart", help='"safe" or "unsafe: REASON" to stop ID now')
    check.add_argument("node", type=non_empty_text, metavar="ID")
    rolling = commands.add_parser(
        "rolling-restart",
        help="restart every node in turn, leader last, each only when safe and after the one "
        "before is back and caught up",
    )
    rolling.add_argument(
        "--command",
        dest="restart_command",
        required=True,
        type=non_empty_text,
        metavar="CMD",
        help="a shell command that restarts one node; {node} in it is the node's id",
    )
    rolling.add_argument(
        "--wait",
        type=wait_seconds,
        default=120.0,
        metavar="SECONDS",
        help="the longest wait for a node to be safe to restart, or back (default 120)",
    )
    backends = commands.add_parser(
        "backends", help="per node and backend: state, weight, active, total, failures"
    )
    backends.add_argument("service", nargs="?", type=name_text, metavar="SERVICE")
    pick = commands.add_parser("pick", help="the backend a node's balancer picks for SERVICE now")
    pick.add_argument("service", type=name_text, metavar="SERVICE")
    pick.add_argument("--key", type=non_empty_text, metavar="KEY", help="the ip_hash key")
    backend = commands.add_parser("backend", help="change a service's backends (the registry)")
    changes = backend.add_subparsers(dest="backend_op", required=True, metavar="CHANGE")
    add = changes.add_parser("add", help="add backend ID at ADDRESS to SERVICE")
    add.add_argument("service", type=name_text, metavar="SERVICE")
    add.add_argument("backend", type=name_text, metavar="ID")
    add.add_argument("address", type=peer_address, metavar="ADDRESS")
    add.add_argument("--weight", type=backend_weight, default=1, metavar="W")
    for name, text in (
        ("remove", "remove backend ID from SERVICE"),
        ("drain", "SERVICE sends no new work to ID; what it has finishes"),
        ("undrain", "SERVICE sends work to ID again"),
    ):
        change = changes.add_parser(name, help=text)
        change.add_argument("service", type=name_text, metavar="SERVICE")
        change.add_argument("backend", type=name_text, metavar="ID")
    weight = changes.add_parser("weight", help="set the weight of backend ID of SERVICE")
    weight.add_argument("service", type=name_text, metavar="SERVICE")
    weight.add_argument("backend", type=name_text, metavar="ID")
    weight.add_argument("weight", type=backend_weight, metavar="W")
    reload = commands.add_parser(
        "reload", help="NODE re-reads its topology file and takes the live settings (SIGHUP)"
    )
    reload.add_argument("node", type=non_empty_text, metavar="NODE")
    reconfigure = commands.add_parser(
        "reconfigure",
        help="change the membership to NEW_TOPOLOGY's, one safe step at a time, printing each",
    )
    reconfigure.add_argument("new_topology", type=non_empty_text, metavar="NEW_TOPOLOGY")
    reconfigure.add_argument("--dry-run", action="store_true", help="print the plan only")
    reconfigure.add_argument(
        "--wait",
        type=wait_seconds,
        default=300.0,
        metavar="SECONDS",
        help="the longest time for the whole change (default 300)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments; what follows the first `--` is `lock`'s COMMAND (`run`), and an error
    after any other command. (argparse's own `--` does not reach a subcommand's arguments.)"""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    head, run = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(head)
    if run and args.command != "lock":
        parser.error(f"unrecognized arguments: -- {' '.join(run)}")
    args.run = run
    return args


# ----- checks that need the topology ----------------------------------------------------------


_NAMING_A_NODE = (
    "status",
    "votes",
    "drain",
    "undrain",
    "remove-node",
    "promote",
    "demote",
    "transfer-leader",
    "check-restart",
    "reload",
)


def topology_problem(config: ClusterConfig, args: argparse.Namespace) -> str | None:
    """Why `args` cannot be sent to the cluster of `config` (one line), or None."""
    if args.command in _NAMING_A_NODE and args.node is not None:
        known = [node.id for node in config.nodes]
        if args.node not in known:
            return (
                f"{args.command}: no node {_shown(args.node)} in {config.source} "
                f"(nodes: {', '.join(known)})"
            )
    request = _kv_request(args)
    if request is None:
        return None
    kind, body, parts = request
    try:
        check_size(kind, body, config.transport.max_message_bytes)
    except ValueTooLarge as error:
        sizes = ", ".join(f"{name} {_bytes(len(text.encode('utf-8')))}" for name, text in parts)
        return f"{args.command}: {error}: {sizes}"
    return None


def _kv_request(
    args: argparse.Namespace,
) -> tuple[str, dict[str, Any], list[tuple[str, str]]] | None:
    """(kind, body as the client sends it without its session, the arguments by name) of a
    key-value command."""
    if args.command == "put":
        body = {"key": args.key, "value": args.value}
        return "kv.put", body, [("KEY", args.key), ("VALUE", args.value)]
    if args.command == "get":
        return "kv.get", {"key": args.key}, [("KEY", args.key)]
    if args.command == "delete":
        return "kv.delete", {"key": args.key}, [("KEY", args.key)]
    if args.command == "cas":
        body = {"key": args.key, "expected": args.expected, "new": args.new}
        parts = [("KEY", args.key), ("EXPECTED", args.expected), ("NEW", args.new)]
        return "kv.cas", body, parts
    return None


# ----- running a command ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (argparse exits 2 itself on invalid arguments)."""
    try:
        return _run(parse_args(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`caddy-ctl status | head -1`)
        _discard_stdout()
        _error("cannot write the output: broken pipe")
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_topology(args.topology)
        problem = topology_problem(config, args)
        if problem is not None:
            _error(problem)
            return EXIT_USAGE
        with Client(config, timeout=args.timeout) as client:
            status = _COMMANDS[args.command](client, args)
        sys.stdout.flush()  # a broken pipe shows here, not at interpreter exit
        return status
    except (ConfigError, ValueTooLarge) as error:  # the topology, or a write too large for it
        _error(error)
        return EXIT_USAGE
    except BrokenPipeError:  # main's to report
        raise
    except CaddyError as error:
        _error(error)
        return EXIT_FAILURE
    except Exception as error:  # a bug, or the OS refusing something: still one line, status 1
        detail = f": {error}" if str(error) else ""
        _error(f"unexpected error: {type(error).__name__}{detail}")
        return EXIT_FAILURE


def _error(message: object) -> None:
    """One line on stderr, prefixed with the program's name."""
    text = _one_line(str(message)) or type(message).__name__
    print(f"caddy-ctl: {text}", file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _shown(text: str) -> str:
    """`text` quoted for an error message, cut short when long."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _status(client: Client, args: argparse.Namespace) -> int:
    if args.node:
        statuses = {args.node: client.status(args.node)}
    else:
        statuses = client.statuses()
    _show_per_node(
        args,
        statuses,
        ["id", "role", "state", "term", "leader", "commit", "applied", "hears", "members"],
        _status_row,
    )
    return EXIT_OK if any(s is not None for s in statuses.values()) else EXIT_FAILURE


def _show_per_node(
    args: argparse.Namespace,
    documents: dict[str, Any],
    headers: list[str],
    row: Callable[[str, Any], list[str]],
) -> None:
    """Per-node documents as JSON, or as a table of one `row` per node."""
    if args.json:
        print(json.dumps(documents, indent=2, sort_keys=True))
    else:
        print(_table(headers, [row(node_id, document) for node_id, document in documents.items()]))


def _status_row(node_id: str, status: dict[str, Any] | None) -> list[str]:
    if status is None:
        return [node_id, "-", "unreachable", "-", "-", "-", "-", "-", "-"]
    hears = [peer for peer, info in sorted(status.get("peers", {}).items()) if info["hearing"]]
    members = status.get("members", {})
    return [
        node_id,
        str(status.get("role", "-")),
        str(status.get("state", "up")),
        _dash(status.get("term")),
        _dash(status.get("leader")),
        _dash(status.get("commit_index")),
        _dash(status.get("applied_index")),
        ",".join(hears) or "-",
        ",".join(f"{m}:{s}" for m, s in sorted(members.items())) or "-",
    ]


def _quorum(client: Client, args: argparse.Namespace) -> int:
    """Each node's `quorum` section (CONTRACT 5); a node that did not answer is null (JSON) or
    unreachable."""
    views = {
        node_id: None if status is None else status.get("quorum", {})  # {}: an older node
        for node_id, status in client.statuses().items()
    }
    _show_per_node(
        args,
        views,
        ["id", "has_quorum", "reachable", "needed", "voters", "witnesses", "since"],
        _quorum_row,
    )
    return EXIT_OK if any(v is not None for v in views.values()) else EXIT_FAILURE


def _quorum_row(node_id: str, view: dict[str, Any] | None) -> list[str]:
    if view is None:
        return [node_id, "unreachable", "-", "-", "-", "-", "-"]
    if not view:
        return [node_id, "-", "-", "-", "-", "-", "-"]
    since = time.strftime("%H:%M:%S", time.localtime(view["since"]))
    return [
        node_id,
        "yes" if view["has_quorum"] else "NO",
        ",".join(view["reachable"]) or "-",
        str(view["needed"]),
        ",".join(view["voters"]) or "-",
        ",".join(view["witnesses"]) or "-",
        since,
    ]


def _votes(client: Client, args: argparse.Namespace) -> int:
    """The node's latest vote decisions, oldest first (its `votes` status section)."""
    votes = client.status(args.node).get("votes", {}).get("recent", [])
    if args.json:
        print(json.dumps({"node": args.node, "votes": votes}, indent=2, sort_keys=True))
        return EXIT_OK
    rows = [
        [
            time.strftime("%H:%M:%S", time.localtime(vote["time"])),
            str(vote["term"]),
            vote["candidate"],
            "pre-vote" if vote["pre_vote"] else "vote",
            "yes" if vote["granted"] else "no",
            vote["reason"],
        ]
        for vote in votes
    ]
    print(_table(["time", "term", "candidate", "kind", "granted", "reason"], rows))
    return EXIT_OK


def _members(client: Client, args: argparse.Namespace) -> int:
    members = client.members()
    if args.json:
        print(json.dumps(members, indent=2, sort_keys=True))
    else:
        rows = [
            [
                member_id,
                str(info.get("address", "-")),
                str(info.get("state", "-")),
                _dash(info.get("incarnation")),
            ]
            for member_id, info in sorted(members.items())
        ]
        print(_table(["id", "address", "state", "incarnation"], rows))
    return EXIT_OK


def _put(client: Client, args: argparse.Namespace) -> int:
    client.put(args.key, args.value)
    _say(args, {"key": args.key, "ok": True}, "OK")
    return EXIT_OK


def _get(client: Client, args: argparse.Namespace) -> int:
    value = client.get(args.key)
    if value is None:
        _say(args, {"key": args.key, "found": False, "value": None}, None)
        _error(f"no key {_shown(args.key)}")
        return EXIT_FAILURE
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    _say(args, {"key": args.key, "found": True, "value": value}, text)
    return EXIT_OK


def _delete(client: Client, args: argparse.Namespace) -> int:
    existed = client.delete(args.key)
    _say(args, {"key": args.key, "existed": existed}, "deleted" if existed else "absent")
    return EXIT_OK


def _cas(client: Client, args: argparse.Namespace) -> int:
    swapped = client.cas(args.key, args.expected, args.new)
    _say(args, {"key": args.key, "swapped": swapped}, "swapped" if swapped else "not swapped")
    return EXIT_OK if swapped else EXIT_FAILURE


def _leader(client: Client, args: argparse.Namespace) -> int:
    leader = client.leader()
    if leader is None:
        _error("no leader right now")
        return EXIT_FAILURE
    _say(args, {"leader": leader}, leader)
    return EXIT_OK


def _lock(client: Client, args: argparse.Namespace) -> int:
    """Hold NAME while COMMAND runs (or until interrupted); exit with COMMAND's status."""
    with client.lock(args.name, ttl=args.ttl, wait=args.wait) as lock:
        _say(args, {"name": args.name, "token": lock.token}, str(lock.token))
        sys.stdout.flush()
        if not args.run:
            threading.Event().wait()  # until Ctrl-C; leaving the block releases the lock
        status = _run_holding(args.run, lock.token)
        if not lock.held():
            raise LockLost(f"lock {args.name!r} was lost while {_shown(args.run[0])} ran")
    return status


def _drain(client: Client, args: argparse.Namespace) -> int:
    """Start the drain, then follow NODE's status until it finished (or its timeout passed)."""
    timeout_s = args.drain_timeout
    if timeout_s is None:
        timeout_s = client.config.failover.drain_timeout_ms / 1000
    client.drain(args.node, timeout_s)
    deadline = time.monotonic() + timeout_s + args.timeout
    drain = None
    while time.monotonic() < deadline:
        drain = client.status(args.node).get("failover", {}).get("drain")
        if drain is not None and drain["state"] == "drained":
            break
        time.sleep(0.05)
    else:
        _error(f"{args.node} did not finish draining within {timeout_s + args.timeout:g} s")
        return EXIT_FAILURE
    moved = drain["leadership_moved_to"]
    text = (
        f"{args.node}: drained"
        + (f", leadership moved to {moved}" if moved else "")
        + (
            f", {drain['in_flight']} requests unanswered at the timeout"
            if drain["timed_out"]
            else ""
        )
    )
    _say(args, {"node": args.node, **drain}, text)
    return EXIT_OK


def _undrain(client: Client, args: argparse.Namespace) -> int:
    was_draining = client.undrain(args.node)
    _say(
        args,
        {"node": args.node, "undrained": was_draining},
        f"{args.node}: " + ("takes requests again" if was_draining else "was not draining"),
    )
    return EXIT_OK


def _watch(client: Client, args: argparse.Namespace) -> int:
    """Poll every node for the events it has not shown yet (each once, by node and seq; a
    node that restarted is shown from its first event again), oldest first, until Ctrl-C."""
    seen = {node.id: 0 for node in client.config.nodes}
    while True:
        bodies = {node_id: {"after": after} for node_id, after in seen.items()}
        answers = client.gather(list(seen), "client.events", {}, WATCH_POLL_S, bodies=bodies)
        fresh = []
        for node_id, answer in answers.items():
            if answer is None or not answer.get("events"):
                continue
            fresh.extend(answer["events"])
            seen[node_id] = answer["events"][-1]["seq"]
        for event in sorted(fresh, key=lambda e: (e["time"], e["node"], e["seq"])):
            print(json.dumps(event) if args.json else _event_line(event), flush=True)
        time.sleep(WATCH_POLL_S)


def _event_line(event: dict[str, Any]) -> str:
    moment = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    millis = int(event["time"] * 1000) % 1000
    fields = " ".join(
        f"{key}={_field(value)}"
        for key, value in event.items()
        if key not in ("node", "seq", "time", "kind")
    )
    return f"{moment}.{millis:03d} {event['node']} {event['kind']} {fields}".rstrip()


def _field(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return _dash(value)


def _change(client: Client, args: argparse.Namespace, change: str, force: bool = False) -> dict:
    body = {"change": change, "node": args.node, "force": force}
    membership = client.admin("admin.change", body)
    _report(args, change, args.node, membership)
    return membership


def _add_node(client: Client, args: argparse.Namespace) -> int:
    """ID joins as a learner (or witness); as a voter once caught up. The membership carries
    its address, so every node reaches it, also one whose topology file does not list it."""
    deadline = time.monotonic() + args.timeout
    joining.join(client, args.node, args.address, args.role, deadline, partial(_report, args))
    return EXIT_OK


def _report(args: argparse.Namespace, change: str, node: str, membership: dict) -> None:
    _say(
        args,
        {"change": change, "node": node, "membership": membership},
        f"{change.replace('_', ' ')} {node}: voters {', '.join(membership['voters'])}"
        + (f"; learners {', '.join(membership['learners'])}" if membership["learners"] else "")
        + (f"; witnesses {', '.join(membership['witnesses'])}" if membership["witnesses"] else ""),
    )


def _reconfigure(client: Client, args: argparse.Namespace) -> int:
    """The steps from the live membership to NEW_TOPOLOGY's (`caddy.reconfig_plan`), one at a
    time, planning again after each; with --dry-run the plan only."""
    target_config = load_topology(args.new_topology)
    if target_config.cluster != client.config.cluster:
        raise ConfigError(
            f"{args.new_topology}: cluster: {target_config.cluster!r}, but the running cluster"
            f" is {client.config.cluster!r}"
        )
    target = {n.id: Target(n.role, n.address) for n in target_config.nodes}
    # Reach the nodes of both files: leadership may move to a node that only the new one lists.
    leaving = tuple(n for n in client.config.nodes if n.id not in target)
    both = dataclasses.replace(target_config, nodes=target_config.nodes + leaving)
    with Client(both, timeout=client.timeout) as client_of_both:
        return _reconfigure_with(client_of_both, args, target)


def _reconfigure_with(client: Client, args: argparse.Namespace, target: dict[str, Target]) -> int:
    deadline = time.monotonic() + args.wait
    if args.dry_run:
        steps: list[Step] = []
        joining.converge(lambda: steps.extend(_plan(client, target)), deadline, "planning")
        _say(
            args,
            {"steps": [_step_document(step) for step in steps], "dry_run": True},
            "\n".join(step.describe() for step in steps) or "nothing to change",
        )
        return EXIT_OK
    done: list[Step] = []

    def next_step() -> Callable[[], None] | None:
        steps = _plan(client, target)
        return partial(_carry_out, client, args, steps[0], done) if steps else None

    joining.converge(next_step, deadline, "reconfigure")
    if args.json:
        print(json.dumps({"steps": [_step_document(step) for step in done], "dry_run": False}))
    elif not done:
        print("nothing to change")
    return EXIT_OK


def _plan(client: Client, target: dict[str, Target]) -> list[Step]:
    members = joining.leaders_membership(client)
    live = Membership(*(frozenset(members[role]) for role in ("voters", "learners", "witnesses")))
    return reconfig_plan.plan(live, client.leader(), target)


def _carry_out(client: Client, args: argparse.Namespace, step: Step, done: list[Step]) -> None:
    if step.action == TRANSFER:
        target = client.admin("admin.transfer", {"node": None})
        _wait(args, f"{target} to lead", lambda: client.leader() == target)
    else:
        joining.change(client, step.action, step.node, step.address)
    done.append(step)
    if not args.json:
        print(f"{step.describe()}: done", flush=True)


def _reload(client: Client, args: argparse.Namespace) -> int:
    """Exit 0 when the file loaded (whatever changed), 1 when it did not (nothing changed)."""
    answer = client.reload(args.node)
    if "error" in answer:
        _say(args, {"node": args.node, **answer}, None)
        for line in answer["error"]:
            _error(f"reload {args.node}: refused, nothing changed: {line}")
        return EXIT_FAILURE
    lines = [f"applied: {line}" for line in answer["applied"]]
    lines += [f"needs a restart: {line}" for line in answer["restart_needed"]]
    lines += [f"note: {line}" for line in answer["notes"]]
    _say(args, {"node": args.node, **answer}, "\n".join(lines) or "nothing changed")
    return EXIT_OK


def _backend(client: Client, args: argparse.Namespace) -> int:
    address = getattr(args, "address", "")
    weight = getattr(args, "weight", 0) if args.backend_op in ("add", "weight") else 0
    backends = client.change_backend(args.backend_op, args.service, args.backend, address, weight)
    rows = [
        [b["id"], b["address"], str(b["weight"]), "yes" if b["draining"] else "no"]
        for b in backends
    ]
    _say(
        args,
        {"service": args.service, "backends": backends},
        f"{args.backend_op} {args.service}/{args.backend}: done\n"
        + _table(["backend", "address", "weight", "draining"], rows),
    )
    return EXIT_OK


def _backends(client: Client, args: argparse.Namespace) -> int:
    """Every node's view: its balancer's state and statistics of each backend."""
    statuses = client.statuses()
    rows, document = [], []
    for node, status in sorted(statuses.items()):
        for service, view in sorted(((status or {}).get("balancer") or {}).items()):
            if args.service not in (None, service):
                continue
            for backend in view["backends"]:
                document.append({"node": node, "service": service, **backend})
                rows.append(
                    [node, service, backend["id"], backend["address"], str(backend["weight"])]
                    + [backend["state"]]
                    + [str(backend[field]) for field in ("active", "total", "failures")]
                )
    if args.json:
        print(json.dumps({"backends": document}))
        return EXIT_OK
    header = ["node", "service", "id", "address", "weight", "state", "active", "total", "failures"]
    print(_table(header, rows) if rows else "no backends (no services, or no node answered)")
    return EXIT_OK


def _pick(client: Client, args: argparse.Namespace) -> int:
    chosen = client.pick(args.service, args.key)
    _say(args, chosen, f"{chosen['id']} {chosen['address']}")
    return EXIT_OK


def _step_document(step: Step) -> dict[str, Any]:
    return {"action": step.action, "node": step.node, "address": step.address}


def _remove_node(client: Client, args: argparse.Namespace) -> int:
    _change(client, args, "remove", force=args.force)
    return EXIT_OK


def _promote(client: Client, args: argparse.Namespace) -> int:
    _change(client, args, "promote")
    return EXIT_OK


def _demote(client: Client, args: argparse.Namespace) -> int:
    _change(client, args, "demote")
    return EXIT_OK


def _transfer_leader(client: Client, args: argparse.Namespace) -> int:
    started = time.monotonic()
    target = client.admin("admin.transfer", {"node": args.node})
    while client.leader() != target:
        if time.monotonic() - started > args.timeout:
            _error(f"leadership did not reach {target} within {args.timeout:g} s")
            return EXIT_FAILURE
        time.sleep(0.005)
    took_ms = (time.monotonic() - started) * 1000
    _say(
        args,
        {"leader": target, "ms": round(took_ms, 1)},
        f"leadership moved to {target} ({took_ms:.0f} ms)",
    )
    return EXIT_OK


def _check_restart(client: Client, args: argparse.Namespace) -> int:
    verdict = client.admin("admin.check_restart", {"node": args.node})
    text = "safe" if verdict["safe"] else f"unsafe: {verdict['reason']}"
    _say(args, {"node": args.node, **verdict}, text)
    return EXIT_OK if verdict["safe"] else EXIT_FAILURE


def _rolling_restart(client: Client, args: argparse.Namespace) -> int:
    """Each node in turn, followers first, the leader last (leadership moved off it first): wait
    until `check-restart` says safe, run the command, wait until the node answers again (a new
    process: its uptime restarted) and holds the leader's commit index."""
    leader = _wait(args, "a leader", client.leader)
    order = sorted(n.id for n in client.config.nodes if n.id != leader) + [leader]
    members = client.status(leader)["membership"]
    order = [n for n in order if any(n in members[role] for role in members)]
    for node in order:
        if client.leader() == node:
            target = _wait(  # under writes a follower may be refused a moment: ask again
                args,
                "a voter to take over",
                partial(client.admin, "admin.transfer", {"node": None}),
            )
            _wait(args, f"{target} to lead", lambda t=target: client.leader() == t)
            print(f"{node}: leadership moved to {target}", flush=True)
        _wait(args, f"{node} safe to restart", partial(_restart_safe, client, node))
        started = time.monotonic()
        command = args.restart_command.replace("{node}", node)
        done = subprocess.run(command, shell=True, check=False)
        if done.returncode != 0:
            _error(f"{node}: {_shown(command)} exited {done.returncode}; stopping here")
            return EXIT_FAILURE
        _wait(args, f"{node} back and caught up", partial(_back, client, node, started))
        print(f"{node}: restarted, caught up ({time.monotonic() - started:.1f} s)", flush=True)
    return EXIT_OK


def _wait(args: argparse.Namespace, what: str, condition: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + args.wait
    while not (found := _quietly(condition)):
        if time.monotonic() > deadline:
            raise Unavailable(f"gave up waiting {args.wait:g} s for {what}")
        time.sleep(0.1)
    return found


def _quietly(condition: Callable[[], Any]) -> Any:
    try:
        return condition()
    except CaddyError:  # a node restarting, a leader changing: look again
        return None


def _restart_safe(client: Client, node: str) -> bool:
    return bool(client.admin("admin.check_restart", {"node": node})["safe"])


def _back(client: Client, node: str, since: float) -> bool:
    """A new process of `node` answers and has applied what the leader had committed."""
    leader = client.leader()
    if leader is None:
        return False
    committed = client.status(leader)["commit_index"]  # first: under writes it keeps growing
    status = client.status(node)
    if status["uptime_s"] > time.monotonic() - since:
        return False  # still the old process
    return status["applied_index"] >= committed


def _run_holding(command: list[str], token: int) -> int:
    environment = {**os.environ, "CADDY_FENCING_TOKEN": str(token)}
    try:
        return subprocess.run(command, env=environment, check=False).returncode
    except OSError as error:
        _error(f"cannot run {_shown(command[0])}: {error.strerror or error}")
        return EXIT_CANNOT_RUN


def _say(args: argparse.Namespace, document: dict[str, Any], text: str | None) -> None:
    if args.json:
        print(json.dumps(document, default=repr))
    elif text is not None:
        print(text)


_COMMANDS = {
    "status": _status,
    "members": _members,
    "quorum": _quorum,
    "votes": _votes,
    "put": _put,
    "get": _get,
    "delete": _delete,
    "cas": _cas,
    "leader": _leader,
    "lock": _lock,
    "drain": _drain,
    "undrain": _undrain,
    "watch": _watch,
    "add-node": _add_node,
    "remove-node": _remove_node,
    "promote": _promote,
    "demote": _demote,
    "transfer-leader": _transfer_leader,
    "check-restart": _check_restart,
    "rolling-restart": _rolling_restart,
    "reconfigure": _reconfigure,
    "reload": _reload,
    "backend": _backend,
    "backends": _backends,
    "pick": _pick,
}


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)
