"""One command's changes, all or nothing.

Operations change the tree and the session table in place, so that later
operations of a multi see the earlier ones, and log the inverse of every
change; ``rollback`` replays that log backwards.  Events are only collected
here: the state machine publishes them if, and only if, the command
succeeded, so a failed command leaves no trace at all.

Each operation checks ZooKeeper's rules in ZooKeeper's order and raises the
matching ``coordclient.errors`` exception.
"""

from __future__ import annotations

from coord.namespace.commands import Check, Create, Delete, SetData, multi_failure
from coord.namespace.sessions import SessionTable
from coord.namespace.tree import CVERSION, DATA, KIDS, MTIME, MZXID, OWNER, PZXID, VERSION, Node, Tree, new_node, stat
from coordclient.errors import (
    BadArgumentsError,
    BadVersionError,
    CoordError,
    InvalidPathError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
    TooLargeError,
)
from coordclient.protocol import EventType, parent_of, validate_path

CREATED, DELETED, CHANGED, CHILDREN = (EventType.CREATED.value, EventType.DELETED.value,
                                       EventType.CHANGED.value, EventType.CHILDREN.value)


def check_path(path: str) -> None:
    why = validate_path(path)
    if why is not None:
        raise InvalidPathError(f"{why}: {path!r}"[:300], path=path)


