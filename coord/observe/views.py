"""Read-only views of the namespace for the dashboard: tree, sessions,
locks and elections.

Views that show nodes take the requester's ``Auth`` and follow the ACLs as
a client's reads do (``namespace.acl``): a node's data, ACL and children
need READ on it (``NoAuthError`` otherwise, which the HTTP port answers
with 403); a lock or election is listed only if its parent node, whose
children make up the queue, is readable.  Who may see sessions at all is
the HTTP port's admin rule, not a view's business.

Each view is a synchronous read of this server's applied state (no await
inside, so it is one consistent moment) and bounded: children and sessions
are paged (``MAX_PAGE``), data previews are cut at ``PREVIEW_BYTES``, and
the lock/election finder looks only at ephemeral nodes (recipe
participants are always ephemeral), at most ``MAX_RECIPES`` queues of at
most ``MAX_QUEUE`` entries.  Session secrets are never part of any view.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from coord.namespace.acl import UNCHECKED, Auth, perms_text
from coordclient.errors import CoordError, NoAuthError
from coordclient.protocol import STAT_FIELDS, validate_path
from coordclient.types import Stat
from coordclient.recipes._core import parse as parse_participant

MAX_PAGE = 500
PREVIEW_BYTES = 4096
MAX_RECIPES = 200
MAX_QUEUE = 200
MAX_SCAN = 10_000  # children listed to find a queue's order
MAX_CONNECTIONS = 5000  # rows of one server's connections list (here, or a member's answer)


class ViewError(Exception):
    """A bad request for a view (bad path, no such node): becomes a 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_path(path: str) -> str:
    why = validate_path(path)
    if why is not None:
        raise ViewError(400, f"{why}: {path[:200]!r}")
    return path


def named_stat(stat: list[int]) -> dict[str, Any]:
    """The stat as a map, plus ``kind`` (ephemeral, container, ttl,
    persistent) and a TTL node's ``ttl_ms``: a browser cannot read the
    owner markers itself (they need 64 bits; JavaScript numbers have 53)."""
    d: dict[str, Any] = dict(zip(STAT_FIELDS, stat))
    st = Stat(*stat)
    d["kind"] = st.kind
    if st.ttl is not None:
        d["ttl_ms"] = round(st.ttl * 1000)
    return d


