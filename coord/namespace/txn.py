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

from coord.namespace.acl import ADMIN, ACL, CREATE, DELETE, OPEN_ACL, READ, UNCHECKED, WRITE, Auth, allowed, expand
from coord.namespace.commands import Check, Create, Delete, SetACL, SetData, multi_failure
from coord.namespace.records import (
    CONTAINER,
    CVERSION,
    EXTERNAL,
    MTIME,
    OWNER,
    VERSION,
    fields,
    make,
    owner,
    owner_for,
    repack,
    ttl_of,
)
from coord.namespace.sessions import SessionTable
from coord.namespace.tree import Tree
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


def require(acl: ACL, auth: Auth, perm: int, path: str, what: str) -> None:
    """NoAuth unless ``auth`` has ``perm`` on a node with ``acl`` (at ``path``)."""
    if not allowed(acl, auth, perm):
        raise NoAuthError(f"{what} needs {_PERM_NAMES[perm]} permission on {path}", path=path)


def due(tree: Tree, path: str, now_ms: int) -> bool:
    """Is ``path`` a container or TTL node that ZooKeeper would delete now?
    A container once it has had children and has none left (cversion > 0);
    a TTL node once it has no children and has not changed for its TTL
    (mtime + ttl < now, on the leader's clock that stamps both)."""
    rec = tree.get(path)
    if rec is None or path == "/" or tree.children(path):
        return False
    f = fields(rec)
    o = f[OWNER]
    if o == CONTAINER:
        return f[CVERSION] > 0
    ttl = ttl_of(o)
    return ttl > 0 and now_ms - f[MTIME] > ttl


