"""Unit tests of the namespace state machine (coord/namespace)."""

from __future__ import annotations

import os

import cbor2
import pytest

from coord.namespace import NamespaceStateMachine, encode_command
from coord.namespace.commands import decode_command
from coord.raft.types import Entry, EntryKind
from coordclient.errors import BadArgumentsError, InvalidPathError, NoNodeError, UnimplementedError
from coordclient.protocol import STAT_FIELDS

T0 = 1_700_000_000_000


def field(stat: list, name: str) -> int:
    return stat[STAT_FIELDS.index(name)]


class NS:
    """A state machine fed with consecutive entries; records listener calls."""

    def __init__(self, **kw):
        self.sm = NamespaceStateMachine(**kw)
        self.calls: list[tuple[int, list]] = []
        self.sm.on_events = lambda zxid, evs: self.calls.append((zxid, list(evs)))
        self.t = T0

    def raw(self, data: bytes, kind: int = EntryKind.NORMAL):
        return self.sm.apply(Entry(1, self.sm.last_zxid + 1, kind, data))

    def do(self, op: str, *, sid: int = 0, seq: int = 0, t: int | None = None, **fields):
        self.t += 1
        return self.raw(encode_command(op, t=self.t if t is None else t, sid=sid, seq=seq, **fields))

    def ok(self, op: str, **kw):
        res = self.do(op, **kw)
        assert res["ok"], res
        return res["r"]

    def err(self, op: str, code: str, **kw):
        res = self.do(op, **kw)
        assert not res["ok"] and res["err"] == code, res
        return res

    def session(self, timeout_ms: int = 10_000, secret: bytes = b"s") -> int:
        return self.ok("session_open", timeout_ms=timeout_ms, secret=secret)["sid"]

    def stat(self, path: str) -> list:
        return self.sm.exists(path)


@pytest.fixture
def ns():
    return NS()


def state(ns: NS) -> dict:
    """The canonical dump, minus the sessions' "last seen" clocks (any command
    of a live session refreshes it, even one that fails)."""
    d = ns.sm.dump()
    d["sessions"] = {sid: v[:2] + v[3:] for sid, v in d["sessions"].items()}
    return d


def unchanged(ns: NS, op: str, code: str, **kw) -> dict:
    """Apply a failing command and check it changed nothing but last_zxid."""
    before = state(ns)
    calls = len(ns.calls)
    res = ns.err(op, code, **kw)
    after = state(ns)
    assert after["last_zxid"] == before["last_zxid"] + 1
    before["last_zxid"] = after["last_zxid"]
    assert after == before
    assert len(ns.calls) == calls
    assert ns.sm.events_since(before["last_zxid"] - 1) == []
    return res


# -- root and paths -------------------------------------------------------------
def test_root(ns):
    data, st = ns.sm.get("/")
    assert data == b"" and st == [0] * len(STAT_FIELDS)
    assert ns.sm.children("/") == []
    assert ns.sm.node_count == 1
    unchanged(ns, "create", "NodeExists", path="/")
    unchanged(ns, "delete", "BadArguments", path="/")
    unchanged(ns, "delete", "BadArguments", path="/", recursive=True)


@pytest.mark.parametrize("path", ["a", "/a/", "/a//b", "/a/./b", "/a/..", "/a\x00b", ""])
def test_invalid_paths(ns, path):
    ns.ok("create", path="/a")
    for op, kw in [("create", {}), ("set", {}), ("delete", {})]:
        res = unchanged(ns, op, "InvalidPath", path=path, **kw)
        assert res["path"] == path
    res = unchanged(ns, "multi", "InvalidPath", ops=[{"op": "check", "path": path}])
    assert res["index"] == 0
    for read in (ns.sm.get, ns.sm.exists, ns.sm.children, ns.sm.children_with_stats):
        with pytest.raises(InvalidPathError):
            read(path)


def test_reads_of_missing_nodes(ns):
    assert ns.sm.exists("/nope") is None
    for read in (ns.sm.get, ns.sm.children, ns.sm.children_with_stats):
        with pytest.raises(NoNodeError):
            read("/nope")


# -- create --------------------------------------------------------------------
def test_create_stat_and_parent(ns):
    r = ns.ok("create", path="/a", data=b"hello", t=T0 + 5)
    z = ns.sm.last_zxid
    assert r == {"path": "/a", "stat": [z, z, z, T0 + 5, T0 + 5, 0, 0, 0, 5, 0, 0]}
    assert ns.sm.get("/a") == (b"hello", r["stat"])
    root = ns.stat("/")
    assert (field(root, "cversion"), field(root, "num_children"), field(root, "pzxid")) == (1, 1, z)
    assert field(root, "mzxid") == 0 and field(root, "version") == 0
    assert ns.calls == [(z, [("created", "/a"), ("children", "/")])]
    assert ns.sm.events_since(z - 1) == [(z, "created", "/a"), (z, "children", "/")]
    ns.ok("create", path="/a/b")
    ns.ok("create", path="/a/c")
    assert ns.sm.children("/a") == ["b", "c"]
    assert [(n, field(s, "czxid")) for n, s in ns.sm.children_with_stats("/a")] == [("b", z + 1), ("c", z + 2)]
    assert ns.sm.node_count == 4


def test_create_errors(ns):
    unchanged(ns, "create", "NoNode", path="/x/y")
    ns.ok("create", path="/x")
    unchanged(ns, "create", "NodeExists", path="/x")
    res = ns.err("create", "NodeExists", path="/x")
    assert res["path"] == "/x" and "msg" in res