class Txn:
    __slots__ = ("tree", "sessions", "zxid", "t", "max_data", "undo", "events")

    def __init__(self, tree: Tree, sessions: SessionTable, zxid: int, t: int, max_data: int) -> None:
        self.tree = tree
        self.sessions = sessions
        self.zxid = zxid
        self.t = t
        self.max_data = max_data
        self.undo: list[tuple] = []  # (function, *args), run newest first
        self.events: list[tuple[str, str]] = []  # (EventType value, path)

    def rollback(self) -> None:
        undo = self.undo
        while undo:
            fn, *args = undo.pop()
            fn(*args)
        self.events.clear()

    # -- logged primitives -----------------------------------------------------
    def _insert(self, path: str, data: bytes, owner: int) -> Node:
        node = new_node(data, self.zxid, self.t, owner)
        parent, cv, pz = self.tree.insert(path, node)
        self.undo.append((self._uninsert, path, parent, cv, pz))
        if owner:
            eph = self.sessions.get(owner).ephemerals
            eph.add(path)
            self.undo.append((eph.discard, path))
        self.events += ((CREATED, path), (CHILDREN, parent_of(path)))
        return node

    def _uninsert(self, path: str, parent: Node, cv: int, pz: int) -> None:
        self.tree.unlink(path)
        parent[CVERSION], parent[PZXID] = cv, pz

    def _remove(self, path: str) -> None:
        node, parent, cv, pz = self.tree.remove(path, self.zxid)
        self.undo.append((self._unremove, path, node, parent, cv, pz))
        owner = node[OWNER]
        if owner:
            session = self.sessions.get(owner)
            if session is not None:
                session.ephemerals.discard(path)
                self.undo.append((session.ephemerals.add, path))
        self.events += ((DELETED, path), (CHILDREN, parent_of(path)))

    def _unremove(self, path: str, node: Node, parent: Node, cv: int, pz: int) -> None:
        self.tree.relink(path, node)
        parent[CVERSION], parent[PZXID] = cv, pz

    def _unset(self, node: Node, data: bytes, version: int, mzxid: int, mtime: int) -> None:
        self.tree.data_bytes += len(data) - len(node[DATA])
        node[DATA], node[VERSION], node[MZXID], node[MTIME] = data, version, mzxid, mtime

    def _lookup(self, path: str) -> Node | None:
        """The node at ``path`` or None; InvalidPath for a bad path.  Only
        misses are checked: every path in the tree was checked when created."""
        node = self.tree.get(path)
        if node is None:
            check_path(path)
        return node

    @staticmethod
    def _exists(node: Node | None, path: str) -> Node:
        if node is None:
            raise NoNodeError(f"{path} does not exist", path=path)
        return node

    @staticmethod
    def _check_version(node: Node, version: int, path: str) -> None:
        if version != -1 and node[VERSION] != version:
            raise BadVersionError(f"{path} is at version {node[VERSION]}, not {version}", path=path)

    def _check_size(self, data: bytes, path: str) -> None:
        if len(data) > self.max_data:
            raise TooLargeError(f"{len(data)} bytes of data; the limit is {self.max_data}", path=path)

    # -- operations ----------------------------------------------------------
    def run(self, op: Create | Delete | SetData | Check, sid: int) -> dict:
        if type(op) is Create:
            return self.create(op, sid)
        if type(op) is SetData:
            return self.set(op)
        if type(op) is Delete:
            return self.delete(op)
        return self.check(op)

    def create(self, op: Create, sid: int) -> dict:
        path = op.path
        probe = path + "0" if op.sq else path  # a sequential path may end in "/": "/q/" -> "/q/0000000007"
        check_path(probe)
        if probe == "/":
            raise NodeExistsError("the root always exists", path=path)
        self._check_size(op.data, path)
        if op.eph and self.sessions.get(sid) is None:
            raise SessionExpiredError("an ephemeral node needs a live session", path=path)
        ppath = parent_of(probe)
        parent = self.tree.get(ppath)
        if parent is None:
            if not op.parents:
                raise NoNodeError(f"parent {ppath} does not exist", path=path)
            parent = self._make_parents(ppath, path)
        if parent[OWNER]:
            raise NoChildrenForEphemeralsError(f"{ppath} is ephemeral", path=path)
        if op.sq:
            path = f"{path}{parent[CVERSION]:010d}"
            check_path(path)
        if path in self.tree.nodes:
            raise NodeExistsError(f"{path} already exists", path=path)
        node = self._insert(path, op.data, sid if op.eph else 0)
        return {"path": path, "stat": stat(node)}

    def _make_parents(self, ppath: str, path: str) -> Node:
        """Create the missing ancestors of ``path`` down to ``ppath`` (persistent, empty)."""
        missing = []
        p = ppath
        while (anchor := self.tree.get(p)) is None:
            missing.append(p)
            p = parent_of(p)
        if anchor[OWNER]:
            raise NoChildrenForEphemeralsError(f"{p} is ephemeral", path=path)
        for p in reversed(missing):
            node = self._insert(p, b"", 0)
        return node

    def set(self, op: SetData) -> dict:
        path = op.path
        node = self._lookup(path)
        self._check_size(op.data, path)
        node = self._exists(node, path)
        self._check_version(node, op.version, path)
        self.undo.append((self._unset, node, node[DATA], node[VERSION], node[MZXID], node[MTIME]))
        self.tree.data_bytes += len(op.data) - len(node[DATA])
        node[DATA] = op.data
        node[VERSION] += 1
        node[MZXID] = self.zxid
        node[MTIME] = self.t
        self.events.append((CHANGED, path))
        return {"stat": stat(node)}

    def delete(self, op: Delete) -> dict:
        path = op.path
        node = self._lookup(path)
        if path == "/":
            raise BadArgumentsError("the root cannot be deleted", path=path)
        node = self._exists(node, path)
        self._check_version(node, op.version, path)
        if node[KIDS]:
            if not op.recursive:
                raise NotEmptyError(f"{path} has {len(node[KIDS])} children", path=path)
            for p in self.tree.subtree_postorder(path):
                self._remove(p)
        self._remove(path)
        return {}

    def check(self, op: Check) -> dict:
        self._check_version(self._exists(self._lookup(op.path), op.path), op.version, op.path)
        return {}

    def multi(self, ops: tuple, sid: int) -> dict:
        results = []
        for i, op in enumerate(ops):
            try:
                results.append(self.run(op, sid))
            except CoordError as e:
                raise multi_failure(i, e, len(ops)) from None
        return {"results": results}

    def drop_session(self, sid: int) -> None:
        """End a live session: its ephemerals first, then the session itself."""
        session = self.sessions.get(sid)
        for path in sorted(session.ephemerals):
            self._remove(path)
        self.sessions.remove(sid)
        self.undo.append((self.sessions.put_back, sid, session))
