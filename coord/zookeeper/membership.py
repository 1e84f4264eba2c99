"""ZooKeeper's view of the ensemble: the dynamic config text and reconfig specs.

ZooKeeper clients read the membership as text (``getConfig``, the
``/zookeeper/config`` node, the ``conf`` four-letter word) and change it
with ``reconfig`` strings.  coord's membership lives in its ``status``
answer and changes through ``member_change``; this module converts between
the two, and nothing else.
"""

from __future__ import annotations

from typing import Any, Mapping

from coord.zookeeper.codes import Code
from coord.zookeeper.records import ReconfigRequest


class ReconfigRefused(ValueError):
    """A reconfig request coord cannot carry out; ``code`` is ZooKeeper's error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _ints(v: Any) -> list[int]:
    return [x for x in v if type(x) is int] if isinstance(v, (list, tuple)) else []


def render_config(status: Mapping[str, Any]) -> bytes:
    """ZooKeeper's dynamic config text from coord's ``status``: one
    ``server.N=host:peer:peer:role;client`` line per member (coord has one
    peer port where ZooKeeper has a quorum and an election port), then
    ``version=<hex>``.  The client address is the member's ZooKeeper
    address when the status has one (``"zookeeper"``), else its coord
    client address."""
    lines = []
    voters = set(_ints(status.get("voters")))
    members = status.get("members") if isinstance(status.get("members"), dict) else {}
    for mid in sorted(k for k in members if type(k) is int):
        addrs = members[mid] if isinstance(members[mid], dict) else {}
        host, _, port = str(addrs.get("peer") or "").rpartition(":")
        role = "participant" if mid in voters else "observer"
        client = addrs.get("zookeeper") or addrs.get("client") or ""
        lines.append(f"server.{mid}={host}:{port}:{port}:{role};{client}")
    version = status.get("config_version")
    lines.append(f"version={version if type(version) is int and version >= 0 else 0:x}")
    return "\n".join(lines).encode()


def _bad(spec: str) -> ReconfigRefused:
    return ReconfigRefused(Code.BAD_ARGUMENTS, f"bad server spec {spec!r}"[:200])


def parse_reconfig(rec: ReconfigRequest) -> dict:
    """coord's ``member_change`` request for an incremental reconfig.

    ``joiningServers``: comma-separated
    ``server.N=host:port[:port][:participant|observer][;[host:]port]``
    (observers join as learners; coord has a single peer port, the first
    one; the client address is the member's ZooKeeper address);
    ``leavingServers``: comma-separated ids; ``curConfigId`` -1 means "any
    current config".  Non-incremental reconfig (``newMembers``) is refused.
    Raises ``ReconfigRefused``."""
    if rec.newMembers:
        raise ReconfigRefused(Code.UNIMPLEMENTED, "non-incremental reconfig is not supported")
    voters: list[dict] = []
    learners: list[dict] = []
    remove: list[int] = []
    for spec in (rec.joiningServers or "").split(","):
        spec = spec.strip()
        if not spec:
            continue
        key, eq, value = spec.partition("=")
        if not eq or not key.startswith("server.") or not key[7:].isdigit() or int(key[7:]) < 1:
            raise _bad(spec)
        server, _, client = value.partition(";")
        addr = server.split(":")
        role = addr[-1] if addr[-1] in ("participant", "observer") else "participant"
        if len(addr) < 2 or not addr[0] or not addr[1].isdigit() or not 0 < int(addr[1]) < 65536:
            raise _bad(spec)
        item = {"id": int(key[7:]), "peer": f"{addr[0]}:{addr[1]}"}
        if client:
            # ZooKeeper's client address ("[host:]port"): the member's ZooKeeper port
            host, colon, port = client.rpartition(":")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise _bad(spec)
            item["zookeeper"] = f"{host if colon and host else addr[0]}:{port}"
        (voters if role == "participant" else learners).append(item)
    for item in (rec.leavingServers or "").split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ReconfigRefused(Code.BAD_ARGUMENTS, f"bad server id {item!r}"[:200])
        remove.append(int(item))
    if not (voters or learners or remove):
        raise ReconfigRefused(Code.BAD_ARGUMENTS, "nothing to change")
    return {"op": "member_change", "add_voters": voters, "add_learners": learners, "remove": remove,
            "version": None if rec.curConfigId < 0 else rec.curConfigId}