def test_create_parents(ns):
    r = ns.ok("create", path="/p/q/r", data=b"d", parents=True)
    z = ns.sm.last_zxid
    assert r["path"] == "/p/q/r"
    for p in ("/p", "/p/q", "/p/q/r"):
        st = ns.stat(p)
        assert field(st, "czxid") == z and field(st, "ephemeral_owner") == 0
    assert ns.sm.get("/p/q")[0] == b""
    assert field(ns.stat("/p"), "cversion") == 1
    assert ns.calls[-1] == (z, [("created", "/p"), ("children", "/"), ("created", "/p/q"), ("children", "/p"),
                                ("created", "/p/q/r"), ("children", "/p/q")])
    # existing target: nothing created on the way either
    unchanged(ns, "create", "NodeExists", path="/p/q/r", parents=True)
    ns.ok("create", path="/p/x/y", parents=True)
    assert ns.sm.children("/p") == ["q", "x"]


def test_too_large():
    ns = NS(max_data_bytes=4)
    ns.ok("create", path="/a", data=b"1234")
    unchanged(ns, "create", "TooLarge", path="/b", data=b"12345")
    unchanged(ns, "set", "TooLarge", path="/a", data=b"12345")
    unchanged(ns, "create", "TooLarge", path="/c/d", data=b"12345", parents=True)


def test_sequential(ns):
    ns.ok("create", path="/q")
    assert ns.ok("create", path="/q/n-", sq=True)["path"] == "/q/n-0000000000"
    assert ns.ok("create", path="/q/n-", sq=True)["path"] == "/q/n-0000000001"
    ns.ok("create", path="/q/plain")
    ns.ok("delete", path="/q/plain")
    # the counter is the parent's cversion: creates and deletes both count
    assert ns.ok("create", path="/q/", sq=True)["path"] == "/q/0000000004"
    assert ns.ok("create", path="/", sq=True)["path"] == "/0000000001"
    assert ns.ok("create", path="/s/t/x", sq=True, parents=True)["path"] == "/s/t/x0000000000"
    assert ns.sm.children("/q") == ["0000000004", "n-0000000000", "n-0000000001"]
    unchanged(ns, "create", "NoNode", path="/none/x", sq=True)


def test_ephemerals(ns):
    unchanged(ns, "create", "SessionExpired", path="/e", eph=True)  # no session
    unchanged(ns, "create", "SessionExpired", path="/e", eph=True, sid=999)
    sid = ns.session()
    r = ns.ok("create", path="/e", eph=True, sid=sid)
    assert field(r["stat"], "ephemeral_owner") == sid
    assert ns.sm.ephemerals_of(sid) == ["/e"]
    unchanged(ns, "create", "NoChildrenForEphemerals", path="/e/c", sid=sid)
    unchanged(ns, "create", "NoChildrenForEphemerals", path="/e/c/d", parents=True, sid=sid)
    unchanged(ns, "create", "NoChildrenForEphemerals", path="/e/", sq=True, sid=sid)
    # a persistent node created by a session has no owner
    assert field(ns.ok("create", path="/p", sid=sid)["stat"], "ephemeral_owner") == 0
    ns.ok("delete", path="/e")  # anyone may delete it
    assert ns.sm.ephemerals_of(sid) == []
    assert ns.sm.ephemerals_of(12345) == []


# -- set -------------------------------------------------------------------------
def test_set(ns):
    c = ns.ok("create", path="/a", data=b"x")["stat"]
    r = ns.ok("set", path="/a", data=b"yy", t=T0 + 100)
    z = ns.sm.last_zxid
    assert r["stat"] == [c[0], z, c[2], c[3], T0 + 100, 1, 0, 0, 2, 0, 0]
    assert ns.calls[-1] == (z, [("changed", "/a")])
    ns.ok("set", path="/a", data=b"z", version=1)
    unchanged(ns, "set", "BadVersion", path="/a", data=b"w", version=1)
    unchanged(ns, "set", "NoNode", path="/b", data=b"w")
    assert ns.sm.get("/a")[0] == b"z" and field(ns.stat("/a"), "version") == 2
    assert field(ns.ok("set", path="/", data=b"r")["stat"], "version") == 1  # the root has data too


# -- delete ----------------------------------------------------------------------
def test_delete(ns):
    ns.ok("create", path="/a")
    ns.ok("create", path="/a/b")
    ns.ok("set", path="/a/b", data=b"1")
    unchanged(ns, "delete", "NoNode", path="/zz")
    unchanged(ns, "delete", "NotEmpty", path="/a")
    unchanged(ns, "delete", "BadVersion", path="/a/b", version=0)
    ns.ok("delete", path="/a/b", version=1)
    z = ns.sm.last_zxid
    a = ns.stat("/a")
    assert (field(a, "cversion"), field(a, "num_children"), field(a, "pzxid")) == (2, 0, z)
    assert ns.calls[-1] == (z, [("deleted", "/a/b"), ("children", "/a")])
    ns.ok("delete", path="/a", version=-1)
    assert ns.sm.node_count == 1


