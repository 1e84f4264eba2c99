"""bench/session_soak.py in miniature: its checks pass on a healthy
ensemble, and report a planted loss (an ephemeral deleted behind its
owner's back, a watch event dropped by a load generator)."""

from __future__ import annotations

import trio

from bench.session_soak import build_parser, run
from tests.cluster import Cluster


def _args(endpoints: str, duration: float, plant: str = "") -> object:
    return build_parser().parse_args([
        "--endpoints", endpoints, "--sessions", "30", "--watches-per-session", "3", "--procs", "2",
        "--nodes", "20", "--write-rate", "20", "--duration", str(duration), "--sample-interval", "1",
        "--churn-interval", "1", "--churn-fraction", "0.1", "--move-fraction", "0.1",
        "--session-timeout", "10", "--prefill-events", "0", "--plant", plant])


def test_session_soak_checks_pass_and_catch_planted_losses(tmp_path):
    samples: list[str] = []
    with Cluster(3, tmp_path, log_level="warning") as cluster:
        cluster.start()
        trio.run(cluster.wait_leader)

        clean = run(_args(cluster.endpoints, 5), emit=samples.append)
        assert clean["violations"] == {}, clean["violation_examples"]
        ld = clean["load"]
        assert ld["writes"] >= 50
        assert ld["events_delivered"] > 0 and ld["events_checked"] == ld["events_delivered"]
        assert ld["events_persistent"] > 0 and ld["events_oneshot"] > 0
        assert ld["sessions_closed_by_churn"] > 0 and ld["moves_to_other_server"] > 0
        assert clean["checks"]["ephemerals"] == {"expected": 30, "found": 30, "missing": 0, "left_over": 0,
                                                 "wrong_owner": 0}
        assert clean["checks"]["counts_live"]["watches_reported"] == 90
        assert clean["checks"]["ephemerals_closed"]["found"] == 0
        assert set(clean["memory"]["servers"]) == {"1", "2", "3"}
        assert all(m["rss_mb_first"] and m["rss_mb_last"] for m in clean["memory"]["servers"].values())
        assert samples and len(clean["samples"]) == len(samples)

        planted = run(_args(cluster.endpoints, 3, plant="ephemeral,event"), emit=samples.append)
        v = planted["violations"]
        assert v.get("ephemeral_missing") == 1
        missing = [e for e in planted["violation_examples"] if e["kind"] == "ephemeral_missing"]
        assert missing[0]["path"] == planted["planted"][0]
        # the dropped event shows as a gap in that watch's events, before its
        # session was churned, or at the end
        assert sum(v.get(k, 0) for k in ("missed_event", "missed_before_close", "watch_missed_final")) >= 1
        assert set(v) <= {"ephemeral_missing", "missed_event", "missed_before_close", "watch_missed_final"}
