"""The local cluster's parts that start no node: free ports, topology files, polling, memory."""

import os
import socket

import pytest

from actors import local_cluster
from actors.local_cluster import (
    LocalCluster,
    NodeExited,
    WaitTimeout,
    free_ports,
    process_memory_kb,
    wait_until,
    write_topology,
)
from caddy.config import load_topology
from caddy.errors import CaddyError


def test_free_ports_come_from_below_the_ephemeral_range_when_it_leaves_room(monkeypatch, tmp_path):
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("32768\t60999\n")
    monkeypatch.setattr(local_cluster, "EPHEMERAL_RANGE_FILE", range_file)
    assert all(local_cluster.LOWEST_PORT <= port < 32768 for port in free_ports(20))
    range_file.write_text("1024\t65535\n")  # no room: the kernel picks, as for bind(0)
    assert len(set(free_ports(4))) == 4
    monkeypatch.setattr(local_cluster, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert len(set(free_ports(4))) == 4


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_topology_has_n_nodes_on_distinct_ports_and_loads(tmp_path):
    path = write_topology(tmp_path / "fresh", 5, cluster="demo")
    assert path == tmp_path / "fresh" / "topology.yaml"
    config = load_topology(path)
    assert config.cluster == "demo"
    assert [node.id for node in config.nodes] == ["n1", "n2", "n3", "n4", "n5"]
    endpoints = [node.address for node in config.nodes] + [
        node.client_address for node in config.nodes
    ]
    assert len(set(endpoints)) == 10
    assert all(endpoint.startswith("tcp://127.0.0.1:") for endpoint in endpoints)
    assert config.data_dir == tmp_path / "fresh" / "data"


def test_topology_takes_hosts_roles_data_dir_and_extra_sections(tmp_path):
    path = write_topology(
        tmp_path,
        3,
        hosts=["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        roles=["voter", "voter", "learner"],
        data_dir=str(tmp_path / "elsewhere"),
        raft={"snapshot_threshold": 100},
    )
    config = load_topology(path)
    assert [node.address.rsplit(":", 1)[0] for node in config.nodes] == [
        "tcp://127.0.0.1",
        "tcp://127.0.0.2",
        "tcp://127.0.0.3",
    ]
    assert [node.role for node in config.nodes] == ["voter", "voter", "learner"]
    assert config.data_dir == tmp_path / "elsewhere"
    assert config.raft.snapshot_threshold == 100


def test_cluster_config_is_the_topology_it_runs(tmp_path):
    cluster = LocalCluster(write_topology(tmp_path, 3, cluster="cfg"))
    assert cluster.config.cluster == "cfg"
    assert cluster.nodes == {}
    cluster.check_alive()  # nothing started, nothing exited
    assert cluster.log_path("n2") == tmp_path / "n2.log"


def test_wait_until_returns_the_first_truthy_value():
    answers = iter([None, 0, "", "leader n2"])
    assert wait_until(lambda: next(answers), 5, "an answer", every=0) == "leader n2"


def test_wait_until_names_what_it_waited_for():
    with pytest.raises(WaitTimeout, match="a leader"):
        wait_until(lambda: None, 0, "a leader", every=0)
    assert issubclass(WaitTimeout, CaddyError) and issubclass(NodeExited, CaddyError)


def test_memory_of_a_live_process_and_of_none():
    assert process_memory_kb(os.getpid(), "VmRSS") > 0
    assert process_memory_kb(os.getpid(), "VmHWM") >= process_memory_kb(os.getpid(), "VmRSS")
    assert process_memory_kb(os.getpid(), "NoSuchField") == 0
    assert process_memory_kb(2**22 + 1) == 0  # above the kernel's pid limit: no such process
