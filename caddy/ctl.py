"""`caddy-ctl`: status, membership and key-value operations from the shell.

Human-readable tables by default, one JSON document with --json; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from caddy.client import Client
from caddy.config import ConfigError, load_topology
from caddy.errors import CaddyError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _UsageParser(prog="caddy-ctl", description="Query and operate a CADDY cluster.")
    parser.add_argument("--topology", required=True, help="topology YAML file")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_UsageParser)
    status = commands.add_parser("status", help="one row per node")
    status.add_argument("node", nargs="?", help="only this node")
    commands.add_parser("members", help="the gossip view of the membership")
    put = commands.add_parser("put", help="store VALUE under KEY")
    put.add_argument("key")
    put.add_argument("value")
    get = commands.add_parser("get", help="print the value of KEY (exit 1 when absent)")
    get.add_argument("key")
    delete = commands.add_parser("delete", help="remove KEY")
    delete.add_argument("key")
    cas = commands.add_parser("cas", help="set KEY to NEW if it holds EXPECTED (exit 1 if not)")
    cas.add_argument("key")
    cas.add_argument("expected")
    cas.add_argument("new")
    commands.add_parser("leader", help="print the leader's id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout <= 0:
        print("caddy-ctl: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_topology(args.topology)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    try:
        with Client(config, timeout=args.timeout) as client:
            return _COMMANDS[args.command](client, args)
    except ConfigError as error:
        print(f"caddy-ctl: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CaddyError as error:
        print(f"caddy-ctl: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _status(client: Client, args: argparse.Namespace) -> int:
    if args.node:
        statuses = {args.node: client.status(args.node)}
    else:
        statuses = client.statuses()
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True))
    else:
        rows = [_status_row(node_id, status) for node_id, status in statuses.items()]
        print(
            _table(
                ["id", "role", "state", "term", "leader", "commit", "applied", "hears", "members"],
                rows,
            )
        )
    return EXIT_OK if any(s is not None for s in statuses.values()) else EXIT_FAILURE


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
        print(f"caddy-ctl: no key {args.key!r}", file=sys.stderr)
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
        print("caddy-ctl: no leader right now", file=sys.stderr)
        return EXIT_FAILURE
    _say(args, {"leader": leader}, leader)
    return EXIT_OK


def _say(args: argparse.Namespace, document: dict[str, Any], text: str | None) -> None:
    if args.json:
        print(json.dumps(document, default=repr))
    elif text is not None:
        print(text)


_COMMANDS = {
    "status": _status,
    "members": _members,
    "put": _put,
    "get": _get,
    "delete": _delete,
    "cas": _cas,
    "leader": _leader,
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
