"""User errors at the command line: exit status 2, one line per problem, never a traceback."""

import subprocess
import sys

import pytest
import yaml

from tests.harness import CADDY_CTL, CADDY_NODE, write_topology

GOOD_NODES = [
    {"id": "n1", "address": "tcp://127.0.0.1:7901"},
    {"id": "n2", "address": "tcp://127.0.0.1:7902"},
    {"id": "n3", "address": "tcp://127.0.0.1:7903"},
]

INVALID = {
    "missing-cluster": ({"nodes": GOOD_NODES}, "topology.yaml: cluster:"),
    "missing-nodes": ({"cluster": "c"}, "topology.yaml: nodes:"),
    "bad-role": (
        {"cluster": "c", "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "role": "leader"}]},
        "topology.yaml: nodes[2].role: must be one of voter, learner, witness, got 'leader'",
    ),
    "duplicate-id": (
        {"cluster": "c", "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "id": "n1"}]},
        "topology.yaml: nodes[2].id:",
    ),
    "duplicate-address": (
        {
            "cluster": "c",
            "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "address": "tcp://127.0.0.1:7901"}],
        },
        "topology.yaml: nodes[2].address:",
    ),
    "bad-address": (
        {"cluster": "c", "nodes": [*GOOD_NODES[:2], {**GOOD_NODES[2], "address": "udp://x"}]},
        "topology.yaml: nodes[2].address:",
    ),
    "unknown-key": ({"cluster": "c", "nodes": GOOD_NODES, "raftt": {}}, "topology.yaml: raftt:"),
    "wrong-type": (
        {"cluster": "c", "nodes": GOOD_NODES, "raft": {"heartbeat_ms": "fast"}},
        "topology.yaml: raft.heartbeat_ms:",
    ),
    "bad-range": (
        {
            "cluster": "c",
            "nodes": GOOD_NODES,
            "raft": {"heartbeat_ms": 100, "election_timeout_min_ms": 50},
        },
        "topology.yaml: raft.election_timeout_min_ms:",
    ),
    "no-voters": (
        {"cluster": "c", "nodes": [{**n, "role": "learner"} for n in GOOD_NODES]},
        "topology.yaml: nodes:",
    ),
    "not-a-mapping": (["just", "a", "list"], "topology.yaml:"),
}


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
    )


def assert_clean_error(result, expected_line, status=2):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert any(expected_line in line for line in result.stderr.splitlines()), result.stderr


@pytest.mark.parametrize("case", sorted(INVALID))
@pytest.mark.parametrize("script", ["node", "ctl"])
def test_invalid_topology_exits_2_naming_file_and_key(tmp_path, case, script):
    document, expected = INVALID[case]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document))
    if script == "node":
        result = run(CADDY_NODE, str(path))
    else:
        result = run(CADDY_CTL, "--topology", str(path), "status")
    assert_clean_error(result, expected)


def test_unparsable_yaml_and_missing_file(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("cluster: [unclosed\n")
    assert_clean_error(run(CADDY_NODE, str(path)), "topology.yaml")
    assert_clean_error(
        run(CADDY_NODE, str(tmp_path / "absent.yaml")), str(tmp_path / "absent.yaml")
    )


def test_unknown_node_and_bad_arguments(tmp_path):
    topology = write_topology(tmp_path, 3)
    assert_clean_error(run(CADDY_NODE, str(topology), "--node", "n9"), "caddy-node: --node")
    assert_clean_error(run(CADDY_NODE), "usage: caddy-node")
    assert_clean_error(run(CADDY_NODE, str(topology), "--log-level", "LOUD"), "usage: caddy-node")
    assert_clean_error(run(CADDY_CTL, "--topology", str(topology)), "usage: caddy-ctl")
    assert_clean_error(
        run(CADDY_CTL, "--topology", str(topology), "frobnicate"), "usage: caddy-ctl"
    )
    assert_clean_error(run(CADDY_CTL, "--topology", str(topology), "status", "n9"), "caddy-ctl:")


def test_address_in_use_is_one_line_and_status_1(tmp_path, processes):
    topology = write_topology(tmp_path, 1)
    first = processes.node(topology, "n1")
    from tests.harness import ctl_json, wait_until

    wait_until(lambda: ctl_json(topology, "status"), 20, "n1 to answer")
    second = run(CADDY_NODE, str(topology), "--node", "n1")
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    assert "cannot start" in second.stderr
    assert first.poll() is None


# ----- every argument checked: usage + one error line, or one line, and never a network wait ----

SMALL_MESSAGES = {
    "transport": {"max_message_bytes": 16384},  # the smallest: writes of up to 12288 bytes
    "raft": {"max_append_bytes": 8192},
    "replication": {"snapshot_chunk_bytes": 8192},
}


def assert_usage_error(result, prog, expected):
    """Status 2, nothing on stdout, argparse's usage (its first line and any wrapped ones), then
    exactly one error line, the last, naming the problem."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"usage: {prog}"), result.stderr
    assert all(line.startswith(" ") for line in lines[1:-1]), result.stderr
    assert lines[-1].startswith(f"{prog}") and ": error: " in lines[-1], result.stderr
    assert [line for line in lines if "error:" in line] == [lines[-1]]
    assert expected in lines[-1], result.stderr


def assert_one_line(result, prog, expected, status=2):
    """Status `status`, nothing on stdout, and exactly one line on stderr naming the problem."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: ") and expected in lines[0], result.stderr


