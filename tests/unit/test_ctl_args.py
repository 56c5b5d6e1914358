"""`caddy-ctl`'s argument checks and exit statuses, in process: no node, no subprocess."""

import argparse
import math
import re

import pytest

from actors.local_cluster import write_topology
from caddy import ctl
from caddy.config import ConfigError, load_topology
from caddy.errors import CaddyError, Timeout, Unavailable, ValueTooLarge
from caddy.replication.commands import encode_kv
from caddy.sizes import MIN_MESSAGE_BYTES, max_write_bytes

SMALL = {
    "transport": {"max_message_bytes": MIN_MESSAGE_BYTES},
    "raft": {"max_append_bytes": 8192},
    "replication": {"snapshot_chunk_bytes": 8192},
}
LARGEST = max_write_bytes(MIN_MESSAGE_BYTES)  # 12288 bytes


@pytest.fixture
def topology(tmp_path):
    return write_topology(tmp_path, 3)


@pytest.fixture
def small_topology(tmp_path):
    return write_topology(tmp_path / "small", 3, **SMALL)


def parse(*argv):
    return ctl.build_parser().parse_args(["--topology", "t.yaml", *argv])


@pytest.mark.parametrize("text", ["5", "0.001", "1e-3", "3600", " 2.5 ", "1_0"])
def test_timeout_accepts_finite_positive_numbers_up_to_an_hour(text):
    seconds = ctl.timeout_seconds(text)
    assert math.isfinite(seconds) and 0 < seconds <= ctl.MAX_TIMEOUT_S


@pytest.mark.parametrize(
    "text",
    ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "0", "-0", "1e309", "3600.001", "99999999"],
)
def test_timeout_refuses_non_finite_and_out_of_range_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError, match="finite number of seconds.*at most 3600"):
        ctl.timeout_seconds(text)


@pytest.mark.parametrize("text", ["abc", "", "5s", "0x10", "1,5"])
def test_timeout_refuses_what_is_not_a_number(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number of seconds"):
        ctl.timeout_seconds(text)


def test_a_long_argument_is_cut_short_in_the_message():
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        ctl.timeout_seconds("9" * 10_000)
    assert len(str(raised.value)) < 200 and "(10000 characters)" in str(raised.value)


def test_keys_nodes_and_topology_must_be_non_empty_utf8():
    assert ctl.non_empty_text("k") == "k"
    assert ctl.non_empty_text("ключ ✓") == "ключ ✓"
    with pytest.raises(argparse.ArgumentTypeError, match="must not be empty"):
        ctl.non_empty_text("")
    with pytest.raises(argparse.ArgumentTypeError, match="not valid UTF-8"):
        ctl.non_empty_text("a\udcffb")  # how argv carries the byte 0xff


def test_values_are_strings_kept_as_given():
    assert ctl.text_value("") == ""
    assert ctl.text_value('{"a": 1}') == '{"a": 1}'  # not parsed as JSON
    args = parse("put", "k", "42")
    assert (args.key, args.value) == ("k", "42")
    with pytest.raises(argparse.ArgumentTypeError, match="not valid UTF-8"):
        ctl.text_value("\udcff")


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "the following arguments are required: --topology"),
        (["--topology", "t.yaml"], "the following arguments are required: command"),
        (["--topology", "", "leader"], "argument --topology: must not be empty"),
        (["--topology", "t.yaml", "--timeout=nan", "leader"], "argument --timeout: must be"),
        (["--topology", "t.yaml", "frobnicate"], "argument command: invalid choice"),
        (["--topology", "t.yaml", "put", "k"], "required: VALUE"),
        (["--topology", "t.yaml", "put", "", "v"], "argument KEY: must not be empty"),
        (["--topology", "t.yaml", "get", "k", "x"], "unrecognized arguments: x"),
        (["--topology", "t.yaml", "cas", "k", "a"], "required: NEW"),
        (["--topology", "t.yaml", "status", ""], "argument NODE: must not be empty"),
        (["--topology", "t.yaml", "leader", "n1"], "unrecognized arguments: n1"),
    ],
)
def test_invalid_arguments_print_usage_and_one_error_line_and_exit_2(capsys, argv, expected):
    with pytest.raises(SystemExit) as exited:
        ctl.main(argv)
    assert exited.value.code == ctl.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("usage: caddy-ctl")
    assert all(line.startswith(" ") for line in lines[1:-1])  # the usage's wrapped lines
    assert [line for line in lines if "error:" in line] == [lines[-1]]
    assert re.match(r"caddy-ctl( [a-z]+)?: error: ", lines[-1])
    assert expected in lines[-1]


