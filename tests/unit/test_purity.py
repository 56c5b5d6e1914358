"""The pure modules of `caddy/` import no I/O or concurrency module and never sleep.

Only the clients (`caddy/client.py`, `caddy/async_client.py`, `caddy/lock.py`, whose leases
renew on a thread, `caddy/ctl.py`, which drives the first, and `caddy/joining.py`, which asks
a cluster through it until the leader allows a change) touch sockets; `caddy/storage/`
touches files but is still free of sockets, threads and actors. `caddy/fencing.py` takes a
`threading.Lock` and nothing else of it: a resource checks its tokens from many threads.
"""

import ast
from pathlib import Path

import pytest

CADDY = Path(__file__).resolve().parents[2] / "caddy"
SOCKET_EDGE = {"client.py", "async_client.py", "lock.py", "ctl.py", "joining.py"}
FORBIDDEN_EVERYWHERE = {"zmq", "pykka", "threading", "socket", "asyncio", "multiprocessing"}
FORBIDDEN_IN_CORES = FORBIDDEN_EVERYWHERE | {"time", "subprocess", "sqlite3"}
ALLOWED = {Path("fencing.py"): {"threading"}}  # its mutex only (see the docstring)
# A core may name `random.Random` (a seeded source is handed in), never draw from the global one.
GLOBAL_RANDOM_DRAWS = {
    "random",
    "randint",
    "randrange",
    "choice",
    "choices",
    "shuffle",
    "sample",
    "uniform",
    "seed",
    "getrandbits",
}


def modules():
    for path in sorted(CADDY.rglob("*.py")):
        relative = path.relative_to(CADDY)
        if relative.name in SOCKET_EDGE and len(relative.parts) == 1:
            continue
        yield relative


def imported_roots(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def is_core(relative: Path) -> bool:
    """Protocol cores and value modules: everything but storage and the process bootstrap."""
    return relative.parts[0] != "storage" and relative.name != "bootstrap.py"


@pytest.mark.parametrize("relative", list(modules()), ids=str)
def test_module_stays_pure(relative):
    tree = ast.parse((CADDY / relative).read_text())
    forbidden = FORBIDDEN_IN_CORES if is_core(relative) else FORBIDDEN_EVERYWHERE
    forbidden = forbidden - ALLOWED.get(relative, set())
    imported = set(imported_roots(tree))
    assert not imported & forbidden, f"caddy/{relative} imports {sorted(imported & forbidden)}"
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "sleep" not in calls, f"caddy/{relative} sleeps"
    global_draws = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "random"
        and node.func.attr in GLOBAL_RANDOM_DRAWS
    }
    assert not global_draws, f"caddy/{relative} draws from the global random source"


def test_the_check_sees_the_modules_it_must_guard():
    names = {str(p) for p in modules()}
    assert {"wire.py", "config.py", "errors.py"} <= names