@pytest.fixture
def idle_topology(tmp_path):
    """A topology on free ports where no node runs: an argument error must not wait on it."""
    return write_topology(tmp_path, 3)


RANGE = "must be a finite number of seconds, more than 0 and at most 3600, got"


@pytest.mark.parametrize(
    "timeout, expected",
    [
        ("nan", f"{RANGE} 'nan'"),
        ("inf", f"{RANGE} 'inf'"),
        ("-inf", f"{RANGE} '-inf'"),
        ("-1", f"{RANGE} '-1'"),
        ("0", f"{RANGE} '0'"),
        ("1e309", f"{RANGE} '1e309'"),
        ("99999999", f"{RANGE} '99999999'"),
        ("abc", "expected a number of seconds, got 'abc'"),
    ],
)
def test_ctl_refuses_a_bad_timeout(idle_topology, timeout, expected):
    result = run(CADDY_CTL, "--topology", str(idle_topology), f"--timeout={timeout}", "status")
    assert_usage_error(result, "caddy-ctl", "argument --timeout: ")
    assert result.stderr.splitlines()[-1] == f"caddy-ctl: error: argument --timeout: {expected}"


def test_ctl_refuses_a_negative_timeout_given_as_its_own_word(idle_topology):
    result = run(CADDY_CTL, "--topology", str(idle_topology), "--timeout", "-1", "leader")
    assert_usage_error(result, "caddy-ctl", "argument --timeout: ")


@pytest.mark.parametrize(
    "args, prog, expected",
    [
        ([], "caddy-ctl", "the following arguments are required: command"),
        (["frobnicate"], "caddy-ctl", "argument command: invalid choice: 'frobnicate'"),
        (["put", "k"], "caddy-ctl put", "the following arguments are required: VALUE"),
        (["cas", "k", "a"], "caddy-ctl cas", "the following arguments are required: NEW"),
        (["get"], "caddy-ctl get", "the following arguments are required: KEY"),
        (["get", "k", "x"], "caddy-ctl", "unrecognized arguments: x"),
        (["put", "", "v"], "caddy-ctl put", "argument KEY: must not be empty"),
        (["get", ""], "caddy-ctl get", "argument KEY: must not be empty"),
        (["delete", ""], "caddy-ctl delete", "argument KEY: must not be empty"),
        (["cas", "", "a", "b"], "caddy-ctl cas", "argument KEY: must not be empty"),
        (["status", ""], "caddy-ctl status", "argument NODE: must not be empty"),
        (["put", b"\xff", "v"], "caddy-ctl put", "argument KEY: not valid UTF-8"),
        (["put", "k", b"\xffv"], "caddy-ctl put", "argument VALUE: not valid UTF-8"),
    ],
)
def test_ctl_refuses_bad_commands_and_keys_with_usage(idle_topology, args, prog, expected):
    assert_usage_error(run(CADDY_CTL, "--topology", str(idle_topology), *args), prog, expected)


