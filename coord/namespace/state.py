"""The replicated state machine of coord: the node tree and the session table.

Every server applies the same Raft entries in the same order and must end in
the same state, so ``apply`` is a function of (state, entry) alone: time
comes inside the command ("t", the leader's clock), ids from the entry's
index (the zxid), nothing that reaches the state, a result or an event
depends on hash or dict iteration order (it is sorted first), and there are
no floats.

``apply`` never raises for a bad command: malformed or refused commands get
an error result and change nothing, because the same bytes are refused the
same way on every server.  Reads are plain method calls raising
``coordclient.errors`` exceptions; the server decides when a read may run.

Results (plain CBOR-friendly dicts)::

    {"ok": True, "r": r, "zxid": z}   create {"path", "stat"}; set {"stat"}; delete {};
                           multi {"results": [r per op; check -> {}]};
                           session_open {"sid", "timeout_ms"}; session_close {};
                           session_expire {"expired": [sids that existed]}
    {"ok": False, "err": Err value, "msg": str, "path": str | None}
                           a failed multi adds "index" and "results" (one
                           {"err", "msg", "path"} per op: the failing op's
                           error, RuntimeInconsistency for the others)

Stats are lists in ``protocol.STAT_FIELDS`` order.
"""

from __future__ import annotations

import gc
import heapq
import io
import logging
from typing import Any, Callable, Iterator

import cbor2

from coord.namespace.acl import ADMIN, READ, UNCHECKED, Auth, acl_to_wire, allowed
from coord.namespace.commands import Command, LogCommand, decode_entry
from coord.namespace.history import Event, EventHistory
from coord.namespace.sessions import DEFAULT_DEDUP_WINDOW, SessionTable
from coord.namespace.tree import Tree, TreeBuilder, join, tree_from_columns
from coord.namespace.txn import Txn, due, require
from coord.raft.types import Entry, EntryKind
from coordclient.errors import CoordError, InvalidPathError, MultiError, NoAuthError, NoNodeError, SessionExpiredError
from coordclient.protocol import DEFAULT_MAX_DATA, parent_of, validate_path

log = logging.getLogger("coord.namespace")

SNAPSHOT_FORMAT = "coord-namespace/3"  # /2 (node columns) and /1 (/2 before ACLs) are still read
_OLD_FORMATS = ("coord-namespace/2", "coord-namespace/1")
DEFAULT_HISTORY = 100_000

EventListener = Callable[[int, list[tuple[str, str]]], None]


def error_result(e: CoordError) -> dict:
    """The result of a refused command, as its proposer receives it."""
    if isinstance(e, MultiError) and e.cause is not None:
        c = e.cause
        return {"ok": False, "err": c.code.value, "msg": c.message, "path": c.path,
                "index": e.index, "results": e.results}
    return {"ok": False, "err": e.code.value, "msg": e.message, "path": e.path}


