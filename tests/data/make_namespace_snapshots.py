"""How tests/data/namespace-v1.cbor and namespace-v2.cbor were made (run once, at
commit 63ab146, before the "coord-namespace/3" format existed): a state machine
with sessions, ephemerals, a sequential node, a deleted node, a 1 KiB node and
non-default ACLs and ACL versions, snapshotted in format /2, and the same
snapshot rewritten as format /1 (no access columns, 6-field session rows), each
with the state's canonical dump.  Kept so that old formats stay restorable.

    python tests/data/make_namespace_snapshots.py
"""

from __future__ import annotations

import os
import sys

import cbor2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "client")]

from coord.namespace.acl import ALL, READ, Auth, digest_id  # noqa: E402
from coord.namespace.commands import Command, SessionOpen, encode, encode_command, entry_data, parse_request  # noqa: E402
from coord.namespace.state import NamespaceStateMachine  # noqa: E402
from coord.raft.types import Entry, EntryKind  # noqa: E402

SUPER = Auth(frozenset(), True)


def build() -> NamespaceStateMachine:
    sm = NamespaceStateMachine()
    t = [1_700_000_000_000]

    def raw(data: bytes) -> dict:
        return sm.apply(Entry(1, sm.last_zxid + 1, EntryKind.NORMAL, data))

    def do(op: str, **f) -> dict:
        t[0] += 1
        r = raw(encode_command(op, t=t[0], **f))
        assert r["ok"], r
        return r["r"]

    a = do("session_open", timeout_ms=10_000, secret=b"a")["sid"]
    b = do("session_open", timeout_ms=3_000, secret=b"b")["sid"]
    do("create", path="/x/y/z", data=b"zz", parents=True, sid=a, seq=1)
    do("create", path="/x/", sq=True, sid=a, seq=2)
    do("create", path="/x/e", eph=True, sid=a, seq=3)
    do("create", path="/f", eph=True, sid=b, seq=1)
    do("set", path="/x/y", data=b"\x00\xff", sid=b, seq=2)
    do("delete", path="/x/y/z")
    do("create", path="/big", data=bytes(range(256)) * 4)
    bob = ["digest", digest_id("bob:secret")]
    for i, req in enumerate([
        {"op": "create", "path": "/p", "acl": [[READ, *bob]]},
        {"op": "create", "path": "/p/n", "data": b"x", "acl": [[ALL, "ip", "10.0.0.0/8"]]},
        {"op": "set_acl", "path": "/p/n", "acl": [[ALL, "world", "anyone"], [READ, *bob]]},
    ]):
        cmd = parse_request({**req, "seq": 10 + i}, sid=a, limit=1 << 20, auth=SUPER)
        t[0] += 1
        assert raw(entry_data(encode(cmd), t=t[0]))["ok"]
    return sm


def main() -> None:
    sm = build()
    here = os.path.dirname(os.path.abspath(__file__))
    v2 = sm.snapshot()
    d = cbor2.loads(v2)
    assert d["format"] == "coord-namespace/2"
    d1 = dict(d, format="coord-namespace/1")
    del d1["access"]
    d1["sessions"] = [row[:6] for row in d["sessions"]]
    old = NamespaceStateMachine()
    old.restore(cbor2.dumps(d1))
    for name, snap, dump in (("namespace-v2.cbor", v2, sm.dump()), ("namespace-v1.cbor", cbor2.dumps(d1), old.dump())):
        with open(os.path.join(here, name), "wb") as f:
            f.write(cbor2.dumps({"snapshot": snap, "dump": dump}))


if __name__ == "__main__":
    main()
