"""Every topology key is read by the node's code, and topologies/README.md documents exactly the
keys the config dataclasses hold: a key that nothing reads is a promise the node does not keep.

"Read" means an attribute access (or a `getattr` by constant name) on an expression that is known
to hold that config class: a `config`/`_config` name or attribute (the code base's name for a
ClusterConfig), a value annotated with a config class, a section or node taken from one of those
(`config.raft`, `config.node(id)`, `for peer in config.peers_of(id)`), and what such values are
assigned to or passed to (parameters of the called function or method). Calling a ClusterConfig
or NodeConfig method counts as reading the fields that method reads (`config.node_data_dir(id)`
reads `data_dir`), except serialisation (`to_dict`, `to_json`): copying a key is not acting on it.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

import caddy.config
from caddy.config import ClusterConfig, GossipSettings, NodeConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG_PY = Path(caddy.config.__file__).resolve()

# Sections whose subsystem has not landed yet keep only the keys that subsystem will read (see
# CONTRACT.md sections 6 and 7); topologies/README.md marks each "read once the ... lands".
# A key that is read today must leave this map.
RESERVED_FOR: dict[str, set[str]] = {
    "balancer": {"strategy"},
}
# Keys read in a way the scan cannot see. gossip.profile is resolved into the five profile
# timings by GossipSettings.for_profile as the file loads, and the node reads those timings
# (test_the_gossip_profile_is_consumed_while_loading).
SPECIAL = {"gossip.profile"}
# Fields that nothing reads yet although something should; an entry must go once one does.
KNOWN_UNREAD: set[str] = set()

SERIALISERS = {"to_dict", "to_json"}
CONFIG_NAMES = {"config", "_config"}  # names and attributes that hold a ClusterConfig

SECTIONS: dict[str, type] = {
    name: hint for name, hint in get_type_hints(ClusterConfig).items() if is_dataclass(hint)
}
CONFIG_CLASSES: tuple[type, ...] = (ClusterConfig, NodeConfig, *SECTIONS.values())
BY_NAME = {cls.__name__: cls for cls in CONFIG_CLASSES}


@dataclass(frozen=True)
class Many:
    """A collection of one config class (`config.nodes`, `config.peers_of(id)`)."""

    cls: type


Kind = type | Many


def _kind_of_hint(hint: Any) -> Kind | None:
    if hint in CONFIG_CLASSES:
        return hint
    if get_origin(hint) is tuple and get_args(hint) and get_args(hint)[0] in CONFIG_CLASSES:
        return Many(get_args(hint)[0])
    return None


def _members(cls: type) -> tuple[dict[str, Kind | None], dict[str, Kind | None]]:
    """What an attribute (field or property) and what a method call of `cls` give."""
    attributes: dict[str, Kind | None] = {
        name: _kind_of_hint(hint) for name, hint in get_type_hints(cls).items()
    }
    calls: dict[str, Kind | None] = {}
    for name, member in vars(cls).items():
        if isinstance(member, property):
            attributes[name] = _kind_of_hint(get_type_hints(member.fget).get("return"))
        elif inspect.isfunction(member):
            calls[name] = _kind_of_hint(get_type_hints(member).get("return"))
    return attributes, calls


ATTRIBUTE_KINDS, CALL_KINDS = {}, {}
for _cls in CONFIG_CLASSES:
    ATTRIBUTE_KINDS[_cls], CALL_KINDS[_cls] = _members(_cls)


def _fields_read_by_members(cls: type) -> dict[str, set[str]]:
    """For each method and property of `cls` in config.py, the fields it reads (transitively)."""
    tree = ast.parse(CONFIG_PY.read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    direct = {
        member.name: {
            node.attr
            for node in ast.walk(member)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        }
        for member in body.body
        if isinstance(member, ast.FunctionDef) and member.name not in SERIALISERS
    }
    field_names = {spec.name for spec in fields(cls)}

    def closure(name: str, seen: set[str]) -> set[str]:
        seen.add(name)
        found = direct[name] & field_names
        for used in direct[name] - field_names - seen:
            if used in direct:
                found |= closure(used, seen)
        return found

    return {name: closure(name, set()) for name in direct}


MEMBER_READS = {cls: _fields_read_by_members(cls) for cls in (ClusterConfig, NodeConfig)}


# ---------------------------------------------------------------------------------------------
# The scan


Scope = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one scope; nested functions are scopes of their own."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (*FUNCTIONS, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _annotation_kinds(annotation: ast.expr | None) -> frozenset[Kind]:
    if annotation is None:
        return frozenset()
    text = ast.unparse(annotation).strip("'\"").rsplit(".", 1)[-1]
    return frozenset({BY_NAME[text]}) if text in BY_NAME else frozenset()


class Scan:
    """Propagates the config kinds a value may hold through names, `self` attributes and call
    parameters to a fixed point (the sets only grow), then collects the config fields read."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.trees = {name: ast.parse(text, name) for name, text in sources.items()}
        self.locals: dict[ast.AST, dict[str, set[Kind]]] = defaultdict(dict)
        self.self_attributes: dict[tuple[str, str], set[Kind]] = {}
        self.defs: dict[str, list[tuple[ast.AST, bool, bool]]] = defaultdict(list)
        for tree in self.trees.values():
            self._collect_defs(tree)
        self.reads: set[tuple[type, str]] = set()
        self.changed = True
        while self.changed:
            self.changed = False
            self._pass(collect=False)
        self._pass(collect=True)

    def _collect_defs(self, tree: ast.Module) -> None:
        """Functions by name: (def, is a method whose first parameter is bound, is `__init__`)."""
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, FUNCTIONS):
                        static = any(
                            ast.unparse(d) == "staticmethod" for d in member.decorator_list
                        )
                        key = node.name if member.name == "__init__" else member.name
                        self.defs[key].append((member, not static, member.name == "__init__"))
            elif isinstance(node, FUNCTIONS):
                self.defs[node.name].append((node, False, False))

    def _pass(self, *, collect: bool) -> None:
        for module, tree in self.trees.items():
            self._scope(module, tree, [tree], collect)

    def _scope(self, module: str, scope: Scope, chain: list[Scope], collect: bool) -> None:
        if isinstance(scope, FUNCTIONS):
            arguments = scope.args
            for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs):
                self._add(self.locals[scope], arg.arg, _annotation_kinds(arg.annotation))
        for node in _scope_nodes(scope):
            if isinstance(node, (*FUNCTIONS, ast.Lambda)):
                self._scope(module, node, [*chain, node], collect)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(module, chain, target, node.value)
            elif isinstance(node, ast.AnnAssign):
                kinds = _annotation_kinds(node.annotation)
                if node.value is not None:
                    kinds |= self.kinds_of(module, chain, node.value)
                self._bind_kinds(module, chain, node.target, kinds)
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                elements = {
                    k.cls for k in self.kinds_of(module, chain, node.iter) if isinstance(k, Many)
                }
                self._bind_kinds(module, chain, node.target, frozenset(elements))
            elif isinstance(node, ast.Call):
                self._bind_call(module, chain, node)
                if collect:
                    self._collect_getattr(module, chain, node)
            if collect and isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                self._credit(self.kinds_of(module, chain, node.value), node.attr)

    def _add(self, table: dict[Any, set[Kind]], key: Any, kinds: frozenset[Kind]) -> None:
        if kinds - table.get(key, set()):
            table.setdefault(key, set()).update(kinds)
            self.changed = True

    def _bind(self, module: str, chain: list[Scope], target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            if len(target.elts) == len(value.elts):
                for one_target, one_value in zip(target.elts, value.elts, strict=True):
                    self._bind(module, chain, one_target, one_value)
            return
        self._bind_kinds(module, chain, target, self.kinds_of(module, chain, value))

    def _bind_kinds(
        self, module: str, chain: list[Scope], target: ast.expr, kinds: frozenset[Kind]
    ) -> None:
        if isinstance(target, ast.Name):
            self._add(self.locals[chain[-1]], target.id, kinds)
        elif _is_self_attribute(target):
            self._add(self.self_attributes, (module, target.attr), kinds)

    def _bind_call(self, module: str, chain: list[Scope], call: ast.Call) -> None:
        """A config value passed to a function is that kind under the parameter's name there."""
        given = [self.kinds_of(module, chain, arg) for arg in call.args]
        named = {k.arg: self.kinds_of(module, chain, k.value) for k in call.keywords if k.arg}
        if not any(given) and not any(named.values()):
            return
        by_attribute = isinstance(call.func, ast.Attribute)
        name = call.func.attr if by_attribute else getattr(call.func, "id", None)
        for function, is_method, is_init in self.defs.get(name or "", []):
            if is_method and not (by_attribute or is_init):
                continue  # a bare name calls a function or constructs a class
            arguments = function.args
            parameters = [a.arg for a in (*arguments.posonlyargs, *arguments.args)]
            parameters = parameters[1:] if is_method else parameters
            bound = dict(zip(parameters, given, strict=False)) | named
            for parameter, kinds in bound.items():
                self._add(self.locals[function], parameter, kinds)

    def _collect_getattr(self, module: str, chain: list[Scope], call: ast.Call) -> None:
        if (
            isinstance(call.func, ast.Name)
            and call.func.id == "getattr"
            and len(call.args) >= 2
            and isinstance(call.args[1], ast.Constant)
            and isinstance(call.args[1].value, str)
        ):
            self._credit(self.kinds_of(module, chain, call.args[0]), call.args[1].value)

    def _credit(self, kinds: frozenset[Kind], attribute: str) -> None:
        for kind in kinds:
            if isinstance(kind, Many):
                continue
            if attribute in {spec.name for spec in fields(kind)}:
                self.reads.add((kind, attribute))
            for name in MEMBER_READS.get(kind, {}).get(attribute, ()):
                self.reads.add((kind, name))

    def kinds_of(self, module: str, chain: list[Scope], expr: ast.expr) -> frozenset[Kind]:
        """The config classes `expr` may hold, as far as the code shows."""
        if isinstance(expr, ast.Name):
            for scope in reversed(chain):
                if expr.id in self.locals.get(scope, {}):
                    return frozenset(self.locals[scope][expr.id])
            return _CONFIG if expr.id in CONFIG_NAMES else _NOTHING
        if isinstance(expr, ast.Attribute):
            if _is_self_attribute(expr) and (module, expr.attr) in self.self_attributes:
                return frozenset(self.self_attributes[module, expr.attr])
            bases = self.kinds_of(module, chain, expr.value)
            found = _members_of(ATTRIBUTE_KINDS, bases, expr.attr)
            return found or (_CONFIG if expr.attr in CONFIG_NAMES else _NOTHING)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            return _members_of(
                CALL_KINDS, self.kinds_of(module, chain, expr.func.value), expr.func.attr
            )
        if isinstance(expr, ast.Subscript):
            return frozenset(
                k.cls for k in self.kinds_of(module, chain, expr.value) if isinstance(k, Many)
            )
        return _NOTHING


_NOTHING: frozenset[Kind] = frozenset()
_CONFIG: frozenset[Kind] = frozenset({ClusterConfig})


def _members_of(
    table: dict[type, dict[str, Kind | None]], bases: frozenset[Kind], name: str
) -> frozenset[Kind]:
    found = (table[base].get(name) for base in bases if isinstance(base, type))
    return frozenset(kind for kind in found if kind is not None)


def _is_self_attribute(expr: ast.expr) -> bool:
    return (
        isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id == "self"
    )


def _code_sources() -> dict[str, str]:
    """Every module of caddy/ (but config.py), actors/ and the bin/ scripts."""
    paths = [p for p in sorted((REPO / "caddy").rglob("*.py")) if p.resolve() != CONFIG_PY]
    paths += sorted((REPO / "actors").rglob("*.py"))
    paths += [
        p for p in sorted((REPO / "bin").iterdir()) if p.is_file() and "python" in _first_line(p)
    ]
    return {str(p.relative_to(REPO)): p.read_text() for p in paths}


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as file:
        return file.readline()


def _keys() -> list[tuple[str, type, str]]:
    """Every key as (topology path, class, field); a section is checked through its keys."""
    keys = [(spec.name, ClusterConfig, spec.name) for spec in fields(ClusterConfig)]
    keys = [key for key in keys if key[0] not in SECTIONS]
    keys += [(f"nodes[].{spec.name}", NodeConfig, spec.name) for spec in fields(NodeConfig)]
    keys += [
        (f"{section}.{spec.name}", cls, spec.name)
        for section, cls in SECTIONS.items()
        for spec in fields(cls)
    ]
    return keys


KEYS = _keys()


@pytest.fixture(scope="module")
def reads() -> set[tuple[type, str]]:
    return Scan(_code_sources()).reads


# ---------------------------------------------------------------------------------------------
# Every key is read


@pytest.mark.parametrize(("path", "cls", "name"), KEYS, ids=[key[0] for key in KEYS])
def test_every_key_is_read_by_the_code(
    reads: set[tuple[type, str]], path: str, cls: type, name: str
) -> None:
    read = (cls, name) in reads
    section = path.split(".")[0]
    if name in RESERVED_FOR.get(section, ()):
        assert not read, f"{path} is read now: take it out of RESERVED_FOR and the README mark"
    elif path in KNOWN_UNREAD:
        assert not read, f"{path} is read now: take it out of KNOWN_UNREAD"
    elif path not in SPECIAL:
        assert read, (
            f"{path}: nothing in caddy/ (but config.py), actors/ or bin/ reads it; "
            "wire it, or remove it (and its docs)"
        )


def test_the_allow_lists_name_real_keys() -> None:
    paths = {key[0] for key in KEYS}
    reserved = {f"{section}.{name}" for section, names in RESERVED_FOR.items() for name in names}
    assert reserved | SPECIAL | KNOWN_UNREAD <= paths


def test_the_gossip_profile_is_consumed_while_loading() -> None:
    fast = GossipSettings.for_profile("fast")
    assert fast.probe_interval_ms != GossipSettings().probe_interval_ms


# ---------------------------------------------------------------------------------------------
# The scan itself: what it credits and what it does not


def _reads_of(source: str) -> set[tuple[type, str]]:
    return Scan({"snippet.py": source}).reads


def _named(reads: set[tuple[type, str]]) -> set[str]:
    """The reads by name, but the sections themselves (checked through their keys)."""
    return {
        f"{cls.__name__}.{name}"
        for cls, name in reads
        if not (cls is ClusterConfig and name in SECTIONS)
    }


def test_the_scan_ignores_a_same_named_attribute_of_something_else() -> None:
    source = "def f(spec, config, other):\n    spec.enabled(config)\n    other.heartbeat_ms\n"
    assert _named(_reads_of(source)) == set()


def test_the_scan_follows_assignments_self_attributes_and_annotations() -> None:
    source = (
        "class T:\n"
        "    def __init__(self, config):\n"
        "        self._settings = config.transport\n"
        "        raft, tick = config.raft, config.tick_ms\n"
        "        raft.heartbeat_ms\n"
        "    def run(self, gossip: GossipSettings):\n"
        "        s = self._settings\n"
        "        return s.send_hwm, gossip.gossip_nodes\n"
    )
    assert _named(_reads_of(source)) == {
        "TransportSettings.send_hwm",
        "RaftSettings.heartbeat_ms",
        "ClusterConfig.tick_ms",
        "GossipSettings.gossip_nodes",
    }


def test_the_scan_follows_values_into_called_functions_and_methods() -> None:
    source = (
        "class Timings:\n"
        "    @classmethod\n"
        "    def from_settings(cls, settings, tick_ms):\n"
        "        return settings.heartbeat_ms, getattr(settings, 'pre_vote', True)\n"
        "def start(config):\n"
        "    Timings.from_settings(config.raft, 10)\n"
    )
    assert _named(_reads_of(source)) == {"RaftSettings.heartbeat_ms", "RaftSettings.pre_vote"}


def test_the_scan_follows_nodes_and_config_methods() -> None:
    source = (
        "def f(config):\n"
        "    ids = [n.id for n in config.nodes]\n"
        "    for peer in config.peers_of('a'):\n"
        "        peer.zone\n"
        "    config.node('a').weight\n"
        "    config.node_data_dir('a')\n"
        "    config.to_json()\n"
    )
    assert _named(_reads_of(source)) == {
        "NodeConfig.id",
        "NodeConfig.zone",
        "NodeConfig.weight",
        "ClusterConfig.nodes",
        "ClusterConfig.data_dir",
        "ClusterConfig.source",  # node() names the file in its error
    }


# ---------------------------------------------------------------------------------------------
# The README documents exactly the keys there are

README = REPO / "topologies" / "README.md"
HEADING_CLASS: dict[str, type] = {"Top level": ClusterConfig, "Nodes": NodeConfig} | {
    f"`{name}`": cls for name, cls in SECTIONS.items()
}
MARK = "read once the {} subsystem lands"


def _readme_rows() -> dict[str, dict[str, str]]:
    """Per `## heading`, the rows of its `| key | ...` tables: each key named in the first
    cell (in backticks) with its whole row."""
    rows: dict[str, dict[str, str]] = defaultdict(dict)
    heading, in_key_table = "", False
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            heading, in_key_table = line[3:].strip(), False
        elif not line.startswith("|"):
            in_key_table = False
        elif re.fullmatch(r"\|\s*key\s*\|.*", line):
            in_key_table = True
        elif in_key_table and not re.fullmatch(r"\|[-|\s:]+\|", line):
            first_cell = line.split("|")[1]
            for key in re.findall(r"`([^`]+)`", first_cell):
                rows[heading][key] = line
    return rows


def _topology_keys(cls: type) -> set[str]:
    if cls is ClusterConfig:  # the keys of a topology file, not what loading derives
        minimal = {"cluster": "c", "nodes": [{"id": "n1", "address": "tcp://127.0.0.1:7101"}]}
        return set(caddy.config.parse_topology(minimal).to_dict())
    return {spec.name for spec in fields(cls)}


@pytest.mark.parametrize("heading", HEADING_CLASS)
def test_the_readme_tables_hold_exactly_the_keys_of_the_dataclasses(heading: str) -> None:
    documented = set(_readme_rows().get(heading, {}))
    expected = _topology_keys(HEADING_CLASS[heading])
    assert sorted(expected - documented) == [], f"## {heading}: keys missing from the README"
    assert sorted(documented - expected) == [], f"## {heading}: documented keys that do not exist"


def test_the_readme_has_no_key_table_under_another_heading() -> None:
    assert set(_readme_rows()) <= set(HEADING_CLASS)


def test_the_readme_marks_exactly_the_reserved_keys() -> None:
    rows = _readme_rows()
    for section in SECTIONS:
        for key, row in rows[f"`{section}`"].items():
            marked = MARK.format(section) in row
            reserved = key in RESERVED_FOR.get(section, ())
            assert marked == reserved, f"{section}.{key}: marked {marked}, reserved {reserved}"
