"""The piggyback queue: least-sent first, bounded retransmissions, bounded bytes."""

from caddy.swim import Alive, Dead, Suspect
from caddy.swim.broadcasts import BroadcastQueue, retransmit_limit
from caddy.swim.messages import update_size


def test_retransmit_limit_grows_with_log_n():
    assert retransmit_limit(4, 5) == 4
    assert retransmit_limit(4, 50) == 8
    assert retransmit_limit(4, 200) == 12


def test_least_transmitted_first_then_newest():
    queue = BroadcastQueue()
    queue.push(Alive("a", 1))
    queue.push(Alive("b", 1))
    assert [u.member for u in queue.take(1400, limit=5)] == ["b", "a"]
    queue.push(Alive("c", 1))
    assert [u.member for u in queue.take(1400, limit=5)] == ["c", "b", "a"]
    assert [u.member for u in queue.take(60, limit=5)][
        0
    ] == "c"  # c was sent once, the others twice


def test_updates_are_dropped_after_the_limit():
    queue = BroadcastQueue()
    queue.push(Alive("a", 1))
    sends = 0
    while queue.take(1400, limit=3):
        sends += 1
    assert sends == 3 and len(queue) == 0


def test_a_newer_update_about_a_member_replaces_the_older_one():
    queue = BroadcastQueue()
    queue.push(Suspect("a", 1, "b"))
    queue.push(Dead("a", 1, "b"))
    assert queue.take(1400, limit=3) == [Dead("a", 1, "b")]


def test_the_byte_budget_is_respected():
    queue = BroadcastQueue()
    for index in range(100):
        queue.push(Alive(f"member-{index}", index, {"zone": "z1", "role": "voter"}))
    size = update_size(Alive("member-10", 10, {"zone": "z1", "role": "voter"}))
    taken = queue.take(10 * size, limit=3)
    assert 8 <= len(taken) < 10
    assert sum(update_size(u) for u in taken) <= 10 * size


def test_skip_member_leaves_its_update_queued():
    queue = BroadcastQueue()
    queue.push(Alive("a", 1))
    assert queue.take(1400, limit=1, skip_member="a") == []
    assert len(queue) == 1
