"""The linearizability checker of tests/linearizability.py: known verdicts, a brute-force oracle on
small random histories, and large simulated histories."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.linearizability import (
    FAILED,
    UNKNOWN,
    Op,
    Operation,
    Outcome,
    Status,
    _step,
    check_history,
    ok,
)


def op(
    process: int,
    kind: Op,
    call: float,
    returned: float,
    outcome: Outcome,
    *args: Any,
    key: str = "k",
) -> Operation:
    return Operation(process, kind, key, args, call, returned, outcome)


def write(p: int, call: float, ret: float, value: Any, outcome: Outcome | None = None, key="k"):
    return op(p, Op.WRITE, call, ret, outcome or ok(), value, key=key)


def read(p: int, call: float, ret: float, value: Any, key: str = "k"):
    return op(p, Op.READ, call, ret, ok(value), key=key)


def cas(p: int, call: float, ret: float, expected: Any, new: Any, outcome: Outcome):
    return op(p, Op.CAS, call, ret, outcome, expected, new)


def delete(p: int, call: float, ret: float, outcome: Outcome):
    return op(p, Op.DELETE, call, ret, outcome)


# ----- known verdicts ---------------------------------------------------------------------------


def test_empty_and_sequential_histories_are_linearizable():
    assert check_history([])
    assert check_history(
        [
            read(1, 0, 1, None),
            write(1, 2, 3, "a"),
            read(2, 4, 5, "a"),
            cas(1, 6, 7, "a", "b", ok(True)),
            cas(2, 8, 9, "a", "c", ok(False)),
            read(1, 10, 11, "b"),
            delete(2, 12, 13, ok(True)),
            delete(1, 14, 15, ok(False)),
            cas(2, 16, 17, None, "d", ok(True)),
            read(1, 18, 19, "d"),
        ]
    )


def test_stale_read_after_a_completed_write():
    verdict = check_history([write(1, 0, 1, "a"), write(1, 2, 3, "b"), read(2, 4, 5, "a")])
    assert not verdict
    assert verdict.key == "k"
    assert "2 read() -> ok 'a'" in verdict.counterexample


def test_two_cas_succeeding_from_the_same_expected_value():
    history = [
        write(1, 0, 1, "a"),
        cas(1, 2, 5, "a", "b", ok(True)),
        cas(2, 3, 6, "a", "c", ok(True)),
    ]
    assert not check_history(history)


def test_a_read_of_a_value_never_written():
    verdict = check_history([write(1, 0, 1, "a"), read(2, 0.5, 3, "ghost")])
    assert not verdict
    assert "'ghost'" in verdict.counterexample


def test_a_lost_acknowledged_write():
    assert not check_history([write(1, 0, 1, "a"), read(2, 2, 3, None)])
    assert not check_history(
        [cas(1, 0, 1, None, "a", ok(True)), read(2, 1.5, 2, "a"), read(2, 3, 4, None)]
    )


def test_a_failed_write_never_takes_effect():
    assert check_history([write(1, 0, 1, "a", FAILED), read(2, 2, 3, None)])
    assert not check_history([write(1, 0, 1, "a", FAILED), read(2, 2, 3, "a")])


def test_an_unknown_write_may_or_may_not_apply():
    lost = [write(1, 0, 1, "a", UNKNOWN), read(2, 2, 3, None), read(2, 4, 5, None)]
    applied = [write(1, 0, 1, "a", UNKNOWN), read(2, 2, 3, "a")]
    late = [write(1, 0, 1, "a", UNKNOWN), read(2, 2, 3, None), read(2, 40, 41, "a")]
    assert check_history(lost)
    assert check_history(applied)
    assert check_history(late)  # an unknown write may take effect long after its client gave up


def test_an_unknown_write_applies_once_and_never_before_its_call():
    flicker = [
        write(1, 0, 1, "a", UNKNOWN),
        read(2, 2, 3, "a"),
        write(2, 4, 5, "b"),
        read(2, 6, 7, "a"),
        read(2, 8, 9, "b"),
    ]
    early = [read(2, 0, 1, "a"), write(1, 2, 3, "a", UNKNOWN)]
    assert not check_history(flicker)
    assert not check_history(early)


def test_unknown_cas_and_delete_follow_the_register_model():
    history = [
        write(1, 0, 1, "a"),
        cas(1, 2, 3, "a", "b", UNKNOWN),
        read(2, 4, 5, "b"),
        delete(1, 6, 7, UNKNOWN),
        read(2, 8, 9, None),
        read(2, 10, 11, None),
    ]
    assert check_history(history)
    assert not check_history([*history[:2], read(2, 4, 5, "x")])


def test_concurrent_write_and_read_in_both_orders():
    for seen in (None, "a"):
        assert check_history([write(1, 0, 10, "a"), read(2, 2, 5, seen)])
    assert not check_history([write(1, 0, 10, "a"), read(2, 2, 5, "a"), read(2, 6, 7, None)])


def test_overlapping_writes_in_both_orders():
    for first, last in (("a", "b"), ("b", "a")):
        history = [
            write(1, 0, 10, "a"),
            write(2, 1, 9, "b"),
            read(3, 2, 8, first),
            read(3, 11, 12, last),
        ]
        assert check_history(history)
        assert not check_history([*history, read(3, 13, 14, first)])


def test_keys_are_independent_registers():
    history = [
        write(1, 0, 1, "a", None, "x"),
        write(2, 0, 1, "b", None, "y"),
        read(3, 2, 3, "a", key="x"),
        read(3, 2, 3, "b", key="y"),
    ]
    assert check_history(history)
    verdict = check_history([*history, read(3, 4, 5, "b", key="x")])
    assert not verdict and verdict.key == "x"


def test_values_compare_by_type():
    assert not check_history([write(1, 0, 1, 1), read(2, 2, 3, True)])
    assert not check_history([write(1, 0, 1, 1), cas(2, 2, 3, 1.0, 2, ok(True))])
    assert check_history([write(1, 0, 1, 1), cas(2, 2, 3, 1.0, 2, ok(False)), read(2, 4, 5, 1)])


# ----- a brute-force oracle on small random histories -------------------------------------------


def brute_force(history: list[Operation], initial: Any = None) -> bool:
    """Try every subset of the unknown operations and every order that respects real time."""
    ops = [o for o in history if o.outcome.status is not Status.FAILED]
    ops = [o for o in ops if not (o.op is Op.READ and o.outcome.status is Status.UNKNOWN)]
    done = [o for o in ops if o.outcome.status is Status.OK]
    unknown = [o for o in ops if o.outcome.status is Status.UNKNOWN]

    def precedes(a: Operation, b: Operation) -> bool:
        return a.outcome.status is Status.OK and a.returned < b.call

    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            for order in itertools.permutations([*done, *chosen]):
                if any(precedes(b, a) for i, a in enumerate(order) for b in order[i + 1 :]):
                    continue
                state, legal = initial, True
                for operation in order:
                    legal, state = _step(state, operation)
                    if not legal:
                        break
                if legal:
                    return True
    return False


VALUES = st.sampled_from([None, "a", "b"])
OUTCOMES = st.sampled_from([Status.OK, Status.OK, Status.OK, Status.UNKNOWN, Status.FAILED])


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    history = []
    for process in range(draw(st.integers(1, 6))):
        call = draw(st.integers(0, 8))
        returned = call + draw(st.integers(1, 4))
        kind = draw(st.sampled_from(list(Op)))
        status = draw(OUTCOMES)
        args: tuple[Any, ...] = ()
        if kind is Op.WRITE:
            args = (draw(st.sampled_from(["a", "b"])),)
        elif kind is Op.CAS:
            args = (draw(VALUES), draw(st.sampled_from(["a", "b"])))
        value = draw(VALUES) if kind is Op.READ else None
        if kind in (Op.CAS, Op.DELETE):
            value = draw(st.booleans())
        outcome = Outcome(status, value if status is Status.OK else None)
        history.append(Operation(process, kind, "k", args, call, returned, outcome))
    return history


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(history):
    assert bool(check_history(history)) == brute_force(history)


# ----- large simulated histories ----------------------------------------------------------------


def simulated_history(
    seed: int, count: int, keys: int, processes: int = 4, unknown_rate: float = 0.02
) -> list[Operation]:
    """A history of a real register: each operation takes effect at a random instant inside its
    interval (an unknown one at any instant after its call, or never)."""
    rng = random.Random(seed)
    clock = [0.0] * processes
    planned = []
    for n in range(count):
        process = rng.randrange(processes)
        call = clock[process] + rng.uniform(0.0, 1.0)
        returned = call + rng.uniform(0.1, 3.0)
        clock[process] = returned
        kind = rng.choice(list(Op))
        key = f"k{rng.randrange(keys)}"
        args: tuple[Any, ...] = {
            Op.WRITE: (f"v{n}",),
            Op.CAS: (rng.choice([None, f"v{max(0, n - rng.randrange(1, 8))}"]), f"v{n}"),
        }.get(kind, ())
        unknown = rng.random() < unknown_rate
        effect = call + rng.uniform(0, 30) if unknown else rng.uniform(call, returned)
        if unknown and rng.random() < 0.5:
            effect = float("inf")
        planned.append((effect, process, kind, key, args, call, returned, unknown))
    state: dict[str, Any] = {}
    history = []
    planned.sort(key=lambda plan: plan[0])
    for effect, process, kind, key, args, call, returned, unknown in planned:
        operation = Operation(process, kind, key, args, call, returned, ok())
        _, after = _step(state.get(key), operation)
        result = {
            Op.READ: state.get(key),
            Op.WRITE: None,
            Op.DELETE: state.get(key) is not None,
            Op.CAS: state.get(key) == args[0] if kind is Op.CAS else None,
        }[kind]
        if effect != float("inf"):
            state[key] = after
        outcome = UNKNOWN if unknown else ok(result)
        history.append(Operation(process, kind, key, args, call, returned, outcome))
    return sorted(history, key=lambda o: o.call)


def test_large_linearizable_histories_pass():
    for seed in range(3):
        history = simulated_history(seed, count=2000, keys=5)
        assert sum(o.outcome.status is Status.UNKNOWN for o in history) > 10
        verdict = check_history(history)
        assert verdict, verdict


def test_large_history_with_one_corrupted_read_fails_and_names_it():
    history = simulated_history(7, count=2000, keys=5)
    reads = [i for i, o in enumerate(history) if o.op is Op.READ and o.outcome.value is not None]
    target = history[reads[len(reads) // 2]]
    history[reads[len(reads) // 2]] = Operation(
        target.process, Op.READ, target.key, (), target.call, target.returned, ok("never")
    )
    verdict = check_history(history)
    assert not verdict
    assert verdict.key == target.key
    assert "> " + f"{target.process} read() -> ok 'never'" in verdict.counterexample