def test_ctl_refuses_an_empty_topology_path_with_usage():
    assert_usage_error(
        run(CADDY_CTL, "--topology", "", "status"), "caddy-ctl", "argument --topology: must not"
    )


def test_ctl_refuses_an_unknown_node_in_one_line_listing_the_known_ones(idle_topology):
    result = run(CADDY_CTL, "--topology", str(idle_topology), "--timeout", "60", "status", "n9")
    assert_one_line(
        result, "caddy-ctl", f"status: no node 'n9' in {idle_topology} (nodes: n1, n2, n3)"
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["put", "k", "x" * 13000], "put: the write is 13011 bytes, over the largest of 12288"),
        (["put", "k" * 13000, "v"], "put: the write is 13011 bytes, over the largest of 12288"),
        (["get", "k" * 13000], "get: the key is 13000 bytes, over the largest of 12288 bytes"),
        (["delete", "k" * 13000], "delete: the write is"),
        (["cas", "k", "a", "b" * 13000], ": KEY 1 byte, EXPECTED 1 byte, NEW 13000 bytes"),
    ],
)
def test_ctl_refuses_a_key_or_value_over_the_message_size_in_one_line(tmp_path, args, expected):
    topology = write_topology(tmp_path, 3, **SMALL_MESSAGES)
    result = run(CADDY_CTL, "--topology", str(topology), "--timeout", "60", *args)
    assert_one_line(result, "caddy-ctl", expected)
    assert "(transport.max_message_bytes 16384 less 4096 bytes of framing)" in result.stderr


@pytest.mark.parametrize("script", ["ctl", "node"])
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_topology_is_one_line_and_exit_2(tmp_path, script, kind):
    path = tmp_path / "absent.yaml" if kind == "missing" else tmp_path
    if script == "ctl":
        result = run(CADDY_CTL, "--topology", str(path), "status")
        assert_one_line(result, "caddy-ctl", f"{path}: cannot read: ")
    else:
        result = run(CADDY_NODE, str(path))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
        assert result.stderr.startswith(f"{path}: cannot read: ")


def test_ctl_interrupted_by_ctrl_c_exits_130_in_one_line(idle_topology):
    import os
    import signal

    from tests.harness import wait_until

    child = subprocess.Popen(
        [sys.executable, str(CADDY_CTL), "--topology", str(idle_topology), "--timeout", "60"]
        + ["status", "n1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell may start background jobs with SIGINT ignored; Python then never raises
        # KeyboardInterrupt. Restore the default so the interpreter installs its handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # zmq starts its I/O thread with the first socket: the command is waiting on the network.
        wait_until(lambda: len(os.listdir(f"/proc/{child.pid}/task")) > 1, 20, "ctl's zmq thread")
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, stderr
    assert (stdout, stderr) == ("", "caddy-ctl: interrupted\n")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--log-level", "bogus"], "argument --log-level: invalid choice: 'BOGUS'"),
        (["--node", ""], "argument --node: must not be empty"),
        (["--data-dir", ""], "argument --data-dir: must not be empty"),
        (["--data-dir", "{topology}"], "exists and is not a directory"),
        (["--node"], "argument --node: expected one argument"),
        (["extra"], "unrecognized arguments: extra"),
    ],
)
def test_node_refuses_bad_arguments_with_usage(idle_topology, args, expected):
    args = [arg.format(topology=idle_topology) for arg in args]
    result = run(CADDY_NODE, str(idle_topology), "--node", "n1", *args)
    assert_usage_error(result, "caddy-node", expected)


def test_node_refuses_missing_or_empty_topology_with_usage():
    assert_usage_error(
        run(CADDY_NODE), "caddy-node", "the following arguments are required: TOPOLOGY"
    )
    assert_usage_error(run(CADDY_NODE, ""), "caddy-node", "argument TOPOLOGY: must not be empty")


@pytest.mark.parametrize("node_args", [["--node", "n9"], ["--node=n9", "--log-level=debug"]])
def test_node_refuses_an_unknown_node_in_one_line_listing_the_known_ones(idle_topology, node_args):
    result = run(CADDY_NODE, str(idle_topology), *node_args)
    assert_one_line(
        result,
        "caddy-node",
        f"--node: no node 'n9' in {idle_topology} (nodes: n1, n2, n3)",
    )