def test_recursive_delete(ns):
    sid = ns.session()
    for p in ("/t", "/t/a", "/t/a/x", "/t/b", "/u"):
        ns.ok("create", path=p)
    ns.ok("create", path="/t/a/e", eph=True, sid=sid)
    unchanged(ns, "delete", "BadVersion", path="/t", version=3, recursive=True)
    assert ns.ok("delete", path="/t", recursive=True) == {}
    z = ns.sm.last_zxid
    assert ns.sm.children("/") == ["u"]
    assert ns.sm.ephemerals_of(sid) == []
    zxid, evs = ns.calls[-1]
    assert zxid == z
    deleted = [p for typ, p in evs if typ == "deleted"]
    assert sorted(deleted) == ["/t", "/t/a", "/t/a/e", "/t/a/x", "/t/b"]
    for p in deleted:  # children first
        assert all(deleted.index(q) < deleted.index(p) for q in deleted if q.startswith(p + "/"))
    assert evs[-2:] == [("deleted", "/t"), ("children", "/")]
    assert len(evs) == 10 and all(e.zxid == z for e in ns.sm.events_since(z - 1))
    root = ns.stat("/")
    assert field(root, "pzxid") == z and field(root, "num_children") == 1
    ns.ok("delete", path="/u", recursive=True)  # a leaf, recursive or not


# -- multi -----------------------------------------------------------------------
def test_multi_success_sees_earlier_ops(ns):
    r = ns.ok("multi", ops=[
        {"op": "create", "path": "/m", "data": b"1"},
        {"op": "create", "path": "/m/", "sq": True},
        {"op": "set", "path": "/m", "data": b"2", "version": 0},
        {"op": "check", "path": "/m", "version": 1},
        {"op": "delete", "path": "/m/0000000000"},
    ])
    z = ns.sm.last_zxid
    res = r["results"]
    assert res[0]["path"] == "/m" and res[1]["path"] == "/m/0000000000"
    assert field(res[2]["stat"], "version") == 1 and res[3] == {} and res[4] == {}
    assert ns.sm.get("/m")[0] == b"2" and ns.sm.children("/m") == []
    assert field(ns.stat("/m"), "cversion") == 2
    assert ns.calls == [(z, [("created", "/m"), ("children", "/"), ("created", "/m/0000000000"),
                             ("children", "/m"), ("changed", "/m"), ("deleted", "/m/0000000000"),
                             ("children", "/m")])]
    assert ns.ok("multi", ops=[]) == {"results": []}


def test_multi_failure_changes_nothing(ns):
    sid = ns.session()
    ns.ok("create", path="/a", data=b"x")
    ns.ok("create", path="/d")
    res = unchanged(ns, "multi", "BadVersion", sid=sid, ops=[
        {"op": "create", "path": "/b", "eph": True},
        {"op": "set", "path": "/a", "data": b"y"},
        {"op": "delete", "path": "/d"},
        {"op": "create", "path": "/q/", "sq": True, "parents": True},
        {"op": "check", "path": "/a", "version": 0},  # /a is at version 1 by now
        {"op": "create", "path": "/c"},
    ])
    assert res["index"] == 4 and res["path"] == "/a"
    assert [r["err"] for r in res["results"]] == ["RuntimeInconsistency"] * 4 + ["BadVersion", "RuntimeInconsistency"]
    assert ns.sm.ephemerals_of(sid) == []
    # failing ops of every kind
    unchanged(ns, "multi", "NodeExists", ops=[{"op": "create", "path": "/n"}, {"op": "create", "path": "/n"}])
    unchanged(ns, "multi", "NotEmpty", ops=[{"op": "create", "path": "/d/x"}, {"op": "delete", "path": "/d"}])
    unchanged(ns, "multi", "NoNode", ops=[{"op": "delete", "path": "/d"}, {"op": "set", "path": "/d"}])
    res = unchanged(ns, "multi", "NoNode", ops=[{"op": "delete", "path": "/d"}, {"op": "create", "path": "/d/y"}])
    assert res["index"] == 1
    # a multi's recursive delete undone in full
    ns.ok("create", path="/d/k/l", parents=True)
    unchanged(ns, "multi", "NoNode", ops=[{"op": "delete", "path": "/d", "recursive": True},
                                         {"op": "check", "path": "/d"}])


def test_multi_malformed_ops(ns):
    for ops, code, index in [
        ([{"op": "create", "path": "/a"}, {"op": "frob"}], "Unimplemented", 1),
        ([{"op": "multi", "ops": []}], "BadArguments", 0),
        ([{"op": "session_close"}], "BadArguments", 0),
        ([{"op": "check", "path": "/", "version": "1"}], "BadArguments", 0),
        ([{"op": "check", "path": "/", "t": 1}], "BadArguments", 0),
        ([{"op": "check", "path": "/"}, 7], "BadArguments", 1),
    ]:
        res = unchanged_raw(ns, {"op": "multi", "t": 1, "sid": 0, "seq": 0, "ops": ops}, code)
        assert res["index"] == index and len(res["results"]) == len(ops)


# -- exactly-once ----------------------------------------------------------------------
def test_dedup(ns):
    sid = ns.session()
    first = ns.ok("create", path="/s", sq=True, sid=sid, seq=1)
    z = ns.sm.last_zxid
    before = ns.sm.dump()
    again = ns.do("create", path="/s", sq=True, sid=sid, seq=1)
    assert again == {"ok": True, "r": first, "zxid": z}  # the original's zxid, not the retry's
    after = ns.sm.dump()
    assert after["nodes"] == before["nodes"] and ns.sm.children("/") == [first["path"][1:]]
    assert ns.sm.events_since(z) == [] and len(ns.calls) == 1
    # errors are remembered too: the retry gets the original answer even if the state changed
    ns.err("delete", "NoNode", path="/x", sid=sid, seq=2)
    ns.ok("create", path="/x", sid=sid, seq=3)
    assert ns.err("delete", "NoNode", path="/x", sid=sid, seq=2)["path"] == "/x"
    assert ns.sm.exists("/x") is not None
    # the same seq of another session is another request
    other = ns.session()
    ns.ok("create", path="/y", sid=other, seq=1)
    # seq 0 never deduplicates
    ns.ok("set", path="/x", data=b"1", sid=sid, seq=0)
    ns.ok("set", path="/x", data=b"2", sid=sid, seq=0)
    assert field(ns.stat("/x"), "version") == 2