def one_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("caddy-ctl: ")
    return lines[0]


def test_unknown_node_is_one_line_listing_the_known_ones(topology, capsys):
    assert ctl.main(["--topology", str(topology), "status", "n9"]) == ctl.EXIT_USAGE
    assert one_line(capsys) == (
        f"caddy-ctl: status: no node 'n9' in {topology} (nodes: n1, n2, n3)"
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["put", "k", "x" * 13000],
            "put: the write is 13011 bytes, over the largest of 12288 bytes",
        ),
        (["put", "k" * 13000, "v"], ": KEY 13000 bytes, VALUE 1 byte"),
        (["get", "k" * 13000], "get: the key is 13000 bytes, over the largest of 12288 bytes"),
        (["delete", "k" * 13000], "delete: the write is"),
        (["cas", "k", "a" * 6200, "b" * 6200], ": KEY 1 byte, EXPECTED 6200 bytes, NEW 6200 bytes"),
        (["put", "k", "é" * 6200], "VALUE 12400 bytes"),  # bytes of UTF-8, not characters
    ],
)
def test_oversized_requests_are_one_line_naming_both_sizes(small_topology, capsys, argv, expected):
    assert ctl.main(["--topology", str(small_topology), *argv]) == ctl.EXIT_USAGE
    line = one_line(capsys)
    assert expected in line
    assert "(transport.max_message_bytes 16384 less 4096 bytes of framing)" in line


def test_a_write_of_exactly_the_largest_size_passes_the_check(small_topology):
    config = load_topology(small_topology)

    def put(length):
        return parse("put", "k", "x" * length)

    fits = LARGEST - len(encode_kv("put", "k", "")) - 2  # a str16 header
    assert len(encode_kv("put", "k", "x" * fits)) == LARGEST
    assert ctl.topology_problem(config, put(fits)) is None
    assert ctl.topology_problem(config, put(fits + 1)) is not None
    assert ctl.topology_problem(config, parse("get", "k" * LARGEST)) is None
    assert ctl.topology_problem(config, parse("get", "k" * (LARGEST + 1))) is not None
    assert ctl.topology_problem(config, parse("status")) is None
    assert ctl.topology_problem(config, parse("status", "n2")) is None
    assert ctl.topology_problem(config, parse("leader")) is None


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_topology_is_one_line_and_exit_2(tmp_path, capsys, name):
    path = tmp_path / name
    assert ctl.main(["--topology", str(path), "leader"]) == ctl.EXIT_USAGE
    assert one_line(capsys).startswith(f"caddy-ctl: {path}: cannot read: ")


class FailingClient:
    """Stands in for `Client`: every command raises `error`."""

    error: BaseException = RuntimeError()

    def __init__(self, config, timeout):
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def _raise(self, *args):
        raise self.error

    status = statuses = members = put = get = delete = cas = leader = _raise


