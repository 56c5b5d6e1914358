"""caddy/fencing.py and caddy/fencing_sqlite.py: a resource accepts a fencing token equal to or
above the highest it has seen for the lock name and refuses a lower one (StaleToken), in memory
(FencingGuard) and in the resource's own SQLite database, where the check commits or rolls back
with the write it guards (SqliteFence)."""

import sqlite3
import threading
import time
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caddy.errors import CaddyError
from caddy.fencing import FencingGuard, StaleToken
from caddy.fencing_sqlite import MAX_TOKEN, SqliteFence

BAD_NAMES = [None, 1, b"reports", ["reports"]]
BAD_TOKENS = [
    pytest.param(True, TypeError, id="bool"),
    pytest.param(1.0, TypeError, id="float"),
    pytest.param("3", TypeError, id="str"),
    pytest.param(None, TypeError, id="none"),
    pytest.param(-1, ValueError, id="negative"),
]


# FencingGuard


def test_increasing_tokens_are_accepted_and_recorded():
    guard = FencingGuard()
    assert guard.highest("reports") is None
    for token in (0, 1, 7, 100):
        guard.check("reports", token)
        assert guard.highest("reports") == token


def test_an_equal_token_is_the_same_holders_next_request():
    guard = FencingGuard()
    guard.check("reports", 5)
    guard.check("reports", 5)
    assert guard.highest("reports") == 5


def test_a_lower_token_is_refused_with_its_fields_and_not_recorded():
    guard = FencingGuard()
    guard.check("reports", 9)
    with pytest.raises(StaleToken) as raised:
        guard.check("reports", 8)
    error = raised.value
    assert isinstance(error, CaddyError)
    assert (error.name, error.token, error.highest) == ("reports", 8, 9)
    assert "8" in str(error) and "9" in str(error) and "'reports'" in str(error)
    assert guard.highest("reports") == 9


def test_names_are_independent():
    guard = FencingGuard()
    guard.check("reports", 10)
    guard.check("billing", 1)
    assert guard.highest("reports") == 10 and guard.highest("billing") == 1
    with pytest.raises(StaleToken):
        guard.check("billing", 0)
    guard.check("reports", 10)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_not_a_str_is_a_type_error(name):
    guard = FencingGuard()
    with pytest.raises(TypeError):
        guard.check(name, 1)
    with pytest.raises(TypeError):
        guard.highest(name)
    with pytest.raises(TypeError), guard.fenced(name, 1):
        pass
    assert guard.state() == {}


@pytest.mark.parametrize(("token", "error"), BAD_TOKENS)
def test_a_token_that_is_not_a_non_negative_int_is_refused(token, error):
    guard = FencingGuard()
    with pytest.raises(error):
        guard.check("reports", token)
    assert guard.highest("reports") is None


def test_state_round_trips_and_is_a_copy():
    guard = FencingGuard()
    guard.check("reports", 4)
    guard.check("billing", 2**70)
    state = guard.state()
    assert state == {"reports": 4, "billing": 2**70}
    state["reports"] = 0
    assert guard.highest("reports") == 4
    restored = FencingGuard.from_state(guard.state())
    assert restored.state() == guard.state()
    with pytest.raises(StaleToken):
        restored.check("reports", 3)
    restored.check("reports", 4)


@pytest.mark.parametrize(
    ("state", "error"),
    [
        pytest.param([("reports", 1)], TypeError, id="not-a-mapping"),
        pytest.param({1: 1}, TypeError, id="name"),
        pytest.param({"reports": "1"}, TypeError, id="token"),
        pytest.param({"reports": False}, TypeError, id="bool"),
        pytest.param({"reports": -2}, ValueError, id="negative"),
    ],
)
def test_a_bad_state_is_refused(state, error):
    with pytest.raises(error):
        FencingGuard.from_state(state)


def test_fenced_runs_the_block_only_for_an_accepted_token():
    guard = FencingGuard()
    written = []
    with guard.fenced("reports", 3):
        written.append(3)
    with pytest.raises(StaleToken), guard.fenced("reports", 2):
        written.append(2)
    assert written == [3]


def test_a_failed_block_leaves_its_token_recorded():
    guard = FencingGuard()
    with pytest.raises(OSError), guard.fenced("reports", 3):
        raise OSError("disk full")
    with pytest.raises(StaleToken):
        guard.check("reports", 2)


class CountingLock:
    """A lock that counts how often it was taken and whether it is held."""

    def __init__(self):
        self.entered = 0
        self.held = False

    def __enter__(self):
        assert not self.held
        self.entered += 1
        self.held = True

    def __exit__(self, *exc):
        self.held = False