def test_dedup_window():
    ns = NS(dedup_window=3)
    sid = ns.session()
    for seq in (1, 5, 3, 4):
        ns.ok("create", path=f"/n{seq}", sid=sid, seq=seq)
    # seq 1 was forgotten (the smallest): a retry can no longer be told apart
    unchanged(ns, "create", "BadArguments", path="/n1", sid=sid, seq=1)
    unchanged(ns, "create", "BadArguments", path="/n0", sid=sid, seq=1)
    assert ns.do("create", path="/n3", sid=sid, seq=3)["ok"]  # still remembered
    ns.ok("create", path="/n2", sid=sid, seq=2)  # never seen, above the forgotten one
    assert sorted(dict(ns.sm.dump()["sessions"][sid][5])) == [3, 4, 5]
    unchanged(ns, "create", "BadArguments", path="/n2", sid=sid, seq=2)


def test_dedup_memory_is_bounded_in_bytes(monkeypatch):
    """A session remembers results up to DEDUP_BYTES (encoded), the newest
    always: 1,024 results of multis of 1,000 creates once took ~450 bytes
    per created node for as long as the session lived."""
    from coord.namespace import sessions

    monkeypatch.setattr(sessions, "DEDUP_BYTES", 1_000)
    ns = NS()
    sid = ns.session()
    for seq in range(1, 5):  # each result ~2 kB encoded: only the newest is kept
        ns.ok("multi", sid=sid, seq=seq, ops=[{"op": "create", "path": f"/m{seq}-{i}"} for i in range(40)])
    remembered = dict(ns.sm.dump()["sessions"][sid][5])
    assert sorted(remembered) == [4]
    unchanged(ns, "multi", "BadArguments", sid=sid, seq=3, ops=[{"op": "create", "path": "/m3-0"}])
    again = ns.do("multi", sid=sid, seq=4, ops=[])
    assert again == remembered[4] and len(again["r"]["results"]) == 40
    for seq in range(5, 25):  # small results (~60 bytes): many fit
        ns.ok("create", path=f"/s{seq}", sid=sid, seq=seq)
    assert 10 < len(ns.sm.dump()["sessions"][sid][5]) < 20
    data = ns.sm.snapshot()
    other = NamespaceStateMachine()
    other.restore(data)
    assert other.dump() == ns.sm.dump() and other.snapshot() == data


def test_writes_need_a_live_session(ns):
    ns.ok("create", path="/a")
    for op, kw in [("create", {"path": "/b"}), ("set", {"path": "/a"}), ("delete", {"path": "/a"}),
                   ("multi", {"ops": []}), ("session_close", {})]:
        unchanged(ns, op, "SessionExpired", sid=77, seq=1, **kw)


# -- sessions ----------------------------------------------------------------------
def test_session_open_and_close(ns):
    sid = ns.session(timeout_ms=5000, secret=b"k")
    assert sid == ns.sm.last_zxid
    assert ns.sm.sessions() == {sid: (5000, b"k")} and ns.sm.session_exists(sid)
    assert ns.sm.session_last_t(sid) == ns.t
    ns.ok("create", path="/e1", eph=True, sid=sid, t=T0 + 999)
    ns.ok("create", path="/e2", eph=True, sid=sid)
    ns.ok("create", path="/p", sid=sid)
    assert ns.sm.session_last_t(sid) == ns.t
    ns.calls.clear()
    assert ns.ok("session_close", sid=sid) == {}
    z = ns.sm.last_zxid
    assert not ns.sm.session_exists(sid) and ns.sm.sessions() == {}
    assert ns.sm.children("/") == ["p"]
    assert ns.calls == [(z, [("deleted", "/e1"), ("children", "/"), ("deleted", "/e2"), ("children", "/")])]
    unchanged(ns, "session_close", "SessionExpired", sid=sid)
    unchanged(ns, "session_close", "SessionExpired")
    unchanged(ns, "create", "SessionExpired", path="/e3", eph=True, sid=sid)


def test_session_expire(ns):
    a, b, c = ns.session(), ns.session(), ns.session()
    ns.ok("create", path="/d")
    ns.ok("create", path="/d/a", eph=True, sid=a)
    ns.ok("create", path="/d/b", eph=True, sid=b)
    ns.ok("create", path="/c", eph=True, sid=c)
    ns.calls.clear()
    r = ns.ok("session_expire", sids=[b, 424242, a, b])
    z = ns.sm.last_zxid
    assert r == {"expired": [b, a]}
    assert sorted(ns.sm.sessions()) == [c] and ns.sm.children("/d") == []
    assert ns.calls == [(z, [("deleted", "/d/b"), ("children", "/d"), ("deleted", "/d/a"), ("children", "/d")])]
    assert field(ns.stat("/d"), "pzxid") == z and field(ns.stat("/d"), "cversion") == 4
    # nothing left to expire: no change, no events
    before = len(ns.calls)
    assert ns.ok("session_expire", sids=[a, b]) == {"expired": []}
    assert len(ns.calls) == before and ns.sm.events_since(z) == []