class Txn:
    __slots__ = ("tree", "sessions", "zxid", "t", "max_data", "auth", "undo", "events", "_parent")

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
        self._parent = ""  # the last parent path an event named: one string for a multi's siblings

    def rollback(self) -> None:
        undo = self.undo
        while undo:
            fn, *args = undo.pop()
            fn(*args)
        self.events.clear()

    # -- logged primitives -----------------------------------------------------
    def _put(self, path: str, rec: bytes | None, blob: bytes | None = None) -> None:
        put = self.tree.put
        self.undo.append((put, path, *put(path, rec, blob)))

    def _parent_of(self, path: str) -> str:
        """parent_of(path), the same object as the last one if equal: the
        events of a multi of 1,000 creates under one parent, kept in the
        history, then hold one copy of its path instead of 1,000."""
        p = parent_of(path)
        if p == self._parent:
            return self._parent
        self._parent = p
        return p

    def _touch_children(self, ppath: str) -> None:
        """The parent's children changed at this zxid: cversion + 1, pzxid."""
        tree = self.tree
        rec = tree.get(ppath)
        cz, mz, _, ct, mt, v, cv, o, av, w = fields(rec)
        self._put(ppath, repack(rec, cz, mz, self.zxid, ct, mt, v, cv + 1, o, av, w),
                  tree.blobs[ppath] if w & EXTERNAL else None)

    def _insert(self, path: str, data: bytes, owner_field: int, acl: ACL = OPEN_ACL) -> bytes:
        """``owner_field``: records.owner_for(...) of the new node."""
        z, t = self.zxid, self.t
        rec, blob = make(data, z, z, z, t, t, 0, 0, owner_field, 0, self.tree.acls.number(acl))
        self._put(path, rec, blob)
        ppath = self._parent_of(path)
        self._touch_children(ppath)
        if owner_field > 0:
            eph = self.sessions.get(owner_field).ephemerals
            eph.add(path)
            self.undo.append((eph.discard, path))
        elif owner_field < 0:
            reapable = self.tree.reapable
            reapable.add(path)
            self.undo.append((reapable.discard, path))
        self.events += ((CREATED, path), (CHILDREN, ppath))
        return rec

    def _remove(self, path: str) -> None:
        rec = self.tree.get(path)
        self._put(path, None)
        ppath = self._parent_of(path)
        self._touch_children(ppath)
        sid = owner(rec)
        if sid > 0:
            session = self.sessions.get(sid)
            if session is not None:
                session.ephemerals.discard(path)
                self.undo.append((session.ephemerals.add, path))
        elif sid < 0:
            self.tree.reapable.discard(path)
            self.undo.append((self.tree.reapable.add, path))
        self.events += ((DELETED, path), (CHILDREN, ppath))

    def _lookup(self, path: str) -> bytes | None:
        """The record at ``path`` or None; InvalidPath for a bad path.  Only
        misses are checked: every path in the tree was checked when created."""
        rec = self.tree.get(path)
        if rec is None:
            check_path(path)
        return rec

    @staticmethod
    def _exists(rec: bytes | None, path: str) -> bytes:
        if rec is None:
            raise NoNodeError(f"{path} does not exist", path=path)
        return rec

    @staticmethod
    def _check_version(rec: bytes, version: int, path: str) -> None:
        if version != -1:
            current = fields(rec)[VERSION]
            if current != version:
                raise BadVersionError(f"{path} is at version {current}, not {version}", path=path)

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
        tree = self.tree
        acl = OPEN_ACL if op.acl is None else expand(op.acl, self.auth)
        ppath = parent_of(probe)
        parent = tree.get(ppath)
        if parent is None:
            if not op.parents:
                raise NoNodeError(f"parent {ppath} does not exist", path=path)
            parent = self._make_parents(ppath, path, acl)
        else:
            require(tree.acl(parent), self.auth, CREATE, ppath, "create")
        pf = fields(parent)
        if pf[OWNER] > 0:
            raise NoChildrenForEphemeralsError(f"{ppath} is ephemeral", path=path)
        if op.sq:
            path = f"{path}{pf[CVERSION]:010d}"
            check_path(path)
        if tree.get(path) is not None:
            raise NodeExistsError(f"{path} already exists", path=path)
        rec = self._insert(path, op.data, owner_for(session=sid if op.eph else 0, container=op.container,
                                                    ttl_ms=op.ttl), acl)
        return {"path": path, "stat": tree.stat(path, rec)}

    def _make_parents(self, ppath: str, path: str, acl: ACL) -> bytes:
        """Create the missing ancestors of ``path`` down to ``ppath``
        (persistent, empty, with the node's own ACL); CREATE is needed on the
        nearest existing ancestor.  Returns ``ppath``'s record."""
        tree = self.tree
        missing = []
        p = ppath
        while (anchor := tree.get(p)) is None:
            missing.append(p)
            p = parent_of(p)
        require(tree.acl(anchor), self.auth, CREATE, p, "create")
        if owner(anchor) > 0:
            raise NoChildrenForEphemeralsError(f"{p} is ephemeral", path=path)
        for p in reversed(missing):
            self._insert(p, b"", 0, acl)
        return tree.get(ppath)

    def set(self, op: SetData) -> dict:
        path = op.path
        rec = self._lookup(path)
        self._check_size(op.data, path)
        rec = self._exists(rec, path)
        tree = self.tree
        require(tree.acl(rec), self.auth, WRITE, path, "set")
        self._check_version(rec, op.version, path)
        cz, _, pz, ct, _, v, cv, o, av, w = fields(rec)
        new, blob = make(op.data, cz, self.zxid, pz, ct, self.t, v + 1, cv, o, av, w >> 1)
        self._put(path, new, blob)
        self.events.append((CHANGED, path))
        return {"stat": tree.stat(path, new)}

    def delete(self, op: Delete) -> dict:
        path = op.path
        rec = self._lookup(path)
        if path == "/":
            raise BadArgumentsError("the root cannot be deleted", path=path)
        tree = self.tree
        ppath = parent_of(path)
        parent = tree.get(ppath)
        if parent is not None:  # as ZooKeeper: the parent's ACL first (no existence leak)
            require(tree.acl(parent), self.auth, DELETE, ppath, "delete")
        rec = self._exists(rec, path)
        self._check_version(rec, op.version, path)
        kids = tree.children(path)
        if kids:
            if not op.recursive:
                raise NotEmptyError(f"{path} has {len(kids)} children", path=path)
            for p in tree.subtree_postorder(path):
                q = parent_of(p)
                require(tree.acl(tree.get(q)), self.auth, DELETE, q, "delete")
                self._remove(p)
        self._remove(path)
        return {}

    def check(self, op: Check) -> dict:
        rec = self._exists(self._lookup(op.path), op.path)
        require(self.tree.acl(rec), self.auth, READ, op.path, "check")
        self._check_version(rec, op.version, op.path)
        return {}

    def set_acl(self, op: SetACL) -> dict:
        path = op.path
        tree = self.tree
        rec = self._exists(self._lookup(path), path)
        require(tree.acl(rec), self.auth, ADMIN, path, "set_acl")
        cz, mz, pz, ct, mt, v, cv, o, av, w = fields(rec)
        if op.version != -1 and av != op.version:
            raise BadVersionError(f"the ACL of {path} is at version {av}, not {op.version}", path=path)
        number = tree.acls.number(expand(op.acl, self.auth))
        new = repack(rec, cz, mz, pz, ct, mt, v, cv, o, av + 1, number << 1 | w & EXTERNAL)
        self._put(path, new, tree.blobs[path] if w & EXTERNAL else None)
        return {"stat": tree.stat(path, new)}

    def multi(self, ops: tuple, sid: int) -> dict:
        results = []
        for i, op in enumerate(ops):
            try:
                results.append(self.run(op, sid))
            except CoordError as e:
                raise multi_failure(i, e, len(ops)) from None
        return {"results": results}

    def reap(self, paths: tuple[str, ...]) -> list[str]:
        """Delete those of ``paths`` that are due now (``due``); the others
        are left alone (a child was added, the node was changed or deleted
        since the leader looked).  Returns the deleted paths."""
        reaped = []
        for path in dict.fromkeys(paths):
            if due(self.tree, path, self.t):
                self._remove(path)
                reaped.append(path)
        return reaped

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
