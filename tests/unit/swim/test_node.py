"""The SWIM + Lifeguard rules of one node, each driven by hand."""

import math
from dataclasses import replace

import msgpack
import pytest

from caddy.swim import (
    Ack,
    Alive,
    Dead,
    EventKind,
    Gossip,
    Left,
    MemberRecord,
    MemberState,
    Nack,
    Ping,
    PingReq,
    Suspect,
    SwimError,
    Sync,
    to_wire,
)
from tests.unit.swim.support import CLASSIC, TIMINGS, Net, make_node, of_type, teach, tick_until


def events(node):
    return [(e.kind, e.member, e.incarnation) for e in node.ready().events]


# ----- join, sync, ping ------------------------------------------------------------------------


def test_join_announces_itself_and_syncs_with_every_other_seed():
    node = make_node("a", metadata={"role": "voter"})
    node.join(["a", "b", "c"])
    ready = node.ready()
    assert [(e.kind, e.member) for e in ready.events] == [(EventKind.JOIN, "a")]
    assert sorted(to for to, _ in ready.messages) == ["b", "c"]
    for _, message in ready.messages:
        assert message == Sync((MemberRecord("a", 0, MemberState.ALIVE, {"role": "voter"}),), True)


def test_sync_merges_the_peer_state_and_replies_with_ours():
    node = make_node("a")
    records = (MemberRecord("b", 2, MemberState.ALIVE, {"zone": "z"}),)
    node.step("b", Sync(records, reply_wanted=True))
    ready = node.ready()
    assert [(e.kind, e.member, e.incarnation) for e in ready.events] == [(EventKind.JOIN, "b", 2)]
    ((to, reply),) = ready.messages
    assert to == "b" and not reply.reply_wanted
    assert {r.member for r in reply.records} == {"a", "b"}


def test_a_member_reported_dead_by_sync_only_becomes_suspect():
    node = make_node("a")
    teach(node, "b", "c")
    node.step("c", Sync((MemberRecord("b", 0, MemberState.DEAD),)))
    assert node.state_of("b") is MemberState.SUSPECT


def test_ping_is_answered_with_an_ack_of_the_same_seq():
    node = make_node("a")
    node.step("b", Ping(41))
    assert node.ready().messages == ((("b", Ack(41))),)


def test_members_get_a_three_node_group_to_agree():
    net = Net(["a", "b", "c"])
    net.settle()
    assert [m.member for m in net.nodes["a"].members()] == ["a", "b", "c"]


# ----- probing ---------------------------------------------------------------------------------


def answered_probe_targets(node, periods):
    """Tick through `periods` protocol periods, acking every ping; the probed members in order."""
    targets = []
    for _ in range(periods * TIMINGS.probe_interval_ticks):
        node.tick()
        for to_id, message in node.ready().messages:
            if isinstance(message, Ping):
                targets.append(to_id)
                node.step(to_id, Ack(message.seq))
    return targets


