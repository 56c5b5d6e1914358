"""The replicated service registry (CONTRACT 7): each service's backends (address, weight,
draining), changed through the log, so every node holds the same registry, exactly once per
client write, across restarts and snapshots.

A registry starts empty and unseeded; the first leader writes the topology's `services:` in
with a `seed` command (a later seed changes nothing: the log, not a file, is the truth from
then on), and `caddy-ctl backend add|remove|weight|drain|undrain` change it. Services are
defined by the topology (strategy, listen, health); the registry holds their backends.

`RegistryStateMachine` is the layer that applies registry commands (a 6-field payload) and
hands every other command to the machine inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from caddy.bounds import MAX_NAME_LENGTH
from caddy.replication.commands import CommandError
from caddy.replication.packing import pack, unpack
from caddy.replication.state_machine import (
    ErrorCode,
    SnapshotError,
    StateMachine,
    error_result,
    layer_snapshot_view,
    ok_result,
    split_layer_snapshot,
)

# A msgpack array of 6: [op, service, backend, address, weight, extra].
_REGISTRY_COMMAND_PREFIX = b"\x96"
SNAPSHOT_TAG = "caddy.registry"
SNAPSHOT_VERSION = 1
MAX_WEIGHT = 1_000_000
MAX_ADDRESS_LENGTH = 256
MAX_BACKENDS = 4096  # per service
SEED, ADD, REMOVE, WEIGHT, DRAIN, UNDRAIN = "seed", "add", "remove", "weight", "drain", "undrain"
OPS = (SEED, ADD, REMOVE, WEIGHT, DRAIN, UNDRAIN)


class BackendEntry(NamedTuple):
    address: str
    weight: int
    draining: bool = False


Seed = list[tuple[str, list[tuple[str, str, int]]]]  # [(service, [(id, address, weight)])]


def encode_registry(
    op: str,
    service: str = "",
    backend: str = "",
    address: str = "",
    weight: int = 0,
    extra: Any = 0,
) -> bytes:
    """A registry command's payload; CommandError for invalid fields. `seed` takes the whole
    seed in `extra` (see `seed_command`)."""
    check_registry(op, service, backend, address, weight, extra)
    return pack([op, service, backend, address, weight, extra])


def seed_command(services: Iterable[tuple[str, Iterable[tuple[str, str, int]]]]) -> bytes:
    """The `seed` payload of a topology's services: [(name, [(id, address, weight)])]."""
    seed = [[name, [list(backend) for backend in backends]] for name, backends in services]
    return encode_registry(SEED, extra=seed)


def decode_registry(payload: bytes) -> tuple[str, str, str, str, int, Any]:
    fields = unpack(payload, CommandError)
    if type(fields) is not list or len(fields) != 6:
        raise CommandError("registry: expected [op, service, backend, address, weight, extra]")
    check_registry(*fields)
    op, service, backend, address, weight, extra = fields
    return op, service, backend, address, weight, extra


def is_registry_command(payload: bytes) -> bool:
    return payload[:1] == _REGISTRY_COMMAND_PREFIX


def check_registry(
    op: Any, service: Any, backend: Any, address: Any, weight: Any, extra: Any
) -> None:
    """Raise CommandError unless the fields make a valid registry command."""
    if type(op) is not str or op not in OPS:
        raise CommandError("registry: unknown operation")
    if op == SEED:
        if (service, backend, address, weight) != ("", "", "", 0):
            raise CommandError("registry: a seed takes its services only")
        _check_seed(extra)
        return
    if extra != 0:
        raise CommandError("registry: unexpected extra field")
    _check_name("service", service)
    _check_name("backend", backend)
    if op == ADD:
        _check_backend(address, weight)
    elif op == WEIGHT:
        if address != "" or not _weight_ok(weight):
            raise CommandError(f"registry: a weight is an integer 1 to {MAX_WEIGHT}")
    elif address != "" or weight != 0:
        raise CommandError(f"registry: {op} takes a service and a backend only")


def _check_seed(extra: Any) -> None:
    if type(extra) is not list:
        raise CommandError("registry: a seed is a list of services")
    for entry in extra:
        if type(entry) is not list or len(entry) != 2 or type(entry[1]) is not list:
            raise CommandError("registry: a seeded service is [name, backends]")
        _check_name("service", entry[0])
        if len(entry[1]) > MAX_BACKENDS:
            raise CommandError(f"registry: at most {MAX_BACKENDS} backends per service")
        for backend in entry[1]:
            if type(backend) is not list or len(backend) != 3:
                raise CommandError("registry: a seeded backend is [id, address, weight]")
            _check_name("backend", backend[0])
            _check_backend(backend[1], backend[2])


