"""Model-based test: the namespace state machine against a plain dict.

The model is deliberately naive (a dict of path -> [data, version, owner],
children found by scanning, a multi run on a copy) so that it shares no
data structure with the implementation.  After every step every node's
data, version, owner, children and cversion must agree, and a snapshot
restored into a fresh state machine must equal the original.
"""

from __future__ import annotations

import copy

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coord.namespace import NamespaceStateMachine, encode_command
from coord.raft.types import Entry
from coordclient.protocol import STAT_FIELDS, basename, parent_of

MAX_DATA = 8
NAMES = ("a", "b", "c")
VERSION, CVERSION, OWNER, NUM_CHILDREN = (STAT_FIELDS.index(f) for f in
                                          ("version", "cversion", "ephemeral_owner", "num_children"))


class Refused(Exception):
    def __init__(self, code: str):
        self.code = code


class Model:
    def __init__(self) -> None:
        self.nodes: dict[str, list] = {"/": [b"", 0, 0]}  # path -> [data, version, owner]
        self.cversion: dict[str, int] = {"/": 0}
        self.sessions: set[int] = set()

    def children(self, path: str) -> list[str]:
        return sorted(basename(p) for p in self.nodes if p != "/" and parent_of(p) == path)

    def _add(self, path: str, data: bytes, owner: int) -> None:
        self.nodes[path] = [data, 0, owner]
        self.cversion[path] = 0
        self.cversion[parent_of(path)] += 1

    def _remove(self, path: str) -> None:
        del self.nodes[path]
        del self.cversion[path]
        self.cversion[parent_of(path)] += 1

    def _get(self, path: str) -> list:
        if path not in self.nodes:
            raise Refused("NoNode")
        return self.nodes[path]

    @staticmethod
    def _version(node: list, version: int) -> None:
        if version != -1 and node[1] != version:
            raise Refused("BadVersion")

    def create(self, sid: int, path: str, data: bytes, eph: bool, sq: bool, parents: bool) -> dict:
        probe = path + "0" if sq else path
        if probe == "/":
            raise Refused("NodeExists")
        if len(data) > MAX_DATA:
            raise Refused("TooLarge")
        if eph and sid not in self.sessions:
            raise Refused("SessionExpired")
        parent = parent_of(probe)
        if parent not in self.nodes:
            if not parents:
                raise Refused("NoNode")
            missing = [parent]
            while parent_of(missing[-1]) not in self.nodes:
                missing.append(parent_of(missing[-1]))
            if self.nodes[parent_of(missing[-1])][2]:
                raise Refused("NoChildrenForEphemerals")
            for p in reversed(missing):
                self._add(p, b"", 0)
        if self.nodes[parent][2]:
            raise Refused("NoChildrenForEphemerals")
        if sq:
            path = "%s%010d" % (path, self.cversion[parent])
        if path in self.nodes:
            raise Refused("NodeExists")
        self._add(path, data, sid if eph else 0)
        return {"path": path}

    def set(self, path: str, data: bytes, version: int) -> dict:
        if len(data) > MAX_DATA:
            raise Refused("TooLarge")
        node = self._get(path)
        self._version(node, version)
        node[0] = data
        node[1] += 1
        return {}

    def delete(self, path: str, version: int, recursive: bool) -> dict:
        if path == "/":
            raise Refused("BadArguments")
        node = self._get(path)
        self._version(node, version)
        below = [p for p in self.nodes if p.startswith(path + "/")]
        if below and not recursive:
            raise Refused("NotEmpty")
        for p in sorted(below, key=len, reverse=True) + [path]:
            self._remove(p)
        return {}

    def check(self, path: str, version: int) -> dict:
        self._version(self._get(path), version)
        return {}

    def drop(self, sid: int) -> None:
        for p in [p for p, n in self.nodes.items() if n[2] == sid]:
            self._remove(p)
        self.sessions.discard(sid)


def run_op(model: Model, sid: int, op: dict) -> dict:
    kind = op["op"]
    args = {k: v for k, v in op.items() if k != "op"}
    if kind == "create":
        return model.create(sid, args["path"], args.get("data", b""), args.get("eph", False),
                            args.get("sq", False), args.get("parents", False))
    if kind == "set":
        return model.set(args["path"], args.get("data", b""), args.get("version", -1))
    if kind == "delete":
        return model.delete(args["path"], args.get("version", -1), args.get("recursive", False))
    return model.check(args["path"], args.get("version", -1))


paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
datas = st.sampled_from([b"", b"x", b"\x00\xff", b"12345678", b"123456789"])  # the last is too large
versions = st.integers(-1, 2)


class NamespaceModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.sm = NamespaceStateMachine(max_data_bytes=MAX_DATA, dedup_window=4)
        self.events: list = []
        self.sm.on_events = lambda zxid, evs: self.events.append(zxid)
        self.model = Model()
        self.known_sids: list[int] = []
        self.next_seq: dict[int, int] = {}
        self.last: tuple[bytes, dict] | None = None  # last deduplicated write and its result
        self.t = 1000
        for path in ("/a", "/a/b", "/b"):  # something to work on from the first step
            self.write(0, "create", lambda: self.model.create(0, path, b"", False, False, False), path=path)

    # -- helpers --------------------------------------------------------------------
    def apply(self, op: str, sid: int = 0, seq: int = 0, **fields) -> dict:
        self.t += 1
        data = encode_command(op, t=self.t, sid=sid, seq=seq, **fields)
        before = len(self.events)
        res = self.sm.apply(Entry(1, self.sm.last_zxid + 1, 0, data))
        if not res["ok"]:
            assert len(self.events) == before, "a failed command emitted events"
        if seq:
            self.last = (data, res, sid)
        return res

    def write(self, sid: int, op: str, model_fn, **fields) -> dict:
        """Apply one write to both sides, compare the outcomes, return the result."""
        seq = 0
        if sid:
            seq = self.next_seq.get(sid, 0) + 1
            self.next_seq[sid] = seq
        snapshot = copy.deepcopy((self.model.nodes, self.model.cversion))
        try:
            if sid and sid not in self.model.sessions:
                raise Refused("SessionExpired")
            expected = model_fn()
        except Refused as r:
            self.model.nodes, self.model.cversion = snapshot
            expected = r
        res = self.apply(op, sid=sid, seq=seq, **fields)
        if isinstance(expected, Refused):
            assert not res["ok"] and res["err"] == expected.code, (res, expected.code)
            return res
        assert res["ok"], res
        for k, v in expected.items():
            assert res["r"][k] == v, (res, expected)
        return res

    def pick_sid(self, data) -> int:
        """Mostly a live session, sometimes none, rarely a dead one."""
        live = sorted(self.model.sessions)
        dead = [s for s in self.known_sids if s not in self.model.sessions]
        roll = data.draw(st.integers(0, 9))
        if roll < 7 and live:
            return data.draw(st.sampled_from(live))
        if roll == 9 and dead:
            return data.draw(st.sampled_from(dead))
        return 0

    def pick_path(self, data) -> str:
        """Mostly an existing node (sequential ones included), else any short path."""
        existing = sorted(p for p in self.model.nodes if p != "/")
        if existing and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(existing))
        return data.draw(paths)

    def create_fields(self, data, sid: int) -> dict:
        sq = data.draw(st.booleans())
        path = self.pick_path(data)
        if sq and data.draw(st.booleans()):
            path += "/"  # "/a/" sequential -> "/a/0000000003"
        eph = data.draw(st.booleans()) and (sid != 0 or data.draw(st.integers(0, 4)) == 0)
        return {"path": path, "data": data.draw(datas), "eph": eph, "sq": sq,
                "parents": data.draw(st.booleans())}

    # -- rules ----------------------------------------------------------------------
    @precondition(lambda self: len(self.model.sessions) < 3)
    @rule()
    def open_session(self) -> None:
        res = self.apply("session_open", timeout_ms=1000, secret=b"k")
        sid = res["r"]["sid"]
        self.model.sessions.add(sid)
        self.known_sids.append(sid)

    @precondition(lambda self: self.known_sids)
    @rule(data=st.data())
    def expire_sessions(self, data) -> None:
        sids = data.draw(st.lists(st.sampled_from(self.known_sids), max_size=3))
        expired = []
        for sid in dict.fromkeys(sids):
            if sid in self.model.sessions:
                self.model.drop(sid)
                expired.append(sid)
        res = self.apply("session_expire", sids=sids)
        assert res["ok"] and res["r"] == {"expired": expired}

    @precondition(lambda self: self.known_sids)
    @rule(data=st.data())
    def close_session(self, data) -> None:
        sid = data.draw(st.sampled_from(self.known_sids))
        res = self.apply("session_close", sid=sid)
        if sid in self.model.sessions:
            assert res["ok"], res
            self.model.drop(sid)
        else:
            assert res["err"] == "SessionExpired"

    @rule(data=st.data())
    def create(self, data) -> None:
        sid = self.pick_sid(data)
        f = self.create_fields(data, sid)
        self.write(sid, "create", lambda: self.model.create(sid, **f), **f)

    @precondition(lambda self: self.model.sessions)
    @rule(data=st.data(), name=st.sampled_from(NAMES), sq=st.booleans())
    def create_ephemeral(self, data, name, sq) -> None:
        """An ephemeral under a persistent node: sessions then have something to take away."""
        sid = data.draw(st.sampled_from(sorted(self.model.sessions)))
        parent = data.draw(st.sampled_from(sorted(p for p, n in self.model.nodes.items() if not n[2])))
        f = {"path": parent.rstrip("/") + "/" + name, "data": b"e", "eph": True, "sq": sq, "parents": False}
        self.write(sid, "create", lambda: self.model.create(sid, **f), **f)

    @rule(data=st.data(), value=datas, version=versions)
    def set(self, data, value, version) -> None:
        sid, path = self.pick_sid(data), self.pick_path(data)
        self.write(sid, "set", lambda: self.model.set(path, value, version), path=path, data=value, version=version)

    @rule(data=st.data(), version=versions, recursive=st.booleans())
    def delete(self, data, version, recursive) -> None:
        sid, path = self.pick_sid(data), self.pick_path(data)
        self.write(sid, "delete", lambda: self.model.delete(path, version, recursive),
                   path=path, version=version, recursive=recursive)

    @rule(data=st.data())
    def multi(self, data) -> None:
        sid = self.pick_sid(data)
        ops = []
        for _ in range(data.draw(st.integers(0, 4))):
            kind = data.draw(st.sampled_from(["create", "set", "delete", "check"]))
            if kind == "create":
                ops.append({"op": "create", **self.create_fields(data, sid)})
            elif kind == "set":
                ops.append({"op": "set", "path": self.pick_path(data), "data": data.draw(datas),
                            "version": data.draw(versions)})
            elif kind == "delete":
                ops.append({"op": "delete", "path": self.pick_path(data), "version": data.draw(versions),
                            "recursive": data.draw(st.booleans())})
            else:
                ops.append({"op": "check", "path": self.pick_path(data), "version": data.draw(versions)})

        failed_at = []

        def model_multi():
            results = []
            for i, op in enumerate(ops):
                try:
                    results.append(run_op(self.model, sid, op))
                except Refused:
                    failed_at.append(i)
                    raise
            return {}

        res = self.write(sid, "multi", model_multi, ops=ops)
        if failed_at:
            assert res["index"] == failed_at[0] and len(res["results"]) == len(ops)
            assert [r["err"] for i, r in enumerate(res["results"]) if i != failed_at[0]] == \
                ["RuntimeInconsistency"] * (len(ops) - 1)
        if res["ok"]:
            assert len(res["r"]["results"]) == len(ops)
            for op, r in zip(ops, res["r"]["results"]):
                if op["op"] == "create":
                    assert r["path"].startswith(op["path"])

    @precondition(lambda self: self.last is not None)
    @rule()
    def retry_last_write(self) -> None:
        """A retry with the same (sid, seq) answers the same and changes nothing."""
        data, first, sid = self.last
        before = self.sm.dump()
        n_events = len(self.events)
        res = self.sm.apply(Entry(1, self.sm.last_zxid + 1, 0, data))
        if sid in self.model.sessions:
            assert res == first
        else:
            assert res["err"] == "SessionExpired"
        assert len(self.events) == n_events
        assert self.sm.dump()["nodes"] == before["nodes"]

    @rule()
    def snapshot_and_restore(self) -> None:
        data = self.sm.snapshot()
        fresh = NamespaceStateMachine(max_data_bytes=MAX_DATA, dedup_window=4)
        fresh.restore(data)
        assert fresh.dump() == self.sm.dump()
        fresh.on_events = self.sm.on_events
        self.sm = fresh

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "sm"):
            return
        m, sm = self.model, self.sm
        assert sm.node_count == len(m.nodes)
        for path, (data, version, owner) in m.nodes.items():
            got, stat = sm.get(path)
            kids = m.children(path)
            assert got == data, path
            assert (stat[VERSION], stat[OWNER], stat[CVERSION]) == (version, owner, m.cversion[path]), path
            assert stat[NUM_CHILDREN] == len(kids) and sm.children(path) == kids, path
        assert sorted(sm.sessions()) == sorted(m.sessions)
        for sid in m.sessions:
            assert sm.ephemerals_of(sid) == sorted(p for p, n in m.nodes.items() if n[2] == sid)


NamespaceModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestNamespaceModel = NamespaceModel.TestCase