def test_every_operation_takes_the_lock_it_was_given_and_fenced_holds_it_over_the_block():
    lock = CountingLock()
    guard = FencingGuard(lock=lock)
    guard.check("reports", 1)
    guard.highest("reports")
    guard.state()
    with guard.fenced("reports", 2):
        assert lock.held
    assert not lock.held and lock.entered == 4
    with pytest.raises(StaleToken):
        guard.check("reports", 0)
    assert not lock.held
    restored = FencingGuard.from_state({"reports": 2}, lock=lock)
    restored.check("reports", 2)
    assert lock.entered == 6


checks = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 20)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(checks)
def test_the_guard_accepts_exactly_the_tokens_at_or_above_the_running_maximum(sequence):
    guard = FencingGuard()
    running: dict[str, int] = {}
    for name, token in sequence:
        expected = name not in running or token >= running[name]
        try:
            guard.check(name, token)
            accepted = True
        except StaleToken as error:
            accepted = False
            assert (error.name, error.token, error.highest) == (name, token, running[name])
        assert accepted == expected
        running[name] = max(running.get(name, token), token)
        assert guard.highest(name) == running[name]
    assert guard.state() == running


def test_concurrent_checks_are_accepted_in_an_order_that_never_goes_down():
    guard = FencingGuard()  # thread-safe by default
    names = ["reports", "billing", "audit"]
    threads_count, per_thread = 16, 300
    start = threading.Barrier(threads_count)
    applied: dict[str, list[int]] = defaultdict(list)  # the resource's writes, in order
    refused = []

    def holder(index):
        start.wait()
        for step in range(per_thread):
            name = names[(index + step) % len(names)]
            token = (step * 7 + index * 13) % 50  # every thread rises and falls
            try:
                with guard.fenced(name, token):
                    time.sleep(0)  # a write takes time: let the other threads run meanwhile
                    applied[name].append(token)
            except StaleToken as error:
                refused.append(error)
                assert error.token < error.highest

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused and sum(map(len, applied.values())) + len(refused) == threads_count * per_thread
    for name in names:
        tokens = applied[name]
        assert all(earlier <= later for earlier, later in zip(tokens, tokens[1:], strict=False))
        assert guard.highest(name) == tokens[-1]


def test_concurrent_plain_checks_keep_the_highest_token():
    guard = FencingGuard()
    start = threading.Barrier(8)
    seen = []

    def holder(index):
        start.wait()
        for token in range(index, 4000, 8):
            try:
                guard.check("reports", token)
            except StaleToken:
                pass
            seen.append(token)

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert guard.highest("reports") == max(seen) == 3999


# SqliteFence


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "resource.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE reports (token INTEGER, body TEXT)")
    SqliteFence().create(conn)
    yield path, conn
    conn.close()


def fenced_write(conn, fence, token, body, name="reports"):
    with conn:
        fence.check(conn, name, token)
        conn.execute("INSERT INTO reports VALUES (?, ?)", (token, body))


def rows(conn):
    return conn.execute("SELECT token, body FROM reports ORDER BY rowid").fetchall()


def test_sqlite_accepts_increasing_and_equal_tokens_and_refuses_a_lower_one(db):
    _, conn = db
    fence = SqliteFence()
    assert fence.highest(conn, "reports") is None
    fenced_write(conn, fence, 3, "first")
    fenced_write(conn, fence, 3, "same holder again")
    fenced_write(conn, fence, 8, "new holder")
    with pytest.raises(StaleToken) as raised:
        fenced_write(conn, fence, 7, "paused old holder")
    assert (raised.value.name, raised.value.token, raised.value.highest) == ("reports", 7, 8)
    assert rows(conn) == [(3, "first"), (3, "same holder again"), (8, "new holder")]
    assert fence.highest(conn, "reports") == 8
    assert not conn.in_transaction


def test_sqlite_names_are_independent(db):
    _, conn = db
    fence = SqliteFence()
    fenced_write(conn, fence, 10, "a", name="reports")
    fenced_write(conn, fence, 1, "b", name="billing")
    assert fence.highest(conn, "reports") == 10 and fence.highest(conn, "billing") == 1
    with pytest.raises(StaleToken):
        fenced_write(conn, fence, 0, "c", name="billing")


def test_a_rejected_check_rolls_back_the_write_made_before_it_in_the_transaction(db):
    _, conn = db
    fence = SqliteFence()
    fenced_write(conn, fence, 5, "kept")
    with pytest.raises(StaleToken), conn:
        conn.execute("INSERT INTO reports VALUES (?, ?)", (4, "written first"))
        fence.check(conn, "reports", 4)
    assert rows(conn) == [(5, "kept")]
    assert fence.highest(conn, "reports") == 5


