"""ZooKeeper's /zookeeper subtree, served without a node in coord's tree.

ZooKeeper clients expect ``/zookeeper`` (listed under the root),
``/zookeeper/config`` (the dynamic config, ``getConfig``) and
``/zookeeper/quota``.  Reads of them are answered here (the config from
coord's ``status``); writes are refused with NoAuth, as ZooKeeper protects
them.  Watches on them are accepted and never fire (coord's membership
changes are not events on a node).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from coord.zookeeper.codes import CONFIG_NODE, QUOTA_NODE, ZOOKEEPER_NODE, Code, OpCode, Perms
from coord.zookeeper.jute import wrap_int, wrap_long
from coord.zookeeper.membership import render_config
from coord.zookeeper.records import (
    ACL,
    ExistsResponse,
    GetACLResponse,
    GetChildren2Response,
    GetChildrenResponse,
    GetDataResponse,
    Id,
    Stat,
)
from coord.zookeeper.seam import Context, Plan, Reply, error


def in_subtree(path: str) -> bool:
    return path == ZOOKEEPER_NODE or path.startswith(ZOOKEEPER_NODE + "/")


def root_plus(st: Stat, path: str, ctx: Context) -> Stat:
    """The root's stat counts /zookeeper among its children, as ZooKeeper's does."""
    if path == "/" and ctx.options.zookeeper_subtree:
        return Stat(st.czxid, st.mzxid, st.ctime, st.mtime, st.version, st.cversion, st.aversion,
                    st.ephemeralOwner, st.dataLength, wrap_int(st.numChildren + 1), st.pzxid)
    return st


_VIRTUAL_CHILDREN = MappingProxyType({ZOOKEEPER_NODE: ("config", "quota"), CONFIG_NODE: (), QUOTA_NODE: ()})


def virtual_stat(path: str, data: bytes, status: Mapping[str, Any] | None) -> Stat:
    version = status.get("config_version", 0) if status else 0
    mzxid = version if path == CONFIG_NODE and type(version) is int else 0
    return Stat(0, wrap_long(mzxid), 0, 0, 0, 0, 0, 0, len(data), len(_VIRTUAL_CHILDREN[path]), 0)


def virtual_plan(op: int, path: str) -> Plan | Reply | None:
    """Reads of the /zookeeper subtree (None: ``path`` is not in it)."""
    if not in_subtree(path):
        return None
    if path not in _VIRTUAL_CHILDREN:
        return error(Code.NO_NODE, path)
    if op in (OpCode.GET_DATA, OpCode.EXISTS, OpCode.GET_ACL) and path == CONFIG_NODE:
        return Plan(({"op": "status"},))
    return virtual_reply(op, path, None)


def virtual_reply(op: int, path: str, status: Mapping[str, Any] | None) -> Reply:
    data = render_config(status) if path == CONFIG_NODE and status is not None else b""
    st = virtual_stat(path, data, status)
    if op == OpCode.EXISTS:
        return Reply(body=ExistsResponse(st))
    if op == OpCode.GET_DATA:
        return Reply(body=GetDataResponse(data, st))
    if op == OpCode.GET_CHILDREN:
        return Reply(body=GetChildrenResponse(_VIRTUAL_CHILDREN[path]))
    if op == OpCode.GET_CHILDREN2:
        return Reply(body=GetChildren2Response(_VIRTUAL_CHILDREN[path], st))
    if op == OpCode.GET_ACL:
        return Reply(body=GetACLResponse((ACL(Perms.READ, Id("world", "anyone")),), st))
    return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
