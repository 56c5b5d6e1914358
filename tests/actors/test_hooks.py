"""Failover hooks (actors.hooks): the event reaches the command on stdin and in CADDY_EVENT_*
variables; a hook that fails or hangs is counted and reported, and a hung one is killed."""

from __future__ import annotations

import json
import time

from actors.hooks import HookRunner
from caddy.config import FailoverSettings
from caddy.events import LeaderElected, LeadershipMoved, MemberStateChanged

STAMP = {"node": "n1", "seq": 4, "time": 1764660000.5}


def test_a_hook_gets_the_event_as_json_on_stdin_and_in_variables(tmp_path) -> None:
    out = tmp_path / "out"
    command = f'cat > {out}.json; echo "$CADDY_EVENT_KIND $CADDY_EVENT_LEADER $CADDY_NODE" > {out}'
    runner = HookRunner("n1", FailoverSettings(on_event=command))
    event = LeadershipMoved(**STAMP, leader="n2", reason="leader n1 is draining")
    runner(event)
    assert json.loads((tmp_path / "out.json").read_text()) == event.to_dict()
    assert out.read_text().split() == ["leadership.moved", "n2", "n1"]
    assert runner.status() == {"runs": 1, "failures": 0, "last_failure": None}


def test_on_role_change_runs_for_leadership_only_and_on_event_skips_gossip_updates(
    tmp_path,
) -> None:
    log = tmp_path / "log"
    runner = HookRunner(
        "n1",
        FailoverSettings(
            on_role_change=f"echo role $CADDY_EVENT_KIND >> {log}",
            on_event=f"echo event $CADDY_EVENT_KIND >> {log}",
        ),
    )
    assert runner.kinds() >= {"leader.elected", "leader.lost", "voter.removed"}
    assert "member.state" not in runner.kinds()
    runner(LeaderElected(**STAMP, term=2))
    runner(LeadershipMoved(**STAMP, leader="n2", reason="r"))
    runner(MemberStateChanged(**STAMP, member="n2", state="alive", incarnation=1, previous=None))
    assert log.read_text().splitlines() == [
        "role leader.elected",
        "event leader.elected",
        "event leadership.moved",
    ]


def test_a_failing_hook_is_counted_with_its_reason() -> None:
    runner = HookRunner("n1", FailoverSettings(on_event="echo 'no pager' >&2; exit 2"))
    runner(LeaderElected(**STAMP, term=2))
    assert runner.status() == {
        "runs": 1,
        "failures": 1,
        "last_failure": {
            "hook": "on_event",
            "event": "leader.elected",
            "seq": 4,
            "problem": "exit status 2: no pager",
        },
    }


def test_a_hook_that_hangs_is_killed_at_its_timeout() -> None:
    runner = HookRunner("n1", FailoverSettings(on_event="sleep 60", hook_timeout_ms=300))
    started = time.monotonic()
    runner(LeaderElected(**STAMP, term=2))
    assert time.monotonic() - started < 30  # not the 60 s it wanted
    failure = runner.status()["last_failure"]
    assert failure is not None and failure["problem"] == "still running after 0.3 s (killed)"


def test_no_hooks_configured() -> None:
    assert not HookRunner("n1", FailoverSettings()).configured
