"""The node tree: a flat path index of plain lists.

Every node is one ``list`` indexed by the constants below, not an object
with attributes: a million nodes then cost a million small lists, and a
snapshot is a few C-level slices per node instead of attribute lookups.
``num_children`` and ``data_length`` are derived (``len``), never stored, so
they cannot drift.  Child names live in a ``set`` created on the first child
and dropped with the last one (an empty set costs 200 bytes; most nodes are
leaves); listings sort on read, which keeps every write O(1).

The tree only performs mutations; the rules (versions, ephemerals, ...)
and undo belong to ``txn``.  Parents always precede their children in the
index's insertion order (a parent exists before any child is created and
outlives them all), so a snapshot written in that order restores in one
pass.
"""

from __future__ import annotations

import itertools

from coord.namespace.acl import ACL, OPEN_ACL, acl_from_wire, acl_to_wire, intern

# Node fields.  Stat order on the wire is protocol.STAT_FIELDS; see stat().
DATA, CZXID, MZXID, PZXID, CTIME, MTIME, VERSION, CVERSION, OWNER, KIDS, AVERSION, ACLS = range(12)
_STORED_INTS = 8  # CZXID..OWNER, the integers a snapshot keeps per node

Node = list


def new_node(data: bytes, zxid: int, t: int, owner: int, acl: ACL = OPEN_ACL) -> Node:
    return [data, zxid, zxid, zxid, t, t, 0, 0, owner, None, 0, acl]


def stat(node: Node) -> list[int]:
    """The node's Stat as sent on the wire (protocol.STAT_FIELDS order)."""
    kids = node[KIDS]
    return [*node[CZXID:KIDS], len(node[DATA]), len(kids) if kids else 0, node[AVERSION]]


def child_names(node: Node) -> list[str]:
    kids = node[KIDS]
    return sorted(kids) if kids else []


def join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


def _split(path: str) -> tuple[str, str]:
    i = path.rfind("/")
    return (path[:i] or "/"), path[i + 1:]