# -- events ----------------------------------------------------------------------
def test_event_history_bounds():
    ns = NS(history_size=5)
    ns.ok("create", path="/a")  # zxid 1: 2 events
    ns.ok("create", path="/b")  # zxid 2: 2 events
    ns.ok("set", path="/a")  # zxid 3: 1 event
    assert [e.zxid for e in ns.sm.events_since(0)] == [1, 1, 2, 2, 3]
    ns.ok("set", path="/b")  # zxid 4: evicts one of zxid 1's events
    assert ns.sm.events_since(0) is None
    assert [e.zxid for e in ns.sm.events_since(1)] == [2, 2, 3, 4]
    assert ns.sm.events_since(4) == [] and ns.sm.events_since(99) == []
    ns.do("set", path="/zz")  # a failure: no events, zxid advances
    assert ns.sm.events_since(4) == []


def test_event_history_bounded_in_bytes():
    """Issue 11: the history's bound was a count of events, and an event's
    memory depends on the client (a 1,024-character path, one command per
    event): 20,000 such events held ~24 MB live.  Now ``max_bytes`` bounds
    what it holds, measured (tracemalloc), whatever the paths."""
    import gc
    import tracemalloc

    from coord.namespace.history import EventHistory

    long_path = "/" + "p" * 1000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        h = EventHistory(20_000, max_bytes=2 << 20)
        for z in range(1, 20_001):
            h.add(z, [("changed", long_path[:-5] + f"{z % 10_000:05d}")])  # a new str each, as decoded commands are
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < (2 << 20) * 1.1, f"{held} bytes held"
    assert h.held <= 2 << 20 and 0 < h.count < 20_000
    # what is kept is exact: everything after the floor, nothing below
    assert h.since(h.floor - 1) is None
    evs = h.since(h.floor)
    assert [e.zxid for e in evs] == list(range(h.floor + 1, 20_001))
    assert evs[-1].type == "changed" and evs[-1].path == long_path[:-5] + f"{20_000 % 10_000:05d}"