def _check_name(what: str, value: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise CommandError(
            f"registry: {what} must be a string of 1 to {MAX_NAME_LENGTH} characters"
        )


def _check_backend(address: Any, weight: Any) -> None:
    if type(address) is not str or not address.startswith("tcp://"):
        raise CommandError("registry: an address is tcp://HOST:PORT")
    if len(address) > MAX_ADDRESS_LENGTH:
        raise CommandError(f"registry: an address has at most {MAX_ADDRESS_LENGTH} characters")
    if not _weight_ok(weight):
        raise CommandError(f"registry: a weight is an integer 1 to {MAX_WEIGHT}")


def _weight_ok(weight: Any) -> bool:
    return type(weight) is int and 1 <= weight <= MAX_WEIGHT


# ----- the table -----------------------------------------------------------------------------


class ServiceRegistry:
    """Services and their backends; `version` counts the changes (a balancer refreshes on it)."""

    __slots__ = ("services", "seeded", "version")

    def __init__(self) -> None:
        self.services: dict[str, dict[str, BackendEntry]] = {}
        self.seeded = False
        self.version = 0

    def apply(self, op: str, service: str, backend: str, address: str, weight: int, extra: Any):
        """A decoded command's result (`ok_result` or `error_result`)."""
        if op == SEED:
            if self.seeded:
                return ok_result({"seeded": False})
            self.services = {
                name: {b: BackendEntry(a, w) for b, a, w in backends} for name, backends in extra
            }
            self.seeded = True
            self.version += 1
            return ok_result({"seeded": True})
        backends = self.services.get(service)
        if backends is None:
            known = ", ".join(sorted(self.services)) or "none"
            return error_result(ErrorCode.INVALID, f"no service {service!r} (services: {known})")
        entry = backends.get(backend)
        if op == ADD:
            if entry is not None:
                return error_result(
                    ErrorCode.INVALID, f"{backend} is a backend of {service} already"
                )
            if len(backends) >= MAX_BACKENDS:
                return error_result(ErrorCode.INVALID, f"{service} has {MAX_BACKENDS} backends")
            backends[backend] = BackendEntry(address, weight)
        elif entry is None:
            return error_result(ErrorCode.INVALID, f"no backend {backend!r} in {service}")
        elif op == REMOVE:
            del backends[backend]
        elif op == WEIGHT:
            backends[backend] = entry._replace(weight=weight)
        else:
            backends[backend] = entry._replace(draining=op == DRAIN)
        self.version += 1
        return ok_result(self.document_of(service))

    def document_of(self, service: str) -> list[dict[str, Any]]:
        """One service's backends, in id order, as status and `caddy-ctl` show them."""
        return [
            {"id": b, "address": e.address, "weight": e.weight, "draining": e.draining}
            for b, e in sorted(self.services.get(service, {}).items())
        ]

    def document(self) -> dict[str, list[dict[str, Any]]]:
        return {service: self.document_of(service) for service in sorted(self.services)}

    def to_state(self) -> list[Any]:
        services = [
            [name, [[b, e.address, e.weight, e.draining] for b, e in sorted(backends.items())]]
            for name, backends in sorted(self.services.items())
        ]
        return [self.seeded, self.version, services]

    @classmethod
    def from_state(cls, state: Any) -> ServiceRegistry:
        try:
            seeded, version, services = state
            registry = cls()
            registry.seeded, registry.version = bool(seeded), int(version)
            registry.services = {
                name: {b: BackendEntry(a, w, bool(d)) for b, a, w, d in backends}
                for name, backends in services
            }
        except (TypeError, ValueError) as error:
            raise SnapshotError(f"registry snapshot: {error}") from None
        return registry


# ----- the layer ---------------------------------------------------------------------------


class RegistryStateMachine(StateMachine):
    """Registry commands are applied to `registry`; anything else goes to `inner` as it is."""

    __slots__ = ("inner", "registry", "_inner_apply", "on_change")

    def __init__(self, inner: StateMachine) -> None:
        self.inner = inner
        self.registry = ServiceRegistry()
        self._inner_apply = inner.apply  # bound once: this runs for every write
        self.on_change: Callable[[], None] | None = None  # after a change, on the applying thread

    def apply(self, command: bytes) -> Any:
        if command[:1] != _REGISTRY_COMMAND_PREFIX:  # `is_registry_command`, without the call
            return self._inner_apply(command)
        try:
            fields = decode_registry(command)
        except CommandError as error:
            return error_result(ErrorCode.INVALID, str(error))
        version = self.registry.version
        result = self.registry.apply(*fields)
        if self.registry.version != version and self.on_change is not None:
            self.on_change()
        return result

    def snapshot(self) -> bytes:
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        """The registry is copied now (it is small); the inner machine's view is used if it has
        one."""
        state = self.registry.to_state()
        return layer_snapshot_view(SNAPSHOT_TAG, SNAPSHOT_VERSION, state, self.inner)

    def restore(self, data: bytes) -> None:
        """A snapshot of this layer, or of the inner machine alone (written before the registry
        existed: an empty, unseeded registry then)."""
        layer = split_layer_snapshot(data, SNAPSHOT_TAG, SNAPSHOT_VERSION)
        if layer is None:
            self.inner.restore(data)
            self.registry = ServiceRegistry()
        else:
            restored = ServiceRegistry.from_state(layer[0])
            self.inner.restore(layer[1])
            self.registry = restored
        if self.on_change is not None:
            self.on_change()
