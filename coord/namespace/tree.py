"""The node tree: each node a ``bytes`` record, in one dict of children per parent.

Layout::

    root    the root's record
    dirs    parent key -> {child name: record}, only for nodes that have
            children; the key is the parent's path, "" for the root:
            "/a" is dirs[""]["a"], "/a/b" is dirs["/a"]["b"]
    blobs   path -> data longer than records.INLINE_MAX
    acls    the AclTable behind the records' ACL numbers
    reapable  paths of the containers and TTL nodes (owner < 0): what the
            leader's reaper looks at, without a walk of the tree

Why this shape (measured with tracemalloc on the S1 tree, 1000 parents x
1000 children of 10 bytes): the flat index it replaces (full path -> a list,
child names in a set on the parent) held every name twice, once inside the
full-path key and once in the parent's set, and cost ~400 bytes a node live
(~900 in a server's RSS).  Here a node costs its record (120 bytes), its
name (~56 bytes for a short one) and its slot in the parent's dict (~30):
~210 bytes.  A listing is the parent's dict's keys, sorted on read, so a
write stays O(1).

Lookups are two dict lookups on two slices of the path (~0.3 us).  The
root's children sit under "" rather than "/", so the slices of a
non-canonical path ("//a", "/a/", "a") never name an existing parent and
child: a hit means the path is canonical, and only misses need checking.

``put`` is the only mutation (set, replace or remove one record) and keeps
the counts, data bytes, blobs and ACL references; the rules (versions,
ephemerals, ...) and undo belong to ``txn``, which puts old records back.
"""

from __future__ import annotations

from typing import Any, Iterator

from coord.namespace.acl import ACL, OPEN_ACL, AclTable, acl_from_wire
from coord.namespace.records import EXTERNAL, HDR, fields, make, owner

__all__ = ["PIECE", "Tree", "TreeBuilder", "join", "tree_from_columns"]

PIECE = 4096  # nodes per piece of a snapshot: one piece decodes in ~2 ms


def join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


def _key(path: str) -> str:
    """The key of ``path``'s children in ``Tree.dirs``."""
    return "" if path == "/" else path


def _word(rec: bytes) -> int:
    return fields(rec)[9]


