"""The leader's session deadlines (coord.server.sessions.SessionTracker)."""

from coord.server.sessions import SessionTracker


def test_expiry_follows_touches_and_timeouts():
    t = SessionTracker()
    t.reset({1: 1000, 2: 3000}, now=0.0)
    assert t.expired(0.9, retry_after=5) == []
    t.touch(1, 0.9)  # deadline of 1 moves to 1.9
    assert t.expired(1.5, retry_after=5) == []
    assert t.expired(2.0, retry_after=5) == [1]
    assert t.expired(2.5, retry_after=5) == []  # already proposed: not again before retry_after
    assert t.expired(3.1, retry_after=5) == [2]
    assert t.expired(7.1, retry_after=5) == [1]  # proposed at 2.0, never applied: retried
    t.touch(2, 7.2)  # a late keepalive saves a session whose expiry was not applied
    assert t.expired(9.0, retry_after=5) == []
    assert t.expired(10.3, retry_after=5) == [2]


def test_reconcile_tracks_new_and_forgets_ended_sessions():
    t = SessionTracker()
    t.reset({1: 1000}, now=0.0)
    t.reconcile({1: 1000, 5: 2000}, now=0.5)
    assert len(t) == 2
    t.reconcile({5: 2000}, now=0.6)  # session 1 ended (closed or expired)
    assert len(t) == 1
    assert t.expired(2.0, retry_after=5) == []  # 1 is gone, 5 lives until 2.5
    assert t.expired(2.6, retry_after=5) == [5]
    t.touch(1, 3.0)  # touching an untracked session does nothing
    assert len(t) == 1


def test_many_touches_keep_the_heap_small():
    t = SessionTracker()
    t.reset({sid: 1000 for sid in range(1, 101)}, now=0.0)
    now = 0.0
    for _ in range(50):
        now += 0.5
        for sid in range(1, 101):
            t.touch(sid, now)
        assert t.expired(now, retry_after=5) == []
    assert len(t._heap) <= 100  # one entry per session, whatever the touch rate
    assert t.expired(now + 1.01, retry_after=5) == list(range(1, 101))