def test_event_history_per_event_cost():
    """Issue 11: one write per command (what a writer does) cost ~270 bytes
    an event held as (zxid, [(type, path)]), twice what the same events
    cost inside a multi, so a history filled by multis grew for half an
    hour under single writes.  Packed, a short path's event is < 180."""
    import gc
    import tracemalloc

    from coord.namespace.state import NamespaceStateMachine

    sm = NamespaceStateMachine(history_size=10_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for z in range(1, 10_001):
            sm._history.add(1 << 40 | z, [("changed", "/soak/w/" + f"{z:05d}")])
        per_event = (tracemalloc.get_traced_memory()[0] - before) / 10_000
    finally:
        tracemalloc.stop()
    assert per_event < 180, f"{per_event:.0f} bytes an event"


def test_event_history_round_trips_every_event_type():
    from coord.namespace.history import EventHistory

    h = EventHistory(100)
    evs = [("created", "/a/b"), ("children", "/a"), ("changed", "/a/b"), ("deleted", "/a/b"), ("children", "/a"),
           ("changed", "/"), ("created", "/\u00e9t\u00e9/\U0001f600")]
    h.add(7, evs[:1])
    h.add(9, evs[1:])
    assert [(e.zxid, e.type, e.path) for e in h.since(0)] == [(7, *evs[0])] + [(9, *e) for e in evs[1:]]
    assert [(e.type, e.path) for e in h.since(7)] == evs[1:] and h.since(9) == []
    h.reset(20)
    assert h.since(19) is None and h.since(20) == [] and h.held == 0 and h.count == 0


def test_listener_failure_does_not_fail_the_write(ns):
    def boom(zxid, events):
        raise RuntimeError("listener bug")
    ns.sm.on_events = boom
    assert ns.do("create", path="/a")["ok"]
    assert ns.sm.exists("/a") is not None


# -- malformed commands ---------------------------------------------------------------
def unchanged_raw(ns: NS, cmd, code: str) -> dict:
    before = ns.sm.dump()
    data = cmd if isinstance(cmd, bytes) else cbor2.dumps(cmd)
    res = ns.raw(data)
    assert res["ok"] is False and res["err"] == code, res
    after = ns.sm.dump()
    assert after["last_zxid"] == before["last_zxid"] + 1
    before["last_zxid"] = after["last_zxid"]
    assert after == before and not ns.calls
    return res


@pytest.mark.parametrize("cmd,code", [
    (b"\xff\x00garbage", "BadArguments"),
    (b"", "BadArguments"),
    ([1, 2], "BadArguments"),
    ({"t": 1}, "BadArguments"),
    ({"op": 5, "path": "/a"}, "BadArguments"),
    ({"op": "frob", "path": "/a"}, "Unimplemented"),
    ({"op": "create"}, "BadArguments"),
    ({"op": "create", "path": "/a", "data": "text"}, "BadArguments"),
    ({"op": "create", "path": "/a", "eph": 1}, "BadArguments"),
    ({"op": "create", "path": "/a", "colour": "red"}, "BadArguments"),
    ({"op": "create", "path": "/a", "t": 1.5}, "BadArguments"),
    ({"op": "create", "path": "/a", "sid": -1}, "BadArguments"),
    ({"op": "create", "path": "/a", "seq": True}, "BadArguments"),
    ({"op": "delete", "path": "/a", "version": -2}, "BadArguments"),
    ({"op": "set", "path": "/a", "version": False}, "BadArguments"),
    ({"op": "multi", "ops": {}}, "BadArguments"),
    ({"op": "session_open", "timeout_ms": 0}, "BadArguments"),
    ({"op": "session_open"}, "BadArguments"),
    ({"op": "session_expire", "sids": [1, "2"]}, "BadArguments"),
    ({"op": "session_expire", "sids": [0]}, "BadArguments"),
])
def test_bad_commands_change_nothing(ns, cmd, code):
    unchanged_raw(ns, cmd, code)


def test_encode_command_checks():
    with pytest.raises(BadArgumentsError):
        encode_command("create", path="/a", data="str")
    with pytest.raises(UnimplementedError):
        encode_command("frob")
    data = encode_command("multi", t=5, sid=3, seq=9, ops=[{"op": "create", "path": "/a", "data": bytearray(b"x")}])
    cmd = decode_command(data)
    assert (cmd.op, cmd.t, cmd.sid, cmd.seq, cmd.body.ops[0].data) == ("multi", 5, 3, 9, b"x")
    from coordclient.protocol import Op
    assert decode_command(encode_command(Op.SET, path="/a")).op == "set"
    assert cbor2.loads(encode_command(Op.SET, path="/a"))["op"] == "set"


def test_non_command_entries_advance_zxid(ns):
    assert ns.raw(b"", kind=EntryKind.NOOP) is None
    assert ns.sm.last_zxid == 1
    ns.sm.note_zxid(7)
    ns.sm.note_zxid(3)
    assert ns.sm.last_zxid == 7
    ns.ok("create", path="/a")
    assert field(ns.stat("/a"), "czxid") == 8


# -- snapshots ----------------------------------------------------------------------
def populate(ns: NS) -> tuple[int, int]:
    a, b = ns.session(secret=b"a"), ns.session(timeout_ms=3000, secret=b"b")
    ns.ok("create", path="/x/y/z", data=b"zz", parents=True, sid=a, seq=1)
    ns.ok("create", path="/x/", sq=True, sid=a, seq=2)
    ns.ok("create", path="/x/e", eph=True, sid=a, seq=3)
    ns.ok("create", path="/f", eph=True, sid=b, seq=1)
    ns.ok("set", path="/x/y", data=b"\x00\xff", sid=b, seq=2)
    ns.err("delete", "NotEmpty", path="/x", sid=b, seq=3)
    ns.ok("delete", path="/x/y/z")
    ns.ok("create", path="/big", data=bytes(range(256)) * 4)
    return a, b


def test_snapshot_roundtrip(ns):
    a, b = populate(ns)
    data = ns.sm.snapshot()
    other = NamespaceStateMachine()
    other.restore(data)
    assert other.dump() == ns.sm.dump()
    assert other.snapshot() == data
    assert other.ephemerals_of(a) == ["/x/e"] and other.ephemerals_of(b) == ["/f"]
    # both continue identically, including deduplication
    twin = NS()
    twin.sm = other
    twin.t = ns.t
    for m in (ns, twin):
        assert m.do("create", path="/x/", sq=True, sid=a, seq=2)["r"]["path"] == "/x/0000000001"
        m.ok("create", path="/x/", sq=True, sid=a, seq=4)
        m.ok("session_expire", sids=[a])
    assert other.dump() == ns.sm.dump()


def test_restore_resets_history_and_replaces_state(ns):
    populate(ns)
    z = ns.sm.last_zxid
    data = ns.sm.snapshot()
    ns.ok("create", path="/later")
    ns.sm.restore(data)
    assert ns.sm.last_zxid == z and ns.sm.exists("/later") is None
    assert ns.sm.events_since(z - 1) is None and ns.sm.events_since(0) is None
    assert ns.sm.events_since(z) == []
    ns.ok("create", path="/after")
    assert [e.path for e in ns.sm.events_since(z)] == ["/after", "/"]
    ns.sm.restore(b"")
    assert ns.sm.node_count == 1 and ns.sm.sessions() == {} and ns.sm.last_zxid == 0


@pytest.mark.parametrize("bad", [b"\xff", cbor2.dumps([1]), cbor2.dumps({"format": "other"}),
                                 cbor2.dumps({"format": "coord-namespace/1", "zxid": 3})])
def test_restore_rejects_damage(ns, bad):
    populate(ns)
    before = ns.sm.dump()
    with pytest.raises(ValueError):
        ns.sm.restore(bad)
    assert ns.sm.dump() == before


def _fixture(name: str) -> dict:
    """A snapshot of an older format and the dump of its state (tests/data/make_namespace_snapshots.py)."""
    with open(os.path.join(os.path.dirname(__file__), "data", name), "rb") as f:
        return cbor2.loads(f.read())


def _plain(x):
    """A dump as it reads back from CBOR (tuples become lists)."""
    return cbor2.loads(cbor2.dumps(x))


@pytest.mark.parametrize("name", ["namespace-v1.cbor", "namespace-v2.cbor"])
def test_old_snapshot_formats_restore_and_carry_on(name):
    """Snapshots of formats /1 and /2 (made by the code of their time) restore
    to the state they were taken from, are written again as /3, and the
    state machine goes on from them."""
    fx = _fixture(name)
    sm = NamespaceStateMachine()
    sm.restore(fx["snapshot"])
    assert _plain(sm.dump()) == fx["dump"]
    again = NamespaceStateMachine()
    again.restore(sm.snapshot())
    assert cbor2.loads(sm.snapshot())["format"] == "coord-namespace/3"
    assert again.dump() == sm.dump()
    a = min(sm.sessions())
    assert again.ephemerals_of(a) == ["/x/e"]
    twin = NS()
    twin.sm, twin.t = again, T0 + 1000
    twin.ok("create", path="/x/", sq=True, sid=a, seq=20)
    twin.ok("session_expire", sids=[a])
    assert twin.sm.exists("/x/e") is None and twin.sm.get("/big")[0] == bytes(range(256)) * 4


def test_restore_rejects_inconsistent_columns():
    """Format /2's columns: a node without a parent, an ephemeral without a
    session, a short int column."""
    d = cbor2.loads(_fixture("namespace-v2.cbor")["snapshot"])
    orphan = dict(d, paths=d["paths"] + ["/no/parent"], data=d["data"] + [b""], ints=d["ints"] + [0] * 8)
    unowned = dict(d, paths=d["paths"] + ["/eph"], data=d["data"] + [b""], ints=d["ints"] + [1, 1, 1, 0, 0, 0, 0, 99])
    short = dict(d, ints=d["ints"][:-1])
    doubled = dict(d, paths=d["paths"] + ["/x"], data=d["data"] + [b""], ints=d["ints"] + [0] * 8)
    for bad in (orphan, unowned, short, doubled):
        with pytest.raises(ValueError):
            NamespaceStateMachine().restore(cbor2.dumps(bad))


def split_snapshot(data: bytes) -> tuple[dict, list]:
    """Format /3: the header and the pieces of children."""
    import io

    decoder = cbor2.CBORDecoder(io.BytesIO(data))
    header = decoder.decode()
    return header, [decoder.decode() for _ in range(header["pieces"])]


def join_snapshot(header: dict, pieces: list) -> bytes:
    return cbor2.dumps(dict(header, pieces=len(pieces))) + b"".join(map(cbor2.dumps, pieces))


def test_restore_rejects_inconsistent_records(ns):
    """Format /3: children of a missing node, a name twice (in one row or
    across pieces), a name with a slash, a short record, a piece that is not
    a list of rows, fewer pieces than announced or data after the last, a
    blob for a node that does not hold one, ACL counts that do not add up,
    an ephemeral that does not exist."""
    populate(ns)
    data = ns.sm.snapshot()
    d, pieces = split_snapshot(data)
    rec = pieces[0][0][2][0]
    top = pieces[0][0][1][0]  # a child of the root

    def with_piece(*rows):
        return join_snapshot(d, pieces + [list(rows)])

    bads = [
        with_piece(["/no/such", ["k"], [rec]]),
        with_piece(["/f", ["k", "k"], [rec, rec]]),
        with_piece(["", [top], [rec]]),
        with_piece(["/f", ["a/b"], [rec]]),
        with_piece(["/f", ["k"], [rec[:10]]]),
        with_piece(["/f", ["k"], ["text"]]),
        join_snapshot(d, pieces + ["not rows"]),
        join_snapshot(d, pieces) + b"\x00",
        join_snapshot(d, pieces)[:-3],
        cbor2.dumps(dict(d, pieces=len(pieces) + 1)) + b"".join(map(cbor2.dumps, pieces)),
        join_snapshot(dict(d, blobs=d["blobs"] + [["/x", b"data"]]), pieces),
        join_snapshot(dict(d, acls=[[[d["acls"][0][0][0], d["acls"][0][0][1] + 1]], []]), pieces),
        join_snapshot(dict(d, sessions=[row[:7] + [["/nowhere"]] for row in d["sessions"]]), pieces),
        join_snapshot(dict(d, root=b"short"), pieces),
    ]
    for bad in bads:
        before = ns.sm.dump()
        with pytest.raises(ValueError):
            ns.sm.restore(bad)
        assert ns.sm.dump() == before
    assert join_snapshot(d, pieces) == data
    NamespaceStateMachine().restore(memoryview(data))  # the undamaged one restores, from a memoryview too


def test_restore_in_steps_of_bounded_work():
    """restore_steps decodes one piece (~4,096 nodes) per step and changes
    the state only at its end: reads in between see the old state."""
    from coord.namespace.tree import PIECE

    src = NS()
    src.ok("create", path="/p")
    for b in range(0, 10_000, 1_000):
        src.ok("multi", ops=[{"op": "create", "path": f"/p/{i:05d}"} for i in range(b, b + 1_000)])
    data = src.sm.snapshot()
    dst = NS()
    dst.ok("create", path="/old")
    steps = 0
    for _ in dst.sm.restore_steps(data):
        steps += 1
        assert dst.sm.exists("/old") is not None and dst.sm.exists("/p") is None
    assert steps >= 10_002 // PIECE + 1
    assert dst.sm.dump() == src.sm.dump() and dst.sm.snapshot() == data


def test_determinism_across_replicas():
    """Two replicas fed the same entries end byte-identical."""
    x, y = NS(), NS()
    for m in (x, y):
        populate(m)
    assert x.sm.snapshot() == y.sm.snapshot()
    assert x.calls == y.calls


def test_old_and_new_entry_formats_apply_the_same():
    """Logs written before commands travelled as bytes (version 1: the map
    with "t" in it) apply exactly as version 2 entries (header + the bytes
    the receiving server encoded) do."""
    from coord.namespace.commands import Command, SessionOpen, encode, entry_data, parse_request

    old, new = NamespaceStateMachine(), NamespaceStateMachine()
    reqs = [
        {"op": "create", "path": "/a", "data": b"1", "seq": 1},
        {"op": "multi", "ops": [{"op": "check", "path": "/a", "version": 0},
                                {"op": "set", "path": "/a", "data": b"2"},
                                {"op": "create", "path": "/a/b", "sq": True}], "seq": 2},
        {"op": "delete", "path": "/a", "recursive": True, "seq": 3},
    ]
    sid_old = old.apply(Entry(1, 1, EntryKind.NORMAL, encode_command("session_open", t=5, timeout_ms=1000)))["r"]["sid"]
    opened = encode(Command("session_open", SessionOpen(1000)))
    sid_new = new.apply(Entry(1, 1, EntryKind.NORMAL, entry_data(opened, t=5)))["r"]["sid"]
    assert sid_old == sid_new == 1
    for i, req in enumerate(reqs, start=2):
        cmd = parse_request(req, sid=1, limit=100)
        v1 = old.apply(Entry(1, i, EntryKind.NORMAL, encode_command(req["op"], t=7 + i, sid=1, seq=req["seq"],
                                                                     **{k: v for k, v in req.items()
                                                                        if k not in ("op", "seq")})))
        v2 = new.apply(Entry(1, i, EntryKind.NORMAL, entry_data(encode(cmd), t=7 + i, origin=3, rid=i)))
        assert v1 == v2 and v1["ok"], (req, v1, v2)
    assert old.dump() == new.dump()


def test_a_version_2_entry_with_a_bad_body_is_refused_the_same_everywhere():
    from coord.namespace.commands import decode_entry, entry_data

    for body in [b"\xff", cbor2.dumps([1]), cbor2.dumps({"op": "create", "path": "/a", "sid": 0, "seq": 0, "t": 1})]:
        lc = decode_entry(entry_data(body, t=1, origin=2, rid=3))
        assert lc.command is None and lc.error is not None and (lc.origin, lc.rid) == (2, 3)


def test_memory_per_node_is_bounded():
    """Issue 11, item 4: 1M small nodes took ~900 bytes a node of RSS.  Live
    bytes per node, by tracemalloc, for 20 parents x 1,000 children of 10
    bytes created as S1 creates them (multis of 1,000 from one session,
    remembered for dedup): 738 with lists and decoded results, ~200 with
    records and encoded results."""
    import gc
    import tracemalloc

    ns = NS(history_size=1_000)  # the event history is bounded on its own; keep it out of the figure
    sid = ns.session()
    ns.ok("multi", ops=[{"op": "create", "path": "/s"}] + [{"op": "create", "path": f"/s/{p:02d}"} for p in range(20)])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for p in range(20):
            ns.ok("multi", sid=sid, seq=p + 1,
                  ops=[{"op": "create", "path": f"/s/{p:02d}/{c:04d}", "data": b"x" * 10} for c in range(1000)])
        ns.calls.clear()
        gc.collect()
        per_node = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    finally:
        tracemalloc.stop()
    assert ns.sm.node_count == 20_022
    assert per_node < 260, f"{per_node:.0f} bytes a node"


# -- the tree's representation (coord/namespace/tree.py, records.py) ------------------
def test_lookups_of_non_canonical_paths_miss(ns):
    """Children live under their parent's path ("" for the root), so the
    slices of a non-canonical path never find a node."""
    ns.ok("create", path="/x/y", parents=True)
    for bad in ("//x", "/x/", "x", "x/y", "/x//y", "", "//", "/x/y/"):
        with pytest.raises(InvalidPathError):
            ns.sm.get(bad)
        with pytest.raises(InvalidPathError):
            ns.sm.exists(bad)
    assert ns.sm.exists("/x/y") is not None and ns.sm.children("/") == ["x"]


def test_large_data_lives_outside_the_record(ns):
    """Data above INLINE_MAX is kept apart: a parent's counter change does
    not copy it; sizes, data_bytes and snapshots follow it in and out."""
    from coord.namespace.records import INLINE_MAX

    big = bytes(range(256)) * (INLINE_MAX // 256 + 4)
    ns.ok("create", path="/b", data=big)
    assert ns.sm._tree.blobs == {"/b": big}
    blob = ns.sm._tree.blobs["/b"]
    ns.ok("create", path="/b/kid")
    data, st = ns.sm.get("/b")
    assert data is blob and field(st, "data_length") == len(big) and field(st, "num_children") == 1
    ns.ok("set", path="/b", data=b"small")
    assert ns.sm._tree.blobs == {} and ns.sm.data_bytes == 5
    ns.ok("set", path="/b", data=big)
    ns.ok("set", path="/", data=big)
    assert ns.sm.data_bytes == 2 * len(big)
    other = NamespaceStateMachine()
    other.restore(ns.sm.snapshot())
    assert other.dump() == ns.sm.dump() and other.data_bytes == 2 * len(big)
    ns.err("multi", "NoNode", ops=[{"op": "delete", "path": "/b/kid"}, {"op": "delete", "path": "/b"},
                                    {"op": "set", "path": "/nowhere"}])
    assert ns.sm.get("/b")[0] == big and ns.sm.data_bytes == 2 * len(big)
    ns.ok("delete", path="/b", recursive=True)
    assert ns.sm._tree.blobs == {"/": big}


def test_acl_table_forgets_acls_no_node_uses(ns):
    """Each distinct ACL once, counted; rollbacks and deletes give it back."""
    table = ns.sm._tree.acls
    for i in range(5):
        ns.ok("create", path=f"/a{i}", acl=[[31, "ip", f"10.0.0.{i}"]])
    assert len(table) == 6
    ns.ok("set_acl", path="/a0", acl=[[31, "ip", "10.0.0.1"]])  # now shared with /a1
    assert len(table) == 5
    ns.err("multi", "NoNode", ops=[{"op": "create", "path": "/z", "acl": [[31, "ip", "10.9.9.9"]]},
                                    {"op": "set", "path": "/nowhere"}])
    assert len(table) == 5
    for i in range(5):
        ns.ok("delete", path=f"/a{i}")
    assert len(table) == 1 and table.refs[0] == ns.sm.node_count
    ns.ok("create", path="/again", acl=[[1, "ip", "10.0.0.7"]])  # a freed number is reused
    assert len(table.acls) == 6 and ns.sm.get_acl("/again")[0] == [[1, "ip", "10.0.0.7"]]
