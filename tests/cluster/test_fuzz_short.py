"""Issue 18's short fuzz run, in `make test`: the whole attacker of `tests.fuzz` (hostile frames of
every kind, floods, every socket type, garbage, churn, half-open connections, slow handshakes)
for 20 s against a live 3-node cluster under a write load. Every check of `tests.fuzz.run`
holds: pids kept, a write committed in every 5 s window, none failed, no election, every
acknowledged write reads back, peak RSS under the stated bound. `make fuzz` is the long run."""

import os

from tests.fuzz.run import run

DURATION_S = 20.0


def test_a_short_fuzz_run_kills_wedges_and_floods_no_node(tmp_path):
    seed = int(os.environ.get("CADDY_FUZZ_SEED", "1"))
    report = run(seed, DURATION_S, tmp_path)
    assert report.acknowledged > 0 and sum(report.sent.values()) > 0
    assert not report.problems, (report.summary(), report.reproducer())