class Tree:
    __slots__ = ("nodes", "data_bytes")

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": new_node(b"", 0, 0, 0)}
        self.data_bytes = 0  # sum of every node's data length, kept by each mutation (for metrics)

    def __len__(self) -> int:
        return len(self.nodes)

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    # -- mutations (callers check the rules first) ---------------------------
    def insert(self, path: str, node: Node) -> tuple[Node, int, int]:
        """Add ``node`` at ``path`` under its (existing) parent and count the
        parent's children change at the node's czxid.  Returns the parent and
        its cversion and pzxid before the change (for undo)."""
        ppath, name = _split(path)
        parent = self.nodes[ppath]
        cv, pz = parent[CVERSION], parent[PZXID]
        self.nodes[path] = node
        self.data_bytes += len(node[DATA])
        kids = parent[KIDS]
        if kids is None:
            kids = parent[KIDS] = set()
        kids.add(name)
        parent[CVERSION] = cv + 1
        parent[PZXID] = node[CZXID]
        return parent, cv, pz

    def remove(self, path: str, zxid: int) -> tuple[Node, Node, int, int]:
        """Remove the childless node at ``path``.  Returns it, its parent and
        the parent's cversion and pzxid before the change (for undo)."""
        ppath, name = _split(path)
        parent = self.nodes[ppath]
        cv, pz = parent[CVERSION], parent[PZXID]
        node = self.nodes.pop(path)
        self.data_bytes -= len(node[DATA])
        kids = parent[KIDS]
        kids.discard(name)
        if not kids:
            parent[KIDS] = None
        parent[CVERSION] = cv + 1
        parent[PZXID] = zxid
        return node, parent, cv, pz

    def unlink(self, path: str) -> None:
        """Drop ``path`` from the index and its parent's children, touching no
        counters: the inverse of insert() once the parent's counters are put back."""
        ppath, name = _split(path)
        self.data_bytes -= len(self.nodes.pop(path)[DATA])
        parent = self.nodes[ppath]
        kids = parent[KIDS]
        kids.discard(name)
        if not kids:
            parent[KIDS] = None

    def relink(self, path: str, node: Node) -> None:
        """Put a removed node back (counters untouched): the inverse of remove()."""
        ppath, name = _split(path)
        self.nodes[path] = node
        self.data_bytes += len(node[DATA])
        parent = self.nodes[ppath]
        if parent[KIDS] is None:
            parent[KIDS] = set()
        parent[KIDS].add(name)

    def subtree_postorder(self, path: str) -> list[str]:
        """Every path under ``path`` (excluded), each after all its descendants."""
        out: list[str] = []
        stack = [path]
        nodes = self.nodes
        while stack:
            p = stack.pop()
            kids = nodes[p][KIDS]
            if kids:
                for name in sorted(kids):
                    c = join(p, name)
                    out.append(c)
                    stack.append(c)
        out.reverse()  # reversed pre-order: descendants before ancestors
        return out

    # -- snapshot --------------------------------------------------------------
    def export(self) -> tuple[list[str], list[bytes], list[int], dict]:
        """Columns: paths (parents first), data, 8 stored ints per node, and
        the access columns: each distinct ACL once, an index into them per
        node, and the aversions (empty lists when every node is open and at
        aversion 0, as in every tree from before ACLs)."""
        vals = self.nodes.values()
        acls: dict[ACL, int] = {}
        acl_index = [acls.setdefault(n[ACLS], len(acls)) for n in vals]
        aversions = [n[AVERSION] for n in vals]
        access = {"acls": [acl_to_wire(a) for a in acls], "acl_index": acl_index, "aversion": aversions}
        if list(acls) == [OPEN_ACL] and not any(aversions):
            access = {"acls": [acl_to_wire(OPEN_ACL)], "acl_index": [], "aversion": []}
        return (
            list(self.nodes),
            [n[DATA] for n in vals],
            list(itertools.chain.from_iterable(n[CZXID:KIDS] for n in vals)),
            access,
        )

    @classmethod
    def from_columns(cls, paths: list, datas: list, ints: list,
                     access: dict | None = None) -> tuple["Tree", list[tuple[str, int]]]:
        """Rebuild from export(); also returns the ephemerals as (path, owner).
        Without ``access`` (snapshots from before ACLs) every node is open.
        Raises ValueError on inconsistent columns."""
        n = len(paths)
        if not n or paths[0] != "/" or len(datas) != n or len(ints) != n * _STORED_INTS:
            raise ValueError("inconsistent node columns")
        tree = cls.__new__(cls)
        nodes: dict[str, Node] = {}
        ephemerals: list[tuple[str, int]] = []
        it = iter(ints)
        rows = zip(paths, datas, it, it, it, it, it, it, it, it)
        p, d, cz, mz, pz, ct, mt, v, cv, o = next(rows)
        nodes["/"] = [d, cz, mz, pz, ct, mt, v, cv, o, None, 0, OPEN_ACL]
        try:
            for p, d, cz, mz, pz, ct, mt, v, cv, o in rows:
                nodes[p] = [d, cz, mz, pz, ct, mt, v, cv, o, None, 0, OPEN_ACL]
                i = p.rfind("/")
                parent = nodes[p[:i] or "/"]
                kids = parent[KIDS]
                if kids is None:
                    kids = parent[KIDS] = set()
                kids.add(p[i + 1:])
                if o:
                    ephemerals.append((p, o))
        except (KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"bad node in snapshot: {e!r}") from None
        if len(nodes) != n:
            raise ValueError("duplicate paths in snapshot")
        if access is not None:
            _restore_access(nodes, access)
        tree.nodes = nodes
        tree.data_bytes = sum(map(len, datas))
        return tree, ephemerals


def _restore_access(nodes: dict[str, Node], access: dict) -> None:
    try:
        acls = [intern(acl_from_wire(a)) for a in access["acls"]]
        index, aversions = access["acl_index"], access["aversion"]
    except (KeyError, TypeError, Exception) as e:  # InvalidACLError too: a damaged snapshot
        raise ValueError(f"bad access columns in snapshot: {e!r}") from None
    if not index and not aversions:
        return  # every node open, aversion 0
    if len(index) != len(nodes) or len(aversions) != len(nodes):
        raise ValueError("inconsistent access columns")
    for node, i, av in zip(nodes.values(), index, aversions):
        node[ACLS] = acls[i]
        node[AVERSION] = av
