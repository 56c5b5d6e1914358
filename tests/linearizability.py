"""A linearizability checker for key-value histories: one register per key, checked key by key.

Wing & Gong's search with Lowe's memoisation (as in Knossos and Porcupine), for read / write / cas /
delete operations whose outcome is ok, failed (never applied) or unknown (may apply, any time after
its call, or never).
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any


class Op(enum.StrEnum):
    READ = "read"  # args (); ok value: the value read, None when absent
    WRITE = "write"  # args (value,)
    CAS = "cas"  # args (expected, new); expected None means absent; ok value: swapped or not
    DELETE = "delete"  # args (); ok value: whether the key existed


class Status(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"  # definitely not applied
    UNKNOWN = "unknown"  # timed out: may or may not take effect, at any point after its call


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    value: Any = None

    def __str__(self) -> str:
        return f"ok {self.value!r}" if self.status is Status.OK else self.status.value


def ok(value: Any = None) -> Outcome:
    return Outcome(Status.OK, value)


FAILED = Outcome(Status.FAILED)
UNKNOWN = Outcome(Status.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key. Values must be hashable; they compare by type and value
    (1, 1.0 and True differ, as they do for the key-value store)."""

    process: Hashable
    op: Op
    key: str
    args: tuple[Any, ...]
    call: float
    returned: float  # ignored when the outcome is unknown: such an operation never returns
    outcome: Outcome

    def describe(self, origin: float = 0.0) -> str:
        args = ", ".join(map(repr, self.args))
        end = "..." if self.outcome.status is Status.UNKNOWN else f"{self.returned - origin:.3f}"
        return (
            f"{self.process} {self.op.value}({args}) -> {self.outcome}"
            f"  [{self.call - origin:.3f} .. {end}]"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of a check: `ok`, or the key and a readable counter-example."""

    ok: bool
    key: str | None = None
    counterexample: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return "linearizable" if self.ok else self.counterexample


def check_history(history: Iterable[Operation], initial: Any = None) -> Verdict:
    """Whether the history is linearizable, every key starting at `initial` (None: absent)."""
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for operation in history:
        by_key[operation.key].append(operation)
    origin = min((o.call for ops in by_key.values() for o in ops), default=0.0)
    for key in sorted(by_key):
        verdict = check_key(by_key[key], initial, origin)
        if not verdict:
            return verdict
    return Verdict(True)


def check_key(ops: Sequence[Operation], initial: Any = None, origin: float = 0.0) -> Verdict:
    """Check the operations of one key; on failure, explain the shortest failing prefix."""
    relevant = [o for o in ops if _matters(o)]
    if _linearizable(relevant, initial):
        return Verdict(True)
    key = relevant[0].key
    culprit = _shortest_failing_prefix(relevant, initial)
    return Verdict(False, key, _explain(key, culprit, relevant, initial, origin))


def _matters(operation: Operation) -> bool:
    """Failed operations never happened; a read of unknown outcome constrains nothing."""
    if operation.outcome.status is Status.FAILED:
        return False
    return not (operation.op is Op.READ and operation.outcome.status is Status.UNKNOWN)


# ----- the register model -----------------------------------------------------------------------


def _same(left: Any, right: Any) -> bool:
    return type(left) is type(right) and left == right


def _step(state: Any, operation: Operation) -> tuple[bool, Any]:
    """(legal, next state) for applying `operation` to a register holding `state`."""
    known = operation.outcome.status is Status.OK
    result = operation.outcome.value
    if operation.op is Op.READ:
        return _same(state, result), state
    if operation.op is Op.WRITE:
        return True, operation.args[0]
    if operation.op is Op.DELETE:
        existed = state is not None
        return (not known or result is existed), None
    expected, new = operation.args
    swapped = _same(state, expected)
    return (not known or result is swapped), (new if swapped else state)


# ----- the search -------------------------------------------------------------------------------


def _linearizable(ops: Sequence[Operation], initial: Any) -> bool:
    """WGL search. Completed operations sit in a doubly linked list of call and return events;
    unknown operations have no return event and stay candidates from their call on.

    A configuration is (completed operations linearized, register state, unknown operations
    linearized). Each one reached is remembered; one reached before with the same completed set
    and state and a subset of the unknowns used has already failed, as having more unknowns still
    available only adds choices. Interchangeable unknown operations (same operation, same
    arguments) are offered in call order only.

    Cost: a history that passes is checked in about linear time; proving a failure explores every
    configuration up to it, which grows quickly with the unknown operations pending at once.
    """
    ops, initial = _merge_unobserved_values(ops, initial)
    completed = [o for o in ops if o.outcome.status is Status.OK]
    unknown = sorted((o for o in ops if o.outcome.status is Status.UNKNOWN), key=lambda o: o.call)
    if not completed:
        return True
    effects = [(o.op, *((type(a), a) for a in o.args)) for o in unknown]
    # events: (time, 0 call / 1 return, index); a call at the same instant as a return comes first
    events = sorted(
        [(o.call, 0, i) for i, o in enumerate(completed)]
        + [(o.returned, 1, i) for i, o in enumerate(completed)]
    )
    count = len(events)
    head, tail = count, count + 1  # sentinels
    next_ = [*range(1, count), tail, 0, tail]
    prev = [head, *range(count - 1), head, count - 1]
    call_event = [0] * len(completed)
    return_event = [0] * len(completed)
    for position, (_, is_return, index) in enumerate(events):
        (return_event if is_return else call_event)[index] = position

    def lift(index: int) -> None:
        for event in (call_event[index], return_event[index]):
            next_[prev[event]] = next_[event]
            prev[next_[event]] = prev[event]

    def unlift(index: int) -> None:
        for event in (return_event[index], call_event[index]):
            next_[prev[event]] = event
            prev[next_[event]] = event

    def candidates(unknown_used: int) -> list[tuple[bool, int]]:
        """(is_unknown, index) of every operation that may be linearized next."""
        found = []
        event = next_[head]
        while events[event][1] == 0:
            found.append((False, events[event][2]))
            event = next_[event]
        frontier = events[event][0]
        offered = set()
        for index, operation in enumerate(unknown):
            if operation.call > frontier:
                break
            if not unknown_used >> index & 1 and effects[index] not in offered:
                offered.add(effects[index])  # the others like it are interchangeable with it
                found.append((True, index))
        return found

    seen: dict[tuple[int, type, Any], list[int]] = defaultdict(list)

    def reached_before(done: int, state: Any, unknown_used: int) -> bool:
        """Whether this configuration, or one with fewer unknowns used, was reached (and so
        failed) before; remembers this one."""
        used_before = seen[(done, type(state), state)]
        if any(used & ~unknown_used == 0 for used in used_before):
            return True
        used_before.append(unknown_used)
        return False

    done, unknown_used, remaining = 0, 0, len(completed)
    # each frame: the candidates of a configuration, the next one to try, how we got there, state
    stack: list[list[Any]] = [[candidates(0), 0, None, initial]]
    while stack:
        frame = stack[-1]
        options, position, _, state = frame
        while position < len(options):
            is_unknown, index = options[position]
            position += 1
            operation = unknown[index] if is_unknown else completed[index]
            legal, after = _step(state, operation)
            next_done = done if is_unknown else done | 1 << index
            next_unknown = unknown_used | 1 << index if is_unknown else unknown_used
            if legal and not reached_before(next_done, after, next_unknown):
                break
        else:
            stack.pop()
            if frame[2] is not None:
                is_unknown, index = frame[2]
                if is_unknown:
                    unknown_used &= ~(1 << index)
                else:
                    unlift(index)
                    remaining += 1
                    done &= ~(1 << index)
            continue
        frame[1] = position
        if not is_unknown:
            lift(index)
            remaining -= 1
            if remaining == 0:
                return True
        done, unknown_used = next_done, next_unknown
        stack.append([candidates(unknown_used), 0, (is_unknown, index), after])
    return False


class _Unobserved:
    """Stands for every value no read returns and no cas expects: they all act alike."""

    def __repr__(self) -> str:
        return "<unobserved>"


_UNOBSERVED = _Unobserved()
_NO_SHADOW = object()


def _merge_unobserved_values(ops: Sequence[Operation], initial: Any) -> tuple[list[Operation], Any]:
    """Replace values that nothing observes by one stand-in, so that configurations differing
    only in such values are recognised as the same (and their operations as interchangeable)."""
    observed = {(type(o.outcome.value), o.outcome.value) for o in ops if o.op is Op.READ}
    observed |= {(type(o.args[0]), o.args[0]) for o in ops if o.op is Op.CAS}

    def merged(value: Any) -> Any:
        return value if value is None or (type(value), value) in observed else _UNOBSERVED

    def rewritten(operation: Operation) -> Operation:
        if operation.op is Op.WRITE:
            args: tuple[Any, ...] = (merged(operation.args[0]),)
        elif operation.op is Op.CAS:
            args = (operation.args[0], merged(operation.args[1]))
        else:
            return operation
        return replace(operation, args=args)

    return [rewritten(o) for o in ops], merged(initial)


# ----- counter-examples -------------------------------------------------------------------------


def _prefix(ops: Sequence[Operation], end: float) -> list[Operation]:
    """The history as seen at time `end`: operations still running then have unknown outcomes."""
    return [
        o
        if o.outcome.status is Status.UNKNOWN or o.returned <= end
        else Operation(o.process, o.op, o.key, o.args, o.call, math.inf, UNKNOWN)
        for o in ops
        if o.call <= end and not (o.op is Op.READ and o.returned > end)
    ]


def _shortest_failing_prefix(ops: Sequence[Operation], initial: Any) -> Operation:
    """The operation at whose return the history stops being linearizable. Binary search over
    return events: a prefix that fails makes every longer one fail."""
    returning = sorted((o for o in ops if o.outcome.status is Status.OK), key=lambda o: o.returned)
    low, high = 0, len(returning) - 1  # the full history fails, and so does its last prefix
    while low < high:
        middle = (low + high) // 2
        if _linearizable(_prefix(ops, returning[middle].returned), initial):
            low = middle + 1
        else:
            high = middle
    return returning[low]


def _explain(
    key: str, culprit: Operation, ops: Sequence[Operation], initial: Any, origin: float
) -> str:
    """The culprit, the operations running alongside it, and the recent ones that preceded it."""
    called = [o for o in ops if o.call <= culprit.returned]
    before = sorted(
        (o for o in called if o.outcome.status is Status.OK and o.returned < culprit.call),
        key=lambda o: o.returned,
    )[-12:]
    alongside = [
        o
        for o in called
        if o is not culprit
        and o not in before
        and (o.outcome.status is Status.UNKNOWN or o.returned >= culprit.call)
    ]
    shown = sorted([*before, *alongside[-20:], culprit], key=lambda o: o.call)
    lines = [
        f"key {key!r} is not linearizable (initial value {initial!r}); times in s from the start.",
        f"No order of the {len(called)} operations called by the time this one returned (those"
        " still running then may or may not have taken effect) explains it:",
        f"  {culprit.describe(origin)}",
        "Its neighbourhood (call order; unknown outcomes may take effect any time after the call):",
        *(("> " if o is culprit else "  ") + o.describe(origin) for o in shown),
    ]
    return "\n".join(lines)