def test_a_failed_write_rolls_back_the_token_it_was_checked_with(db):
    _, conn = db
    fence = SqliteFence()
    fenced_write(conn, fence, 5, "kept")
    with pytest.raises(sqlite3.OperationalError), conn:
        fence.check(conn, "reports", 9)
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert fence.highest(conn, "reports") == 5
    fenced_write(conn, fence, 6, "the holder of 6 may still write")


def test_the_highest_token_survives_closing_and_reopening_the_database(db):
    path, conn = db
    fence = SqliteFence()
    fenced_write(conn, fence, 41, "before the restart")
    conn.close()
    reopened = sqlite3.connect(path)
    try:
        fence.create(reopened)  # a restart runs its setup again
        assert fence.highest(reopened, "reports") == 41
        with pytest.raises(StaleToken):
            fenced_write(reopened, fence, 40, "after the restart")
        fenced_write(reopened, fence, 41, "same holder")
        assert rows(reopened) == [(41, "before the restart"), (41, "same holder")]
    finally:
        reopened.close()


def test_two_connections_to_one_database_share_the_highest_token(db):
    path, conn = db
    other = sqlite3.connect(path)
    try:
        fence = SqliteFence()
        fenced_write(conn, fence, 2, "from one")
        fenced_write(other, fence, 3, "from the other")
        with pytest.raises(StaleToken):
            fenced_write(conn, fence, 2, "stale")
        assert rows(conn) == [(2, "from one"), (3, "from the other")]
    finally:
        other.close()


def test_concurrent_connections_apply_writes_in_an_order_that_never_goes_down(db):
    path, _ = db
    fence = SqliteFence()
    start = threading.Barrier(6)
    failures = []

    def holder(index):
        conn = sqlite3.connect(path, timeout=30)
        try:
            start.wait()
            for step in range(40):
                token = (step * 5 + index * 11) % 30
                try:
                    fenced_write(conn, fence, token, f"{index}:{step}")
                except StaleToken:
                    pass
        except Exception as error:  # surfaced below: a thread's assertion would be lost
            failures.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    check = sqlite3.connect(path)
    try:
        tokens = [token for token, _ in rows(check)]
        assert tokens and all(a <= b for a, b in zip(tokens, tokens[1:], strict=False))
        assert fence.highest(check, "reports") == tokens[-1]
    finally:
        check.close()


def test_a_check_outside_a_transaction_is_an_error(tmp_path):
    conn = sqlite3.connect(tmp_path / "autocommit.db", isolation_level=None)
    try:
        fence = SqliteFence()
        fence.create(conn)
        with pytest.raises(RuntimeError, match="transaction"):
            fence.check(conn, "reports", 1)
        conn.execute("BEGIN")
        fence.check(conn, "reports", 2)
        conn.execute("ROLLBACK")
        assert fence.highest(conn, "reports") == 1
    finally:
        conn.close()


@pytest.mark.parametrize(("token", "error"), [*BAD_TOKENS, pytest.param(MAX_TOKEN + 1, ValueError)])
def test_sqlite_refuses_a_bad_token_before_touching_the_database(db, token, error):
    _, conn = db
    fence = SqliteFence()
    with pytest.raises(error):
        fence.check(conn, "reports", token)
    assert not conn.in_transaction and fence.highest(conn, "reports") is None


@pytest.mark.parametrize("name", BAD_NAMES)
def test_sqlite_refuses_a_name_that_is_not_a_str(db, name):
    _, conn = db
    fence = SqliteFence()
    with pytest.raises(TypeError):
        fence.check(conn, name, 1)
    with pytest.raises(TypeError):
        fence.highest(conn, name)


def test_sqlite_takes_the_largest_token_it_can_store(db):
    _, conn = db
    fence = SqliteFence()
    fenced_write(conn, fence, MAX_TOKEN, "last")
    assert fence.highest(conn, "reports") == MAX_TOKEN


def test_a_table_of_its_own_name(db):
    _, conn = db
    default, custom = SqliteFence(), SqliteFence("my_fences")
    custom.create(conn)
    fenced_write(conn, custom, 9, "custom")
    assert custom.highest(conn, "reports") == 9 and default.highest(conn, "reports") is None


@pytest.mark.parametrize("table", ["", "1st", "a b", 'x"; DROP TABLE reports; --', None])
def test_a_table_name_must_be_a_plain_identifier(table):
    with pytest.raises(ValueError):
        SqliteFence(table)