def _as_text(head: bytes, cut: bool) -> str | None:
    """``head`` as text if it is printable UTF-8 (a character cut at the
    end of a truncated preview is dropped), else None."""
    for trim in range(4 if cut else 1):
        try:
            text = head[:len(head) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if all(c.isprintable() or c in "\t\n\r" for c in text):
            return text
        return None
    return None


def preview(data: bytes) -> dict[str, Any]:
    """The start of a node's data as text when it is printable UTF-8, else as hex."""
    head = data[:PREVIEW_BYTES]
    text = _as_text(head, len(data) > len(head))
    if text is not None:
        return {"size": len(data), "encoding": "text", "text": text, "truncated": len(data) > len(head)}
    return {"size": len(data), "encoding": "hex", "hex": data[:1024].hex(), "truncated": len(data) > 1024}


def acl_texts(acl_wire: list) -> list[str]:
    """An ACL in ZooKeeper's text form, ``scheme:id:perms`` (``world:anyone:cdrwa``)."""
    return [f"{scheme}:{ident}:{perms_text(perms)}" for perms, scheme, ident in acl_wire]


def node_view(ns: Any, path: str, after: str = "", limit: int = 100, auth: Auth = UNCHECKED) -> dict[str, Any]:
    """One node: data preview, ACL, full stat, and one page of its children
    (names after ``after``, in order; ``next`` is the cursor of the next
    page).  Needs READ on the node (``NoAuthError``)."""
    check_path(path)
    try:
        data, stat = ns.get(path, auth)
        acl, _ = ns.get_acl(path, auth)
        names, total = ns.children_page(path, after, limit + 1)
    except NoAuthError:
        raise
    except CoordError as e:
        raise ViewError(404, e.message or str(e)) from None
    more = len(names) > limit
    names = names[:limit]
    children = []
    for name in names:
        st = ns.exists(path.rstrip("/") + "/" + name)
        if st is not None:
            named = named_stat(st)
            children.append({"name": name, "num_children": named["num_children"],
                             "data_length": named["data_length"], "ephemeral_owner": named["ephemeral_owner"],
                             "kind": named["kind"]})
    return {
        "path": path, "stat": named_stat(stat), "data": preview(data), "acl": acl_texts(acl), "zxid": ns.last_zxid,
        "children": children, "total_children": total, "next": names[-1] if more else None,
    }


def sessions_view(ns: Any, after: int = 0, limit: int = 100,
                  connections: dict[int, dict] | None = None) -> dict[str, Any]:
    """A page of live sessions by id: timeout, ephemerals, and where known
    the client's address, its server and its watch count."""
    timeouts = ns.session_timeouts()
    sids = sorted(sid for sid in timeouts if sid > after)
    page = sids[:limit]
    connections = connections or {}
    rows = []
    for sid in page:
        eph = ns.ephemerals_of(sid)
        row: dict[str, Any] = {"id": f"{sid:#x}", "sid": sid, "timeout_ms": timeouts[sid],
                               "ephemerals": len(eph), "ephemeral_paths": eph[:20]}
        conn = connections.get(sid)
        if conn is not None:
            row.update(client=conn.get("client"), server=conn.get("server"), watches=conn.get("watches"))
        rows.append(row)
    return {"sessions": rows, "total": len(timeouts), "next": page[-1] if len(sids) > limit else None}


def local_connections(service: Any, limit: int = MAX_CONNECTIONS) -> list[dict[str, Any]]:
    """This server's client connections that have a session (no secrets),
    at most ``limit`` of them."""
    out: list[dict[str, Any]] = []
    for conn in list(service.connections):
        if len(out) >= limit:
            break
        sid = getattr(conn, "sid", 0)
        if sid:
            out.append({"sid": sid, "client": getattr(conn, "peer", "?"), "server": service.server_id,
                        "watches": service.watches.count_of(conn)})
    return out


def _stat_of(ns: Any, path: str) -> dict[str, int] | None:
    st = ns.exists(path)
    return named_stat(st) if st is not None else None


def recipes_view(ns: Any, auth: Auth = UNCHECKED) -> dict[str, Any]:
    """Locks, read/write locks, semaphores and elections, found from the
    recipes' node names (docs/recipes.md): a queue is the set of ephemeral
    sequential children of one path named ``<kind>-<session>-<nonce>-...``.
    Only queues whose parent ``auth`` may READ (it lists their children)."""
    parents: dict[str, None] = {}
    for sid in sorted(ns.session_timeouts()):
        for p in ns.ephemerals_of(sid):
            i = p.rfind("/")
            if parse_participant(p[i + 1:]) is not None:
                parents.setdefault(p[:i] or "/", None)
            if len(parents) >= MAX_RECIPES:
                break
    recipes = []
    for parent in sorted(parents):
        st = _stat_of(ns, parent)
        if st is None or not ns.may_read(parent, auth):  # the parent exists: READ on it
            continue
        if st["num_children"] > MAX_SCAN:
            recipes.append({"path": parent, "kind": "unknown", "queue": [], "total": st["num_children"],
                            "note": f"more than {MAX_SCAN} children: not listed"})
            continue
        names, _ = ns.children_page(parent, "", MAX_SCAN)
        entries = sorted((e for e in map(parse_participant, names) if e is not None), key=lambda e: e.seq)
        recipes.append(_describe(ns, parent, entries[:MAX_QUEUE], len(entries)))
    return {"recipes": recipes, "truncated": len(parents) >= MAX_RECIPES}


def _describe(ns: Any, parent: str, entries: list, total: int) -> dict[str, Any]:
    kinds = {e.kind for e in entries}
    if kinds == {"cand"}:
        kind = "election"
    elif kinds <= {"read", "write"}:
        kind = "rwlock"
    elif kinds == {"permit"}:
        kind = "semaphore"
    else:
        kind = "lock"
    queue = []
    writer_ahead = False
    for pos, e in enumerate(entries):
        st = _stat_of(ns, f"{parent}/{e.name}") or {}
        owner = st.get("ephemeral_owner", 0)
        if e.kind == "permit":
            state = "queued"  # how many permits exist only the participants know
        elif e.kind == "read":
            state = "waiting" if writer_ahead else "holding"
        else:
            state = "holding" if pos == 0 else "waiting"
        if e.kind != "read":
            writer_ahead = True
        item = {"node": e.name, "kind": e.kind, "seq": e.seq, "session": f"{owner:#x}", "state": state,
                "token": st.get("czxid")}
        if e.kind == "cand":
            item["identity"] = unquote(e.extra or "")
            item["state"] = "leader" if pos == 0 else "candidate"
        queue.append(item)
    out: dict[str, Any] = {"path": parent, "kind": kind, "queue": queue, "total": total}
    if kind == "election" and queue:
        out["leader"] = queue[0].get("identity")
    return out
