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

from coord.namespace.acl import ADMIN, CREATE, DELETE, OPEN_ACL, READ, UNCHECKED, WRITE, Auth, allowed, expand, intern
from coord.namespace.commands import Check, Create, Delete, SetACL, SetData, multi_failure
from coord.namespace.sessions import SessionTable
from coord.namespace.tree import (
    ACLS,
    AVERSION,
    CVERSION,
    DATA,
    KIDS,
    MTIME,
    MZXID,
    OWNER,
    PZXID,
    VERSION,
    Node,
    Tree,
    new_node,
    stat,
)
from coordclient.errors import (
    BadArgumentsError,
    BadVersionError,
    CoordError,
    InvalidPathError,
    NoAuthError,
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


_PERM_NAMES = {READ: "READ", WRITE: "WRITE", CREATE: "CREATE", DELETE: "DELETE", ADMIN: "ADMIN"}


def require(node: Node, auth: Auth, perm: int, path: str, what: str) -> None:
    """NoAuth unless ``auth`` has ``perm`` on ``node`` (whose path is ``path``)."""
    if not allowed(node[ACLS], auth, perm):
        raise NoAuthError(f"{what} needs {_PERM_NAMES[perm]} permission on {path}", path=path)


class Txn:
    __slots__ = ("tree", "sessions", "zxid", "t", "max_data", "auth", "undo", "events")

    def __init__(self, tree: Tree, sessions: SessionTable, zxid: int, t: int, max_data: int,
                 auth: Auth = UNCHECKED) -> None:
        self.tree = tree
        self.sessions = sessions
        self.zxid = zxid
        self.t = t
        self.max_data = max_data
        self.auth = auth
        self.undo: list[tuple] = []  # (function, *args), run newest first
        self.events: list[tuple[str, str]] = []  # (EventType value, path)

    def rollback(self) -> None:
        undo = self.undo
        while undo:
            fn, *args = undo.pop()
            fn(*args)
        self.events.clear()

    # -- logged primitives -----------------------------------------------------
    def _insert(self, path: str, data: bytes, owner: int, acl=OPEN_ACL) -> Node:
        node = new_node(data, self.zxid, self.t, owner, acl)
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
    def run(self, op: Create | Delete | SetData | Check | SetACL, sid: int) -> dict:
        if type(op) is Create:
            return self.create(op, sid)
        if type(op) is SetData:
            return self.set(op)
        if type(op) is Delete:
            return self.delete(op)
        if type(op) is SetACL:
            return self.set_acl(op)
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
        acl = OPEN_ACL if op.acl is None else expand(op.acl, self.auth)
        ppath = parent_of(probe)
        parent = self.tree.get(ppath)
        if parent is None:
            if not op.parents:
                raise NoNodeError(f"parent {ppath} does not exist", path=path)
            parent = self._make_parents(ppath, path, acl)
        else:
            require(parent, self.auth, CREATE, ppath, "create")
        if parent[OWNER]:
            raise NoChildrenForEphemeralsError(f"{ppath} is ephemeral", path=path)
        if op.sq:
            path = f"{path}{parent[CVERSION]:010d}"
            check_path(path)
        if path in self.tree.nodes:
            raise NodeExistsError(f"{path} already exists", path=path)
        node = self._insert(path, op.data, sid if op.eph else 0, acl)
        return {"path": path, "stat": stat(node)}

    def _make_parents(self, ppath: str, path: str, acl) -> Node:
        """Create the missing ancestors of ``path`` down to ``ppath``
        (persistent, empty, with the node's own ACL); CREATE is needed on the
        nearest existing ancestor."""
        missing = []
        p = ppath
        while (anchor := self.tree.get(p)) is None:
            missing.append(p)
            p = parent_of(p)
        require(anchor, self.auth, CREATE, p, "create")
        if anchor[OWNER]:
            raise NoChildrenForEphemeralsError(f"{p} is ephemeral", path=path)
        for p in reversed(missing):
            node = self._insert(p, b"", 0, acl)
        return node

    def set(self, op: SetData) -> dict:
        path = op.path
        node = self._lookup(path)
        self._check_size(op.data, path)
        node = self._exists(node, path)
        require(node, self.auth, WRITE, path, "set")
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
        ppath = parent_of(path)
        parent = self.tree.get(ppath)
        if parent is not None:  # as ZooKeeper: the parent's ACL first (no existence leak)
            require(parent, self.auth, DELETE, ppath, "delete")
        node = self._exists(node, path)
        self._check_version(node, op.version, path)
        if node[KIDS]:
            if not op.recursive:
                raise NotEmptyError(f"{path} has {len(node[KIDS])} children", path=path)
            for p in self.tree.subtree_postorder(path):
                q = parent_of(p)
                require(self.tree.nodes[q], self.auth, DELETE, q, "delete")
                self._remove(p)
        self._remove(path)
        return {}

    def check(self, op: Check) -> dict:
        node = self._exists(self._lookup(op.path), op.path)
        require(node, self.auth, READ, op.path, "check")
        self._check_version(node, op.version, op.path)
        return {}

    def set_acl(self, op: SetACL) -> dict:
        path = op.path
        node = self._exists(self._lookup(path), path)
        require(node, self.auth, ADMIN, path, "set_acl")
        if op.version != -1 and node[AVERSION] != op.version:
            raise BadVersionError(f"the ACL of {path} is at version {node[AVERSION]}, not {op.version}", path=path)
        acl = expand(op.acl, self.auth)
        self.undo.append((self._unset_acl, node, node[ACLS], node[AVERSION]))
        node[ACLS] = intern(acl)
        node[AVERSION] += 1
        return {"stat": stat(node)}

    @staticmethod
    def _unset_acl(node: Node, acl, aversion: int) -> None:
        node[ACLS], node[AVERSION] = acl, aversion

    def multi(self, ops: tuple, sid: int) -> dict:
        results = []
        for i, op in enumerate(ops):
            try:
                results.append(self.run(op, sid))
            except CoordError as e:
                raise multi_failure(i, e, len(ops)) from None
        return {"results": results}

    def add_session_ids(self, sid: int, ids: tuple[tuple[str, str], ...]) -> None:
        session = self.sessions.get(sid)
        old = session.ids
        session.ids = tuple(dict.fromkeys(old + ids))
        self.undo.append((setattr, session, "ids", old))

    def drop_session(self, sid: int) -> None:
        """End a live session: its ephemerals first, then the session itself."""
        session = self.sessions.get(sid)
        for path in sorted(session.ephemerals):
            self._remove(path)
        self.sessions.remove(sid)
        self.undo.append((self.sessions.put_back, sid, session))
