"""etcd's lock throughput on this machine, to set beside CADDY's: one client's acquire + release
cycles on one name, handovers between 16 clients contending for one name, and one client's put
rate as the same-run baseline (a lock cycle is two raft writes, Lock and Unlock). Locks go
through etcd's own lock service (v3lockpb, what `etcdctl lock` uses) over gRPC. Prints one JSON
line; `measure_etcd_locks` gives the same figures to another benchmark.
Usage: python bench/etcd_locks.py [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/etcd_cluster.py

from etcd_cluster import etcd_available, etcd_cluster  # noqa: E402

LOCK_NAME = b"bench-lock"
PUT_KEY = b"bench-put"
CONTENDERS = 16
CALL_TIMEOUT_S = 30.0  # one RPC; a contender waits behind at most 15 holders
LEASE_MARGIN_S = 60  # leases get no keep-alives, so each outlives its phase by this much

_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
# The fields of etcd's messages that this benchmark sets or reads (etcd 3.4's rpc.proto and
# v3lock.proto); fields left out are skipped on decoding, as protobuf does with unknown fields.
MESSAGES = {
    "PutRequest": (("key", 1, _BYTES), ("value", 2, _BYTES)),
    "LeaseGrantRequest": (("TTL", 1, _INT64),),
    "LeaseGrantResponse": (("ID", 2, _INT64),),
    "LockRequest": (("name", 1, _BYTES), ("lease", 2, _INT64)),
    "LockResponse": (("key", 2, _BYTES),),
    "UnlockRequest": (("key", 1, _BYTES),),
}


def message_classes() -> dict[str, type]:
    """Message classes for MESSAGES, described at run time: none of the etcd clients on PyPI
    (etcd3, aetcd, etcd3aio, etcd-sdk-python) ships etcd's lock service, and the wire format needs
    only field numbers and types."""
    file = descriptor_pb2.FileDescriptorProto(
        name="bench_etcd.proto", package="bench_etcd", syntax="proto3"
    )
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            message.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"bench_etcd.{name}"))
        for name in MESSAGES
    }


PB = message_classes()


class EtcdClient:
    """One client: its own connection to one member and its own lease, as a lock is held by a
    lease (Lock calls with one lease count as one holder)."""

    def __init__(self, url: str, lease_ttl_s: int) -> None:
        # A local subchannel pool gives each client its own TCP connection: gRPC would otherwise
        # share one between all channels to the same member.
        self.channel = grpc.insecure_channel(
            url.removeprefix("http://"), options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._put = self._method("/etcdserverpb.KV/Put")
        self._lock = self._method("/v3lockpb.Lock/Lock", PB["LockResponse"])
        self._unlock = self._method("/v3lockpb.Lock/Unlock")
        grant = self._method("/etcdserverpb.Lease/LeaseGrant", PB["LeaseGrantResponse"])
        self.lease = grant(PB["LeaseGrantRequest"](TTL=lease_ttl_s), timeout=CALL_TIMEOUT_S).ID

    def _method(self, path: str, response: type | None = None) -> Callable:
        """A unary call; without a response type it returns the undecoded bytes, unread."""
        return self.channel.unary_unary(
            path,
            request_serializer=lambda request: request.SerializeToString(),
            response_deserializer=response.FromString if response else None,
        )

    def put(self, key: bytes, value: bytes) -> None:
        self._put(PB["PutRequest"](key=key, value=value), timeout=CALL_TIMEOUT_S)

    def lock(self, name: bytes) -> bytes:
        """Wait until this client holds `name`; the key that stands for the hold."""
        request = PB["LockRequest"](name=name, lease=self.lease)
        return self._lock(request, timeout=CALL_TIMEOUT_S).key

    def unlock(self, key: bytes) -> None:
        self._unlock(PB["UnlockRequest"](key=key), timeout=CALL_TIMEOUT_S)


@contextmanager
def clients(urls: list[str], count: int, seconds: float) -> Iterator[list[EtcdClient]]:
    """`count` clients spread over the members, connected and with leases before timing starts;
    for one phase of `seconds`."""
    lease_ttl_s = math.ceil(seconds) + LEASE_MARGIN_S
    with ExitStack() as stack:
        made = []
        for i in range(count):
            made.append(EtcdClient(urls[i % len(urls)], lease_ttl_s))
            stack.callback(made[-1].channel.close)
        yield made


def lock_cycles(client: EtcdClient, deadline: float) -> int:
    """Acquire and release LOCK_NAME back to back until `deadline`; how many acquisitions."""
    cycles = 0
    while time.perf_counter() < deadline:
        client.unlock(client.lock(LOCK_NAME))
        cycles += 1
    return cycles


def puts(client: EtcdClient, deadline: float) -> int:
    count = 0
    while time.perf_counter() < deadline:
        client.put(PUT_KEY, b"v")
        count += 1
    return count


def per_second(
    work: Callable[[EtcdClient, float], int], urls: list[str], count: int, seconds: float
) -> float:
    """Run `work` for `seconds` in one thread per client, `count` clients (the drain of
    contenders still queued at the deadline is counted too); operations per second over all.
    Threads suffice: a client spends its time waiting on etcd, with the GIL released (16 threads
    used 15% of a core, and 16 processes were no faster)."""
    with clients(urls, count, seconds) as group, ThreadPoolExecutor(count) as pool:
        start = time.perf_counter()
        total = sum(pool.map(work, group, [start + seconds] * count))
        return total / (time.perf_counter() - start)


def measure_etcd_locks(seconds: float) -> dict | None:
    """etcd's figures from a fresh 3-member cluster, `seconds` per phase; None without etcd."""
    version = etcd_available()
    if version is None:
        return None
    with TemporaryDirectory(prefix="etcd-locks-") as folder, etcd_cluster(Path(folder)) as urls:
        put_rate = per_second(puts, urls, 1, seconds)
        cycle_rate = per_second(lock_cycles, urls, 1, seconds)
        handover_rate = per_second(lock_cycles, urls, CONTENDERS, seconds)
    return {
        "etcd_version": version,
        "lock_cycles_per_s_1_client": round(cycle_rate, 1),
        "handovers_per_s_16_clients_one_name": round(handover_rate, 1),
        "put_per_s_1_client": round(put_rate, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    args = parser.parse_args()
    figures = measure_etcd_locks(args.seconds)
    if figures is None:
        sys.exit("etcd is not installed (Debian: apt-get install etcd-server)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