class Tree:
    __slots__ = ("root", "dirs", "blobs", "acls", "count", "data_bytes", "reapable")

    def __init__(self) -> None:
        self.root: bytes = make(b"", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)[0]
        self.dirs: dict[str, dict[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.acls = AclTable()
        self.acls.ref(0)
        self.count = 1  # nodes, the root included
        self.data_bytes = 0  # sum of every node's data length (for metrics)
        self.reapable: set[str] = set()  # kept by txn, as sessions' ephemerals are

    def __len__(self) -> int:
        return self.count

    # -- reads -------------------------------------------------------------------
    def get(self, path: str) -> bytes | None:
        """The record at ``path``; None if there is none (or the path is not canonical)."""
        i = path.rfind("/")
        if i >= 0:
            kids = self.dirs.get(path[:i])
            if kids is not None:
                rec = kids.get(path[i + 1:])
                if rec is not None:
                    return rec
        return self.root if path == "/" else None

    def data(self, path: str, rec: bytes) -> bytes:
        if len(rec) > HDR:
            return rec[HDR:]
        return self.blobs[path] if _word(rec) & EXTERNAL else b""

    def stat(self, path: str, rec: bytes) -> list[int]:
        """The node's Stat as sent on the wire (protocol.STAT_FIELDS order)."""
        cz, mz, pz, ct, mt, v, cv, o, av, w = fields(rec)
        kids = self.dirs.get("" if path == "/" else path)
        return [cz, mz, pz, ct, mt, v, cv, o, len(self.blobs[path]) if w & EXTERNAL else len(rec) - HDR,
                len(kids) if kids else 0, av]

    def read(self, path: str, rec: bytes) -> tuple[bytes, list[int], ACL]:
        """(data, stat, ACL) of the node: what a ``get`` needs, in one unpack."""
        cz, mz, pz, ct, mt, v, cv, o, av, w = fields(rec)
        data = self.blobs[path] if w & EXTERNAL else rec[HDR:]
        kids = self.dirs.get("" if path == "/" else path)
        return (data, [cz, mz, pz, ct, mt, v, cv, o, len(data), len(kids) if kids else 0, av],
                self.acls.acls[w >> 1])

    def acl(self, rec: bytes) -> ACL:
        return self.acls.acls[_word(rec) >> 1]

    def children(self, path: str) -> dict[str, bytes] | None:
        """name -> record of ``path``'s children (None if it has none); do not modify."""
        return self.dirs.get(_key(path))

    def child_names(self, path: str) -> list[str]:
        kids = self.dirs.get(_key(path))
        return sorted(kids) if kids else []

    def walk(self) -> Iterator[tuple[str, bytes]]:
        """Every (path, record), each parent before its children."""
        yield "/", self.root
        dirs = self.dirs
        stack = [""] if "" in dirs else []
        while stack:
            key = stack.pop()
            for name, rec in dirs[key].items():
                p = key + "/" + name
                yield p, rec
                if p in dirs:
                    stack.append(p)

    def subtree_postorder(self, path: str) -> list[str]:
        """Every path under ``path`` (excluded), each after all its descendants."""
        out: list[str] = []
        stack = [path]
        dirs = self.dirs
        while stack:
            p = stack.pop()
            kids = dirs.get(_key(p))
            if kids:
                for name in sorted(kids):
                    c = join(p, name)
                    out.append(c)
                    stack.append(c)
        out.reverse()  # reversed pre-order: descendants before ancestors
        return out

    # -- the one mutation ------------------------------------------------------------
    def put(self, path: str, rec: bytes | None, blob: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """Set the record at ``path`` (its parent exists), or remove it
        (``rec`` None; it has no children).  ``blob`` is the data of an
        EXTERNAL record.  Returns the old (record, blob), which put back
        undo this."""
        blobs = self.blobs
        if path == "/":
            old = self.root
            if rec is None:
                raise ValueError("the root cannot be removed")
            self.root = rec
        else:
            i = path.rfind("/")
            key, name = path[:i], path[i + 1:]
            kids = self.dirs.get(key)
            if rec is None:
                old = kids.pop(name)
                if not kids:
                    del self.dirs[key]
                self.count -= 1
            else:
                if kids is None:
                    kids = self.dirs[key] = {}
                    old = None
                else:
                    old = kids.get(name)
                kids[name] = rec
                if old is None:
                    self.count += 1
        old_blob = None
        if rec is not None:
            w = _word(rec)
            self.acls.ref(w >> 1)  # before the old one's unref: it may be the same ACL
            if w & EXTERNAL:
                self.data_bytes += len(blob)
            else:
                self.data_bytes += len(rec) - HDR
        else:
            w = 0
        if old is not None:
            ow = _word(old)
            if ow & EXTERNAL:
                old_blob = blobs.pop(path)
                self.data_bytes -= len(old_blob)
            else:
                self.data_bytes -= len(old) - HDR
            self.acls.unref(ow >> 1)
        if w & EXTERNAL:
            blobs[path] = blob
        return old, old_blob

    # -- snapshot ("coord-namespace/3") ------------------------------------------------
    def export(self) -> dict[str, Any]:
        """The tree as snapshot fields: the root's record, [path, data] per
        blob, the ACL table, and the children as pieces (``pieces``): lists
        of the objects the tree holds, so encoding them is one pass in C."""
        return {"root": self.root, "blobs": [[p, d] for p, d in self.blobs.items()], "acls": self.acls.to_wire(),
                "reapable": sorted(self.reapable)}

    def pieces(self, size: int = PIECE) -> Iterator[list[list]]:
        """The children as pieces of about ``size`` nodes each: lists of
        [key, names, records] rows (a large parent's children span several
        rows and pieces), parents' rows in the dicts' order.  Each piece is
        encoded on its own, so a restore can decode one at a time and let the
        event loop run in between (``TreeBuilder``)."""
        piece: list[list] = []
        n = 0
        for key, kids in self.dirs.items():
            names, recs = list(kids), list(kids.values())
            for i in range(0, len(names), size):
                piece.append([key, names[i:i + size], recs[i:i + size]])
                n += len(piece[-1][1])
                if n >= size:
                    yield piece
                    piece, n = [], 0
        if piece:
            yield piece


class TreeBuilder:
    """Builds a Tree from format /3 fields, one piece of children at a time
    (``add``), then checks the whole and hands it over (``finish``).  The
    checks are of structure (types, sizes, every parent present, the ACL
    counts adding up) and run in C passes; the bytes inside records are
    trusted, as the snapshot file's CRC covers them.  Raises ValueError."""

    __slots__ = ("dirs", "count", "nbytes")

    def __init__(self) -> None:
        self.dirs: dict[str, dict[str, bytes]] = {}
        self.count = 1
        self.nbytes = 0

    def add(self, rows: Any) -> int:
        """One decoded piece: [[key, names, records], ...]; returns its nodes."""
        added = 0
        try:
            for key, names, recs in rows:
                if type(key) is not str or type(names) is not list or type(recs) is not list:
                    raise ValueError(f"bad children row {key!r}")
                n = len(names)
                if not n or len(recs) != n:
                    raise ValueError(f"children of {key!r}: {n} names, {len(recs)} records")
                if set(map(type, names)) != {str} or set(map(type, recs)) != {bytes}:
                    raise ValueError(f"children of {key!r}: names must be text, records bytes")
                if min(map(len, names)) < 1 or min(map(len, recs)) < HDR or "/" in "".join(names):
                    raise ValueError(f"children of {key!r}: an empty name, a name with '/' or a short record")
                kids = self.dirs.get(key)
                if kids is None:
                    kids = self.dirs[key] = dict(zip(names, recs))
                    grew = len(kids)
                else:
                    before = len(kids)
                    kids.update(zip(names, recs))
                    grew = len(kids) - before
                if grew != n:
                    raise ValueError(f"children of {key!r}: a name twice")
                self.nbytes += sum(map(len, recs)) - HDR * n
                added += n
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad children in snapshot: {e}") from None
        self.count += added
        return added

    def finish(self, d: dict) -> Tree:
        """The tree, given the other fields (root, blobs, acls)."""
        try:
            root, blob_rows, acl_raw = d["root"], d["blobs"], d["acls"]
            if type(root) is not bytes or len(root) < HDR:
                raise ValueError("bad root record")
            dirs = self.dirs
            for key in dirs:
                i = key.rfind("/")
                if key and (i < 0 or key[i + 1:] not in dirs.get(key[:i], ())):
                    raise ValueError(f"children of {key!r}, a node that does not exist")
            tree = Tree.__new__(Tree)
            tree.root, tree.dirs, tree.blobs, tree.count = root, dirs, {}, self.count
            nbytes = self.nbytes + len(root) - HDR
            for path, data in blob_rows:
                rec = tree.get(path) if type(path) is str else None
                if rec is None or type(data) is not bytes or len(rec) != HDR or not _word(rec) & EXTERNAL:
                    raise ValueError(f"data for {path!r}, which is not a node with external data")
                tree.blobs[path] = data
                nbytes += len(data)
            tree.acls = AclTable.from_wire(acl_raw, self.count)
            tree.data_bytes = nbytes
            tree.reapable = set(d.get("reapable", ()))  # absent: written before containers and TTL nodes
            for path in tree.reapable:
                rec = tree.get(path) if type(path) is str else None
                if rec is None or path == "/" or owner(rec) >= 0:
                    raise ValueError(f"{path!r} listed as a container or TTL node, which it is not")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad node fields in snapshot: {e}") from None
        return tree


def tree_from_columns(paths: list, datas: list, ints: list,
                      access: dict | None = None) -> tuple[Tree, list[tuple[str, int]]]:
    """Rebuild from the columns of formats /1 and /2: paths (parents
    first), data, 8 ints per node (czxid mzxid pzxid ctime mtime version
    cversion owner), and (/2) the access columns; also returns the
    ephemerals as (path, owner).  Without ``access`` every node is open.
    Raises ValueError on inconsistent columns."""
    n = len(paths)
    if not n or paths[0] != "/" or len(datas) != n or len(ints) != n * 8:
        raise ValueError("inconsistent node columns")
    acls, index, aversions = _legacy_access(access, n)
    numbers: list[int | None] = [None] * len(acls)
    tree = Tree()
    tree.acls.unref(0)
    tree.count = 0
    dirs, blobs = tree.dirs, tree.blobs
    ephemerals: list[tuple[str, int]] = []
    it = iter(ints)
    try:
        for k, (p, d, cz, mz, pz, ct, mt, v, cv, o) in enumerate(zip(paths, datas, it, it, it, it, it, it, it, it)):
            j = index[k] if index else 0
            num = numbers[j]
            if num is None:
                num = numbers[j] = tree.acls.number(acls[j])
            tree.acls.ref(num)
            rec, blob = make(d, cz, mz, pz, ct, mt, v, cv, o, aversions[k] if aversions else 0, num)
            if blob is not None:
                blobs[p] = blob
            tree.data_bytes += len(d)
            tree.count += 1
            if k == 0:
                tree.root = rec
                continue
            i = p.rfind("/")
            key, name = p[:i], p[i + 1:]
            if not name or key == "/" or tree.get(key or "/") is None:
                raise ValueError(f"{p!r} is not a path under an existing node")
            kids = dirs.get(key)
            if kids is None:
                kids = dirs[key] = {}
            if name in kids:
                raise ValueError(f"{p!r} twice")
            kids[name] = rec
            if o > 0:
                ephemerals.append((p, o))
    except Exception as e:  # TypeError, struct.error, ...: a damaged snapshot
        raise ValueError(f"bad node in snapshot: {e!r}") from None
    return tree, ephemerals


def _legacy_access(access: dict | None, n: int) -> tuple[list[ACL], list[int], list[int]]:
    """(distinct ACLs, ACL index per node, aversion per node) of format /2's
    access columns; the two lists are empty when every node is open at
    aversion 0 (and for format /1, which has no access columns)."""
    if access is None:
        return [OPEN_ACL], [], []
    try:
        acls = [acl_from_wire(a) for a in access["acls"]]
        acls = [OPEN_ACL if a == OPEN_ACL else a for a in acls]
        index, aversions = access["acl_index"], access["aversion"]
    except Exception as e:  # KeyError, TypeError, InvalidACLError: a damaged snapshot
        raise ValueError(f"bad access columns in snapshot: {e!r}") from None
    if not index and not aversions:
        return [OPEN_ACL], [], []
    if len(index) != n or len(aversions) != n or not acls or not all(type(i) is int and 0 <= i < len(acls)
                                                                       for i in index):
        raise ValueError("inconsistent access columns")
    return acls, index, aversions