@pytest.mark.parametrize(
    "error, status, expected",
    [
        (Timeout("no answer within 5 s"), 1, "caddy-ctl: no answer within 5 s"),
        (Unavailable("no node answered"), 1, "caddy-ctl: no node answered"),
        (CaddyError("line one\nline two"), 1, "caddy-ctl: line one line two"),
        (ConfigError("t.yaml: nodes: no node"), 2, "caddy-ctl: t.yaml: nodes: no node"),
        (OSError(24, "Too many open files"), 1, "caddy-ctl: unexpected error: OSError: "),
        (ValueError(), 1, "caddy-ctl: unexpected error: ValueError"),
        (Timeout(), 1, "caddy-ctl: Timeout"),
        (KeyboardInterrupt(), 130, "caddy-ctl: interrupted"),
        (BrokenPipeError(32, "Broken pipe"), 1, "caddy-ctl: cannot write the output"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["status", "n1"], ["put", "k", "v"], ["leader"]])
def test_errors_escaping_a_command_are_one_line_with_the_documented_status(
    topology, monkeypatch, capsys, error, status, expected, command
):
    monkeypatch.setattr(FailingClient, "error", error)
    monkeypatch.setattr(ctl, "Client", FailingClient)
    monkeypatch.setattr(ctl, "_discard_stdout", lambda: None)  # keep pytest's stdout
    assert ctl.main(["--topology", str(topology), *command]) == status
    assert one_line(capsys).startswith(expected)


def test_the_client_gets_the_checked_timeout(topology, monkeypatch):
    seen = []

    class Recording(FailingClient):
        def __init__(self, config, timeout):
            seen.append(timeout)

    monkeypatch.setattr(FailingClient, "error", Timeout("t"))
    monkeypatch.setattr(ctl, "Client", Recording)
    ctl.main(["--topology", str(topology), "--timeout", "3600", "leader"])
    ctl.main(["--topology", str(topology), "leader"])
    assert seen == [3600.0, ctl.DEFAULT_TIMEOUT_S]


def test_a_write_the_cluster_finds_too_large_exits_2(topology, monkeypatch, capsys):
    error = ValueTooLarge("the write", 20_000, 12_288, 16_384)  # as the leader answers it
    monkeypatch.setattr(FailingClient, "error", error)
    monkeypatch.setattr(ctl, "Client", FailingClient)
    assert ctl.main(["--topology", str(topology), "put", "k", "v"]) == ctl.EXIT_USAGE
    assert one_line(capsys) == f"caddy-ctl: {error}"


def test_an_unexpected_error_while_loading_the_topology_is_one_line(topology, monkeypatch, capsys):
    def explode(path):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(ctl, "load_topology", explode)
    assert ctl.main(["--topology", str(topology), "leader"]) == ctl.EXIT_FAILURE
    assert (
        one_line(capsys)
        == "caddy-ctl: unexpected error: RecursionError: maximum recursion depth exceeded"
    )


def test_lock_takes_a_name_a_ttl_a_wait_and_the_command_after_the_double_dash():
    args = ctl.parse_args(["--topology", "t.yaml", "lock", "job", "--wait", "0", "--", "ls", "-l"])
    assert (args.name, args.ttl, args.wait, args.run) == ("job", 10.0, 0.0, ["ls", "-l"])
    held = ctl.parse_args(["--topology", "t.yaml", "lock", "job", "--ttl", "2.5", "--wait", "3"])
    assert (held.ttl, held.wait, held.run) == (2.5, 3.0, [])
    with pytest.raises(argparse.ArgumentTypeError, match="at most 128 characters"):
        ctl.name_text("x" * 129)
    with pytest.raises(argparse.ArgumentTypeError, match="finite number"):
        ctl.wait_seconds("-1")


@pytest.mark.parametrize(
    "argv",
    [
        ["lock"],
        ["lock", ""],
        ["lock", "job", "--ttl", "0"],
        ["lock", "job", "--wait", "nan"],
        ["put", "k", "v", "--", "ls"],
    ],
)
def test_a_bad_lock_command_line_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        ctl.parse_args(["--topology", "t.yaml", *argv])
    assert raised.value.code == ctl.EXIT_USAGE
    assert capsys.readouterr().err.splitlines()[-1].startswith("caddy-ctl")