class NamespaceStateMachine:
    """apply/snapshot/restore for the Raft driver, reads for the server.

    ``on_events(zxid, [(type, path), ...])`` is called after each applied
    command that emitted events (and never for one that failed or was a
    duplicate); ``events_since`` replays the same events from a bounded
    history.
    """

    def __init__(self, *, max_data_bytes: int = DEFAULT_MAX_DATA, history_size: int = DEFAULT_HISTORY,
                 dedup_window: int = DEFAULT_DEDUP_WINDOW, on_events: EventListener | None = None) -> None:
        self.max_data_bytes = max_data_bytes
        self.on_events = on_events
        self._tree = Tree()
        self._sessions = SessionTable(dedup_window)
        self._session_epoch = 0  # bumped when a snapshot replaces the session table
        self._history = EventHistory(history_size)
        self._last_zxid = 0
        self._ops = {
            "create": lambda cmd, txn: txn.create(cmd.body, cmd.sid),
            "delete": lambda cmd, txn: txn.delete(cmd.body),
            "set": lambda cmd, txn: txn.set(cmd.body),
            "multi": lambda cmd, txn: txn.multi(cmd.body.ops, cmd.sid),
            "set_acl": lambda cmd, txn: txn.set_acl(cmd.body),
            "add_auth": self._add_auth,
            "session_open": self._session_open,
            "session_close": self._session_close,
            "session_expire": self._session_expire,
            "reap": lambda cmd, txn: {"reaped": txn.reap(cmd.body.paths)},
        }

    # ------------------------------------------------------------------
    # applying
    # ------------------------------------------------------------------
    @property
    def last_zxid(self) -> int:
        """Index of the last entry applied or noted (changing anything or not)."""
        return self._last_zxid

    def note_zxid(self, index: int) -> None:
        """Account for a log entry that is not a command (no-op, configuration)."""
        if index > self._last_zxid:
            self._last_zxid = index

    def apply(self, entry: Entry) -> dict | None:
        if entry.kind != EntryKind.NORMAL:
            self.note_zxid(entry.index)
            return None
        return self.apply_logged(decode_entry(entry.data), entry.index)

    def apply_logged(self, lc: LogCommand, zxid: int) -> dict:
        """Apply the decoded command of the NORMAL entry at ``zxid``."""
        if lc.error is not None:
            result, events = error_result(lc.error), None
        else:
            result, events = self._execute(lc.command, zxid)
        self._last_zxid = zxid
        if events:
            self._history.add(zxid, events)
            if self.on_events is not None:
                try:
                    self.on_events(zxid, events)
                except Exception:  # the change is applied either way; a listener bug must not look like a failed write
                    log.exception("event listener failed at zxid %d", zxid)
        return result

    def _execute(self, cmd: Command, zxid: int) -> tuple[dict, list | None]:
        session = None
        if cmd.sid:
            session = self._sessions.get(cmd.sid)
            if session is None:
                return error_result(SessionExpiredError(f"session {cmd.sid:#x} does not exist")), None
            session.last_t = cmd.t
            if cmd.dedup:
                try:
                    prior = session.recall(cmd.seq)
                except CoordError as e:
                    return error_result(e), None
                if prior is not None:
                    return prior, None
        txn = Txn(self._tree, self._sessions, zxid, cmd.t, self.max_data_bytes,
                  UNCHECKED if cmd.auth is None else cmd.auth)
        try:
            r = self._ops[cmd.op](cmd, txn)
        except CoordError as e:
            txn.rollback()
            result, events = error_result(e), None
        except BaseException:
            txn.rollback()  # a bug must not leave half a command behind
            raise
        else:
            result, events = {"ok": True, "r": r, "zxid": zxid}, txn.events  # zxid: a retry answers the original's
        if cmd.dedup:
            session.remember(cmd.seq, result, self._sessions.window)  # encoded: callers keep this copy
        return result, events

    def _session_open(self, cmd: Command, txn: Txn) -> dict:
        body = cmd.body
        self._sessions.open(txn.zxid, body.timeout_ms, body.secret, cmd.t)
        return {"sid": txn.zxid, "timeout_ms": body.timeout_ms}

    def _add_auth(self, cmd: Command, txn: Txn) -> dict:
        if not cmd.sid:
            raise SessionExpiredError("no session to add an identity to")
        txn.add_session_ids(cmd.sid, cmd.body.ids)
        return {}

    def _session_close(self, cmd: Command, txn: Txn) -> dict:
        if not cmd.sid:
            raise SessionExpiredError("no session to close")
        txn.drop_session(cmd.sid)
        return {}

    def _session_expire(self, cmd: Command, txn: Txn) -> dict:
        expired = []
        for sid in dict.fromkeys(cmd.body.sids):  # in the command's order, once each
            if self._sessions.get(sid) is not None:
                txn.drop_session(sid)
                expired.append(sid)
        return {"expired": expired}

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------
    def _lookup(self, path: Any) -> bytes | None:
        if type(path) is str:
            rec = self._tree.get(path)
            if rec is not None:  # valid: it was checked when created
                return rec
        why = validate_path(path)
        if why is not None:
            raise InvalidPathError(f"{why}: {path!r}"[:300], path=path if isinstance(path, str) else None)
        return None

    def _node(self, path: Any) -> bytes:
        rec = self._lookup(path)
        if rec is None:
            raise NoNodeError(f"{path} does not exist", path=path)
        return rec

    def get(self, path: str, auth: Auth = UNCHECKED) -> tuple[bytes, list[int]]:
        data, stat, acl = self._tree.read(path, self._node(path))
        require(acl, auth, READ, path, "get")
        return data, stat

    def exists(self, path: str) -> list[int] | None:
        """Needs no permission (as in ZooKeeper)."""
        rec = self._lookup(path)
        return None if rec is None else self._tree.stat(path, rec)

    def children(self, path: str, auth: Auth = UNCHECKED) -> list[str]:
        tree = self._tree
        require(tree.acl(self._node(path)), auth, READ, path, "children")
        kids = tree.dirs.get("" if path == "/" else path)
        return sorted(kids) if kids else []

    def children_with_stats(self, path: str, auth: Auth = UNCHECKED) -> list[tuple[str, list[int]]]:
        names = self.children(path, auth)
        tree = self._tree
        kids = tree.children(path) or {}
        return [(name, tree.stat(join(path, name), kids[name])) for name in names]

    def get_acl(self, path: str, auth: Auth = UNCHECKED) -> tuple[list, list[int]]:
        """(ACL in wire form, stat); needs READ or ADMIN on the node."""
        rec = self._node(path)
        acl = self._tree.acl(rec)
        if not (allowed(acl, auth, READ) or allowed(acl, auth, ADMIN)):
            raise NoAuthError(f"get_acl needs READ or ADMIN permission on {path}", path=path)
        return acl_to_wire(acl), self._tree.stat(path, rec)

    def descendant_count(self, path: str, auth: Auth = UNCHECKED) -> int:
        """Nodes under ``path``, itself excluded (ZooKeeper's
        getAllChildrenNumber); needs READ on the node.  O(subtree)."""
        tree = self._tree
        require(tree.acl(self._node(path)), auth, READ, path, "descendants")
        dirs = tree.dirs
        n = 0
        top = "" if path == "/" else path
        stack = [top] if top in dirs else []
        while stack:
            key = stack.pop()
            kids = dirs[key]
            n += len(kids)
            stack.extend(c for c in (key + "/" + name for name in kids) if c in dirs)
        return n

    def ephemerals(self, sid: int, prefix: str = "/") -> list[str]:
        """The session's ephemeral nodes whose path starts with ``prefix``
        (as a string, as ZooKeeper's getEphemerals), sorted."""
        s = self._sessions.get(sid)
        if s is None:
            return []
        if prefix in ("", "/"):
            return sorted(s.ephemerals)
        return sorted(p for p in s.ephemerals if p.startswith(prefix))

    def reap_candidates(self, now_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` containers and TTL nodes due at ``now_ms`` (the
        leader proposes their ``reap``; applying it checks again)."""
        tree = self._tree
        out = []
        for path in tree.reapable:
            if due(tree, path, now_ms):
                out.append(path)
                if len(out) >= limit:
                    break
        return sorted(out)

    @property
    def reapable_count(self) -> int:
        return len(self._tree.reapable)

    def may_read(self, path: str, auth: Auth) -> bool:
        """Whether ``auth`` may know about a change at ``path`` (a watch event):
        READ on the node, or, once it is gone, on its nearest ancestor (whose
        children listing would show the deletion)."""
        if auth.superuser:
            return True
        tree = self._tree
        rec = tree.get(path)
        while rec is None and path != "/":
            path = parent_of(path)
            rec = tree.get(path)
        return rec is not None and allowed(tree.acl(rec), auth, READ)

    def session_ids(self, sid: int) -> tuple[tuple[str, str], ...]:
        """The identities a session added with add_auth (replicated)."""
        s = self._sessions.get(sid)
        return s.ids if s is not None else ()

    @property
    def node_count(self) -> int:
        """Number of nodes, the root included."""
        return len(self._tree)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def data_bytes(self) -> int:
        """Bytes of node data in the whole tree (kept by every change, O(1))."""
        return self._tree.data_bytes

    @property
    def ephemeral_count(self) -> int:
        """Ephemeral nodes (one pass over the sessions, not the tree)."""
        return sum(len(s.ephemerals) for s in self._sessions.by_id.values())

    def children_page(self, path: str, after: str = "", limit: int = 100) -> tuple[list[str], int]:
        """At most ``limit`` child names of ``path`` greater than ``after``,
        sorted, and the number of children.  One pass over the children and
        a partial sort: a page of a node with a million children does not
        sort the million."""
        self._node(path)
        kids = self._tree.children(path) or ()
        if after:
            return heapq.nsmallest(limit, (k for k in kids if k > after)), len(kids)
        return heapq.nsmallest(limit, kids), len(kids)

    def sessions(self) -> dict[int, tuple[int, bytes]]:
        """sid -> (timeout_ms, secret) of every live session, by sid."""
        return {sid: (s.timeout_ms, s.secret) for sid, s in sorted(self._sessions.by_id.items())}

    def session(self, sid: int) -> tuple[int, bytes] | None:
        """(timeout_ms, secret) of one live session, or None."""
        s = self._sessions.get(sid)
        return None if s is None else (s.timeout_ms, s.secret)

    def session_timeouts(self) -> dict[int, int]:
        """sid -> timeout_ms of every live session (unordered)."""
        return {sid: s.timeout_ms for sid, s in self._sessions.by_id.items()}

    def sessions_version(self) -> tuple[int, int]:
        """Changes whenever a session opens or ends (or a snapshot replaces
        the table): cheap to poll, so the leader rescans only then."""
        return self._session_epoch, self._sessions.changes

    def session_exists(self, sid: int) -> bool:
        return self._sessions.get(sid) is not None

    def session_last_t(self, sid: int) -> int | None:
        """The leader's clock ("t") in the last command carrying this session."""
        s = self._sessions.get(sid)
        return None if s is None else s.last_t

    def ephemerals_of(self, sid: int) -> list[str]:
        s = self._sessions.get(sid)
        return sorted(s.ephemerals) if s is not None else []

    def events_since(self, zxid: int) -> list[Event] | None:
        """Every event after ``zxid`` as (zxid, type, path), oldest first; None
        if the history no longer reaches back that far (re-read instead)."""
        return self._history.since(zxid)

    def dump(self) -> dict:
        """The whole replicated state in a canonical form (for comparisons)."""
        tree = self._tree
        nodes = {p: (tree.data(p, r), tree.stat(p, r), tree.child_names(p), acl_to_wire(tree.acl(r)))
                 for p, r in sorted(tree.walk())}
        sessions = {sid: (s.timeout_ms, s.secret, s.last_t, sorted(s.ephemerals), s.floor,
                          [(seq, cbor2.loads(r)) for seq, r in sorted(s.results.items())],
                          s.ids)
                    for sid, s in sorted(self._sessions.by_id.items())}
        return {"last_zxid": self._last_zxid, "nodes": nodes, "sessions": sessions}

    # ------------------------------------------------------------------
    # snapshots
    # ------------------------------------------------------------------
    def snapshot(self, *, redact_secrets: bool = False) -> bytes:
        """Format "coord-namespace/3", a sequence of CBOR items: a header
        map (format, zxid, the tree's fields from ``Tree.export``, sessions
        as rows with their ephemerals, and how many pieces follow), then the
        children in pieces of ~4,096 nodes (``Tree.pieces``), so that
        ``restore_steps`` can decode one piece at a time.
        ``redact_secrets``: session secrets left out (a copy for an
        operator, never for a server to restore: those sessions could not
        resume)."""
        enabled = gc.isenabled()
        gc.disable()  # the lists built here hold no cycles; a collection would only walk the tree
        try:
            tree = self._tree
            pieces = [cbor2.dumps(piece) for piece in tree.pieces()]
            header = cbor2.dumps({"format": SNAPSHOT_FORMAT, "zxid": self._last_zxid, **tree.export(),
                                  "sessions": self._sessions.to_rows(redact_secrets=redact_secrets),
                                  "pieces": len(pieces)})
            return b"".join([header, *pieces])
        finally:
            if enabled:
                gc.enable()

    def restore(self, data: bytes | memoryview) -> None:
        """Replace the whole state by a snapshot's; the history restarts empty
        at its zxid.  Empty data means the initial state.  Raises ValueError
        (state unchanged) on a snapshot that is not ours or is damaged."""
        enabled = gc.isenabled()
        gc.disable()  # decoding makes a million objects, none in a cycle: collections would be wasted
        try:
            for _ in self.restore_steps(data):
                pass
        finally:
            if enabled:
                gc.enable()

    def restore_steps(self, data: bytes | memoryview) -> Iterator[None]:
        """``restore`` in steps of bounded work (one piece of ~4,096 nodes,
        a few ms), for a caller that lets its event loop run between them:
        installing a 1M-node snapshot held a follower's loop ~0.5 s in one
        go.  The items are decoded from ``data`` in place, never copied
        whole.  The state changes only at the end, all at once; until then
        reads see the old state.  Raises ValueError as ``restore``; nothing
        else may change this state machine while the steps run."""
        if not len(data):
            self._install(Tree(), SessionTable(self._sessions.window), 0)
            return
        decoder, fp = _decoder(data)
        d = _next_item(decoder, "namespace snapshot is not CBOR")
        fmt = d.get("format") if type(d) is dict else None
        if fmt != SNAPSHOT_FORMAT and fmt not in _OLD_FORMATS:
            raise ValueError("not a namespace snapshot")
        yield
        try:
            zxid = d["zxid"]
            if type(zxid) is not int:
                raise ValueError("bad zxid")
            sessions = SessionTable.from_rows(d["sessions"], self._sessions.window)
            if fmt != SNAPSHOT_FORMAT:
                tree, ephemerals = tree_from_columns(d["paths"], d["data"], d["ints"], d.get("access"))
                for path, owner in ephemerals:
                    sessions.by_id[owner].ephemerals.add(path)
            else:
                builder = TreeBuilder()
                count = d["pieces"]
                if type(count) is not int or count < 0:
                    raise ValueError("bad count of pieces")
                for _ in range(count):
                    builder.add(_next_item(decoder, "a piece of children is not CBOR"))
                    yield
                tree = builder.finish(d)
                for s in sessions.by_id.values():
                    if any(tree.get(p) is None for p in s.ephemerals):
                        raise ValueError("an ephemeral node that does not exist")
            if fp.read(1):
                raise ValueError("data after the snapshot's last item")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"damaged namespace snapshot: {e!r}") from None
        self._install(tree, sessions, zxid)

    def _install(self, tree: Tree, sessions: SessionTable, zxid: int) -> None:
        self._tree, self._sessions, self._last_zxid = tree, sessions, zxid
        self._session_epoch += 1
        self._history.reset(zxid)


class _View(io.RawIOBase):
    """A buffer (a memoryview of a mapped file, say) as a raw stream."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        chunk = self._data[self._pos:self._pos + len(buf)]
        n = len(chunk)
        buf[:n] = chunk
        self._pos += n
        return n


def _decoder(data: bytes | memoryview) -> tuple[cbor2.CBORDecoder, io.IOBase]:
    """A decoder of the CBOR items in ``data``, one at a time, copying only
    what each item needs: ``bytes`` are read in place, anything else (a
    mapped file) through a 1 MiB buffer."""
    fp = io.BytesIO(data) if type(data) is bytes else io.BufferedReader(_View(data), 1 << 20)
    return cbor2.CBORDecoder(fp), fp


def _next_item(decoder: cbor2.CBORDecoder, what: str) -> Any:
    try:
        return decoder.decode()
    except Exception as e:  # CBORDecodeError, EOFError, ...: cbor2 raises several types on garbage
        raise ValueError(f"{what}: {e}") from None