def test_probes_go_round_robin_in_a_fresh_random_order_each_round():
    node = make_node("a", seed=7)
    others = ["b", "c", "d", "e", "f"]
    teach(node, *others)
    node.join([])
    targets = answered_probe_targets(node, 30)
    rounds = [targets[i : i + 5] for i in range(0, 25, 5)]
    assert all(sorted(r) == others for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1


def test_a_member_joining_mid_round_is_probed_within_the_round():
    node = make_node("a", seed=3)
    teach(node, "b", "c", "d", "e")
    node.join([])
    answered_probe_targets(node, 1)
    teach(node, "new")
    assert "new" in answered_probe_targets(node, 5)


def test_no_ack_in_time_asks_k_alive_members_to_probe_indirectly():
    node = make_node("a")
    teach(node, "b", "c", "d", "e", "f")
    node.step("x", Gossip((Dead("f", 0, "x"),)))  # dead members are no helpers
    node.join([])
    target, ping = tick_until(node, of_type(Ping))
    for _ in range(TIMINGS.probe_timeout_ticks - 1):
        node.tick()
        assert not any(isinstance(m, PingReq) for _, m in node.ready().messages)
    node.tick()
    requests = [(to, m) for to, m in node.ready().messages if isinstance(m, PingReq)]
    assert len(requests) == 3
    assert all(m.seq == ping.seq and m.target == target and m.want_nack for _, m in requests)
    assert {to for to, _ in requests} <= {"b", "c", "d", "e"} - {target}


def test_an_ack_forwarded_by_a_helper_counts_as_success():
    node = make_node("a")
    teach(node, "b", "c", "d")
    node.join([])
    target, ping = tick_until(node, of_type(Ping))
    helper, request = tick_until(node, of_type(PingReq))
    node.step(helper, Ack(request.seq))
    tick_until(node, of_type(Ping))  # the next period has begun: the verdict is in
    assert node.state_of(target) is MemberState.ALIVE
    assert node.awareness == 0


def test_a_fresh_suspect_is_probed_before_the_round_goes_on():
    node = make_node("a", seed=5)
    teach(node, "b", "c", "d", "e")  # 5 live members: all 3 possible confirmers check at once
    node.join([])
    target, ping = tick_until(node, of_type(Ping))
    node.step(target, Ack(ping.seq))
    suspect = next(m for m in "bcde" if m != target)
    node.step("x", Gossip((Suspect(suspect, 0, "x"),)))
    assert tick_until(node, of_type(Ping))[0] == suspect


def test_an_ack_from_a_stranger_is_ignored():
    node = make_node("a")
    teach(node, "b", "c")
    node.join([])
    target, ping = tick_until(node, of_type(Ping))
    stranger = "c" if target == "b" else "b"
    node.step(stranger, Ack(ping.seq))
    _, request = tick_until(node, of_type(PingReq))
    assert request.target == target


def test_no_ack_by_the_end_of_the_period_makes_the_target_suspect():
    node = make_node("a")
    teach(node, "b")
    node.join([])
    node.ready()
    target, _ = tick_until(node, of_type(Ping))
    for _ in range(TIMINGS.probe_interval_ticks):
        node.tick()
    assert node.state_of(target) is MemberState.SUSPECT
    assert (EventKind.SUSPECT, "b", 0) in events(node)


def test_a_helper_pings_the_target_and_forwards_its_ack():
    node = make_node("h")
    node.step("a", PingReq(9, "t", want_nack=True))
    ((to, ping),) = node.ready().messages
    assert to == "t" and isinstance(ping, Ping)
    node.step("t", Ack(ping.seq))
    assert node.ready().messages == (("a", Ack(9)),)
    for _ in range(20):
        node.tick()
    assert not node.ready().messages  # no nack after the ack


@pytest.mark.parametrize("want_nack", [True, False])
def test_a_helper_nacks_in_time_when_the_target_is_silent(want_nack):
    node = make_node("h")
    node.step("a", PingReq(9, "t", want_nack=want_nack))
    node.ready()
    window = TIMINGS.probe_interval_ticks - TIMINGS.probe_timeout_ticks
    sent = []
    for _ in range(window):
        node.tick()
        sent.extend(node.ready().messages)
    assert sent == ([("a", Nack(9))] if want_nack else [])


# ----- suspicion, refutation, death ------------------------------------------------------------


def test_classic_suspicion_ends_in_death_after_the_minimum_timeout():
    node = make_node("a", timings=CLASSIC)
    teach(node, "b", "c")
    node.step("c", Gossip((Suspect("b", 0, "c"),)))
    minimum = TIMINGS.suspicion_mult * TIMINGS.probe_interval_ticks
    for _ in range(minimum - 1):
        node.tick()
    assert node.state_of("b") is MemberState.SUSPECT
    node.tick()
    assert node.state_of("b") is MemberState.DEAD
    assert (EventKind.DEAD, "b", 0) in events(node)


def ticks_until_dead(node, member, limit=1000):
    for ticks in range(1, limit):
        node.tick()
        if node.state_of(member) is MemberState.DEAD:
            return ticks
    raise AssertionError("never declared dead")


def test_lifeguard_suspicion_shrinks_with_independent_confirmations():
    minimum = TIMINGS.suspicion_mult * TIMINGS.probe_interval_ticks
    maximum = TIMINGS.suspicion_max_timeout_mult * minimum
    lonely = make_node("a")
    teach(lonely, "b", "c", "d", "e")  # five live members: up to 3 confirmations expected
    lonely.step("c", Gossip((Suspect("b", 0, "c"),)))
    assert ticks_until_dead(lonely, "b") == maximum
    confirmed = make_node("a")
    teach(confirmed, "b", "c", "d", "e")
    for origin in ("c", "d", "e", "x"):
        confirmed.step("c", Gossip((Suspect("b", 0, origin),)))
    assert ticks_until_dead(confirmed, "b") == minimum


def test_a_new_confirmation_is_gossiped_again():
    node = make_node("a")
    teach(node, "b", "c", "d", "e")
    node.step("c", Gossip((Suspect("b", 0, "c"),)))
    node.step("d", Gossip((Suspect("b", 0, "d"),)))
    node.step("e", Ping(1))
    ((_, ack),) = node.ready().messages
    assert Suspect("b", 0, "d") in ack.updates


def test_a_suspected_node_refutes_with_a_higher_incarnation():
    node = make_node("a")
    node.step("b", Ping(7, (Suspect("a", 0, "b"),)))
    assert node.incarnation == 1
    assert node.awareness == 1  # being suspected hints at our own slowness
    ((to, ack),) = node.ready().messages
    assert to == "b" and ack.seq == 7 and Alive("a", 1) in ack.updates


def test_old_accusations_are_not_refuted_again():
    node = make_node("a", incarnation=5)
    node.step("b", Gossip((Suspect("a", 4, "b"), Dead("a", 3, "b"))))
    assert node.incarnation == 5


def test_a_node_declared_dead_refutes_without_restarting():
    net = Net(["a", "b", "c"])
    net.settle()
    net.cut = {(x, "c") for x in "ab"} | {("c", x) for x in "ab"}
    net.tick(400)
    assert net.state("a", "c") is MemberState.DEAD and net.state("b", "c") is MemberState.DEAD
    net.cut = set()
    net.tick(TIMINGS.push_pull_interval_ticks + 50)  # at worst one push-pull period
    assert net.all_alive()
    assert net.nodes["a"].incarnation_of("c") == net.nodes["c"].incarnation >= 1
    assert ("a", EventKind.JOIN, "c") in {(o, e.kind, e.member) for o, e in net.events}


def test_an_alive_with_a_higher_incarnation_clears_a_suspicion():
    node = make_node("a")
    teach(node, "b", "c")
    node.step("c", Gossip((Suspect("b", 0, "c"),)))
    node.step("b", Gossip((Alive("b", 0),)))  # not newer: ignored
    assert node.state_of("b") is MemberState.SUSPECT
    node.step("b", Gossip((Alive("b", 1),)))
    assert node.state_of("b") is MemberState.ALIVE
    assert events(node)[-1] == (EventKind.ALIVE, "b", 1)


def test_stale_updates_are_ignored():
    node = make_node("a")
    teach(node, "b", incarnation=3)
    node.step("c", Gossip((Suspect("b", 2, "c"), Dead("b", 1, "c"), Left("b", 2), Alive("b", 2))))
    assert node.state_of("b") is MemberState.ALIVE and node.incarnation_of("b") == 3


def test_a_stale_accusation_gets_a_correction_back():
    node = make_node("a")
    teach(node, "b", incarnation=3)
    node.step("c", Gossip((Suspect("b", 2, "c"),)))
    assert node.ready().messages == (("c", Gossip((Alive("b", 3),))),)


def test_the_buddy_system_tells_a_suspect_at_once():
    node = make_node("a")
    teach(node, "b")
    node.step("c", Gossip((Suspect("b", 0, "c"),)))
    node.join([])
    _, ping = tick_until(node, of_type(Ping, to="b"))
    assert ping.updates[0] == Suspect("b", 0, "a")
    classic = make_node("a", timings=CLASSIC)
    teach(classic, "b")
    classic.step("c", Gossip((Suspect("b", 0, "c"),)))
    classic.join([])
    _, ping = tick_until(classic, of_type(Ping, to="b"))
    assert ping.updates == () or ping.updates[0] != Suspect("b", 0, "a")


def test_a_dead_member_coming_back_is_a_join_and_is_probed_again():
    node = make_node("a")
    teach(node, "b")
    node.step("c", Gossip((Dead("b", 0, "c"),)))
    node.ready()
    node.step("b", Gossip((Alive("b", 1),)))
    assert events(node) == [(EventKind.JOIN, "b", 1)]
    node.join([])
    tick_until(node, of_type(Ping, to="b"))


# ----- Lifeguard's health multiplier -----------------------------------------------------------


def fail_one_probe(node, nacks):
    """From a ping just sent to the next one: no ack, `nacks` helpers nack. Returns the helpers."""
    helpers = 0
    while True:
        node.tick()
        for to_id, message in node.ready().messages:
            if isinstance(message, Ping):  # the next period began: the verdict is in
                return helpers
            if isinstance(message, PingReq):
                helpers += 1
                if helpers <= nacks:
                    node.step(to_id, Nack(message.seq))


def test_missed_nacks_raise_awareness_and_nacks_spare_it():
    node = make_node("a")
    teach(node, "b", "c", "d", "e", "f")
    node.join([])
    tick_until(node, of_type(Ping))
    assert fail_one_probe(node, nacks=1) == 3
    assert node.awareness == 2  # two of the three helpers stayed silent
    fail_one_probe(node, nacks=3)
    assert node.awareness == 2


def test_a_successful_probe_lowers_awareness():
    node = make_node("a")
    teach(node, "b", "c")
    node.step("b", Ping(1, (Suspect("a", 0, "b"),)))  # refuting raises it to 1
    node.join([])
    target, ping = tick_until(node, of_type(Ping))
    node.step(target, Ack(ping.seq))
    assert node.awareness == 0


def test_awareness_stretches_the_probe_interval():
    node = make_node("a")
    teach(node, "b", "c")
    node.step("b", Gossip((Suspect("a", 0, "b"),)))
    node.step("b", Gossip((Suspect("a", 1, "b"),)))
    assert node.awareness == 2
    node.join([])
    pings = []
    for tick in range(1, 200):
        node.tick()
        for to_id, message in node.ready().messages:
            if isinstance(message, Ping):
                pings.append(tick)
                node.step(to_id, Ack(message.seq))  # success: awareness drops by one each time
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    interval = TIMINGS.probe_interval_ticks
    assert gaps[:3] == [3 * interval, 2 * interval, interval]


def test_classic_swim_keeps_awareness_at_zero():
    node = make_node("a", timings=CLASSIC)
    teach(node, "b", "c", "d")
    node.join([])
    tick_until(node, of_type(Ping))
    fail_one_probe(node, nacks=0)
    node.step("b", Gossip((Suspect("a", 0, "b"),)))
    assert node.awareness == 0


# ----- dissemination ---------------------------------------------------------------------------


def test_piggybacked_updates_fit_the_byte_budget():
    node = make_node("a", timings=replace(TIMINGS, max_piggyback_bytes=300))
    teach(node, *[f"member-{i:03d}" for i in range(100)])
    node.step("b", Ping(1))
    ((_, ack),) = node.ready().messages
    body = to_wire(ack)[1]
    assert 5 < len(ack.updates) and len(msgpack.packb(body["g"])) <= 300


def test_each_update_is_retransmitted_a_bounded_number_of_times():
    node = make_node("a")
    teach(node, "b", "c", "d")  # 4 members: limit 4 * ceil(log10(5)) = 4
    node.step("c", Gossip((Suspect("b", 0, "c"),)))
    node.ready()
    carried = 0
    for seq in range(20):
        node.step("d", Ping(seq))
        ((_, ack),) = node.ready().messages
        carried += Suspect("b", 0, "c") in ack.updates
    assert carried == TIMINGS.retransmit_mult * math.ceil(math.log10(4 + 1))


def test_gossip_rounds_push_pending_updates_to_a_few_members():
    node = make_node("a")
    teach(node, "b", "c", "d", "e", "f")
    node.join([])
    node.ready()
    to_id, gossip = tick_until(node, of_type(Gossip), max_ticks=TIMINGS.gossip_interval_ticks)
    assert gossip.updates


def test_push_pull_runs_periodically_with_a_member():
    node = make_node("a")
    teach(node, "b")
    node.join([])
    to_id, sync = tick_until(node, of_type(Sync), max_ticks=TIMINGS.push_pull_interval_ticks)
    assert to_id == "b" and sync.reply_wanted


def test_a_lonely_node_retries_its_seeds_every_probe_interval():
    node = make_node("a")
    node.join(["s1"])
    node.ready()
    to_id, _ = tick_until(node, of_type(Sync), max_ticks=TIMINGS.probe_interval_ticks)
    assert to_id == "s1"


# ----- leave, metadata, version ----------------------------------------------------------------


def test_graceful_leave_is_left_not_dead_everywhere():
    net = Net(["a", "b", "c", "d"])
    net.settle()
    net.nodes["d"].leave()
    net.tick(5)
    net.down.add("d")
    net.tick(600)
    for observer in "abc":
        assert net.state(observer, "d") is MemberState.LEFT
    kinds = {e.kind for o, e in net.events if e.member == "d" and o != "d"}
    assert EventKind.LEAVE in kinds and EventKind.DEAD not in kinds


def test_a_leaving_node_stops_probing_and_does_not_refute():
    node = make_node("a")
    teach(node, "b")
    node.join([])
    node.leave()
    assert node.has_left and node.state_of("a") is MemberState.LEFT
    node.step("b", Gossip((Dead("a", 5, "b"),)))
    assert node.incarnation == 1
    for _ in range(50):
        node.tick()
        assert not any(isinstance(m, Ping) for _, m in node.ready().messages)


def test_metadata_updates_spread_as_update_events():
    net = Net(["a", "b", "c"])
    net.settle()
    net.nodes["a"].update_metadata({"role": "voter", "weight": 3})
    net.tick(20)
    for observer in "bc":
        view = {m.member: m for m in net.nodes[observer].members()}["a"]
        assert view.metadata == {"role": "voter", "weight": 3} and view.incarnation == 1
    assert ("b", EventKind.UPDATE, "a") in {(o, e.kind, e.member) for o, e in net.events}


def test_oversized_metadata_is_refused():
    with pytest.raises(SwimError):
        make_node("a", metadata={"blob": "x" * 600})
    node = make_node("a")
    with pytest.raises(SwimError):
        node.update_metadata({"nested": {"no": 1}})
    assert node.incarnation == 0


def test_the_version_changes_with_every_change_of_the_list():
    node = make_node("a")
    versions = [node.version]
    for update in (Alive("b", 0), Suspect("b", 0, "c"), Alive("b", 1), Dead("b", 1, "c")):
        node.step("c", Gossip((update,)))
        versions.append(node.version)
    node.update_metadata({"zone": "z"})
    versions.append(node.version)
    assert versions == sorted(set(versions))
    node.step("c", Gossip((Dead("b", 1, "c"),)))  # no change, same version
    assert node.version == versions[-1]


def test_an_accuser_hears_the_refutation_directly():
    node = make_node("a")
    node.step("b", Gossip((Dead("a", 0, "b"),)))
    assert node.ready().messages == (("b", Gossip((Alive("a", 1),))),)


def test_a_peer_seeing_alive_whom_we_declared_dead_makes_us_tell_that_member():
    node = make_node("a")
    teach(node, "b", "c")
    node.step("x", Gossip((Dead("c", 0, "x"),)))
    node.ready()
    node.step("b", Sync((MemberRecord("c", 0, MemberState.ALIVE),)))
    assert node.ready().messages == (("c", Gossip((Dead("c", 0, "a"),))),)


def test_a_seed_still_unknown_gets_a_sync_every_probe_interval():
    """Members started together can split into groups whose first syncs were lost; the seed
    that stayed unknown is synced with until it answers, even though we have live peers."""
    node = make_node("a")
    node.join(["b", "c"])
    node.ready()  # the join syncs: lost
    teach(node, "b")  # b is known and alive; c never answered
    to_id, message = tick_until(
        node, of_type(Sync, "c"), max_ticks=3 * TIMINGS.probe_interval_ticks
    )
    assert to_id == "c" and message.reply_wanted
