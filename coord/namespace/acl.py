"""Access control lists, ZooKeeper's model.

A node's ACL is a tuple of ``ACLEntry(perms, scheme, id)``; a request is
allowed an operation on a node if one entry grants the permission to one of
the request's identities (``Auth``), or if it comes from a superuser.

Permissions (ZooKeeper's bits): READ 1, WRITE 2, CREATE 4, DELETE 8, ADMIN 16.
Schemes:

``world``   ``anyone``: everybody.
``digest``  ``user:base64(sha1(user:password))``: a session that called
            ``add_auth("digest", "user:password")``.  Only this digest is ever
            stored; the password never is.
``ip``      ``10.0.0.0/8`` or ``192.168.1.7``: the client's address.
``x509``    the subject (RFC 4514) of the client's verified certificate.
``auth``    only when setting an ACL: replaced by every identity the session
            has authenticated (digest and x509), InvalidACL if it has none.

Checks happen where the answer is fixed for every server: writes when the
command is applied (its identities travel inside it, see
``commands.parse_request``), reads on the server that answers them.  A tree
keeps each distinct ACL once in an ``AclTable`` and its nodes store the
ACL's number: a million nodes with the same ACL share one tuple, as in
ZooKeeper's reference-counted ACL cache.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

from coordclient.errors import AuthFailedError, InvalidACLError

__all__ = [
    "ACL", "ACLEntry", "ADMIN", "ALL", "Auth", "CREATE", "DELETE", "OPEN_ACL", "READ", "WRITE",
    "AclTable", "acl_from_wire", "acl_to_wire", "allowed", "digest_id", "expand", "intern", "parse_acl_text",
    "parse_identity", "perms_text",
]

READ, WRITE, CREATE, DELETE, ADMIN = 1, 2, 4, 8, 16
ALL = READ | WRITE | CREATE | DELETE | ADMIN
_LETTERS = (("c", CREATE), ("d", DELETE), ("r", READ), ("w", WRITE), ("a", ADMIN))  # ZooKeeper's print order
SCHEMES = frozenset({"world", "digest", "ip", "x509", "auth"})
MAX_ACL_ENTRIES = 64
MAX_ID_LENGTH = 1024


@dataclass(slots=True, frozen=True)
class ACLEntry:
    perms: int
    scheme: str
    id: str


ACL = tuple[ACLEntry, ...]


@dataclass(slots=True, frozen=True)
class Auth:
    """Who a request is: identities as (scheme, id), and whether a superuser."""

    ids: frozenset[tuple[str, str]] = frozenset()
    superuser: bool = False


UNCHECKED = Auth(superuser=True)  # commands logged before ACLs existed: applied as they were
_interned: dict[ACL, ACL] = {}


def intern(acl: ACL) -> ACL:
    """The one shared copy of ``acl``."""
    return _interned.setdefault(acl, acl)


OPEN_ACL: ACL = intern((ACLEntry(ALL, "world", "anyone"),))


def _bad(msg: str) -> InvalidACLError:
    return InvalidACLError(msg[:300])


def _check_entry(perms: Any, scheme: Any, ident: Any, *, allow_auth: bool) -> ACLEntry:
    if type(perms) is not int or not 0 < perms <= ALL:
        raise _bad("ACL permissions must be a non-empty combination of r, w, c, d, a")
    if type(scheme) is not str or scheme not in SCHEMES or (scheme == "auth" and not allow_auth):
        raise _bad(f"unknown ACL scheme {scheme!r}" if scheme != "auth" else "the 'auth' scheme is only for setting")
    if type(ident) is not str or len(ident) > MAX_ID_LENGTH:
        raise _bad("ACL ids are strings of at most 1024 characters")
    if scheme == "world" and ident != "anyone":
        raise _bad("the world scheme has one id: anyone")
    if scheme == "digest" and (ident.count(":") != 1 or not ident.split(":")[0] or not ident.split(":")[1]):
        raise _bad("a digest ACL id is user:base64(sha1(user:password))")
    if scheme == "ip":
        try:
            ipaddress.ip_network(ident, strict=False)
        except ValueError:
            raise _bad(f"not an IP address or network: {ident!r}") from None
    if scheme == "x509" and not ident:
        raise _bad("an x509 ACL id is a certificate subject")
    return ACLEntry(perms, scheme, ident)


def acl_from_wire(raw: Any, *, allow_auth: bool = False) -> ACL:
    """``[[perms, scheme, id], ...]`` checked; InvalidACL otherwise."""
    if type(raw) is not list or not raw or len(raw) > MAX_ACL_ENTRIES:
        raise _bad(f"an ACL is a list of 1 to {MAX_ACL_ENTRIES} [perms, scheme, id] entries")
    out = []
    for e in raw:
        if type(e) is not list or len(e) != 3:
            raise _bad("an ACL entry is [perms, scheme, id]")
        out.append(_check_entry(*e, allow_auth=allow_auth))
    return tuple(out)


def acl_to_wire(acl: ACL) -> list:
    return [[e.perms, e.scheme, e.id] for e in acl]


def perms_text(perms: int) -> str:
    return "".join(c for c, bit in _LETTERS if perms & bit)


def parse_acl_text(text: str) -> ACLEntry:
    """ZooKeeper's text form ``scheme:id:perms`` (``digest:bob:HASH:cdrwa``,
    ``world:anyone:r``, ``ip:10.0.0.0/8:r``, ``x509:CN=svc:rw``)."""
    scheme, sep, rest = text.partition(":")
    ident, sep2, letters = rest.rpartition(":")
    if not sep or not sep2:
        raise _bad(f"an ACL is scheme:id:perms, got {text!r}")
    perms = 0
    for ch in letters:
        bit = dict(_LETTERS).get(ch)
        if bit is None:
            raise _bad(f"unknown permission {ch!r} in {text!r} (use r, w, c, d, a)")
        perms |= bit
    return _check_entry(perms, scheme, ident, allow_auth=True)


def parse_identity(text: str) -> tuple[str, str]:
    """An identity as configured (``digest:user:HASH``, ``x509:CN=ops``, ``ip:10.0.0.1``)."""
    scheme, sep, ident = text.partition(":")
    if not sep or scheme not in ("digest", "x509", "ip") or not ident:
        raise ValueError(f"an identity is digest:user:HASH, x509:SUBJECT or ip:ADDRESS, got {text!r}")
    return scheme, ident


def digest_id(credential: str) -> str:
    """``user:password`` -> ``user:base64(sha1(user:password))`` (ZooKeeper's
    DigestAuthenticationProvider).  The error never contains the password."""
    user, sep, password = credential.partition(":")
    if not sep or not user or not password:
        raise AuthFailedError("a digest credential is user:password")
    return f"{user}:{base64.b64encode(hashlib.sha1(credential.encode()).digest()).decode()}"


def expand(acl: ACL, auth: Auth) -> ACL:
    """Replace ``auth`` entries by the session's authenticated identities.
    (Not interned: the tree's ``AclTable`` shares equal ACLs, and forgets
    them when no node uses them, which a global intern table never would.)"""
    if not any(e.scheme == "auth" for e in acl):
        return acl
    mine = sorted((s, i) for s, i in auth.ids if s in ("digest", "x509"))
    out: list[ACLEntry] = []
    for e in acl:
        if e.scheme != "auth":
            out.append(e)
            continue
        if not mine:
            raise _bad("an 'auth' ACL needs an authenticated session (add_auth first)")
        out.extend(ACLEntry(e.perms, s, i) for s, i in mine)
    return tuple(dict.fromkeys(out))


class AclTable:
    """The distinct ACLs of one tree, numbered, each with the count of nodes
    using it.  A node stores the number (4 bytes in its record) instead of a
    reference; an ACL no node uses any more is forgotten and its number
    reused (last freed, first reused: the same numbers on every replica, as
    every replica runs the same changes).  Number 0 is OPEN_ACL, always."""

    __slots__ = ("acls", "ids", "refs", "free")

    def __init__(self) -> None:
        self.acls: list[ACL | None] = [OPEN_ACL]  # by number; None: a free number
        self.ids: dict[ACL, int] = {OPEN_ACL: 0}
        self.refs: list[int] = [0]
        self.free: list[int] = []

    def __len__(self) -> int:
        """Distinct ACLs in use (and OPEN_ACL)."""
        return len(self.ids)

    def number(self, acl: ACL) -> int:
        """The number of ``acl``, given one if it has none (use it at once:
        ``ref`` it, or it stays allocated with no user)."""
        i = self.ids.get(acl)
        if i is None:
            if self.free:
                i = self.free.pop()
                self.acls[i], self.refs[i] = acl, 0
            else:
                i = len(self.acls)
                self.acls.append(acl)
                self.refs.append(0)
            self.ids[acl] = i
        return i

    def ref(self, i: int) -> None:
        self.refs[i] += 1

    def unref(self, i: int) -> None:
        n = self.refs[i] = self.refs[i] - 1
        if n == 0 and i:
            del self.ids[self.acls[i]]
            self.acls[i] = None
            self.free.append(i)

    def to_wire(self) -> list:
        """[[ACL in wire form or None, node count] by number, [free numbers]]."""
        return [[[None if a is None else acl_to_wire(a), r] for a, r in zip(self.acls, self.refs)], list(self.free)]

    @classmethod
    def from_wire(cls, raw: Any, nodes: int) -> "AclTable":
        """Inverse of to_wire; ValueError unless it is consistent with a tree of ``nodes`` nodes."""
        try:
            rows, free = raw
            t = cls()
            t.acls, t.refs, t.ids = [], [], {}
            for i, (wire, refs) in enumerate(rows):
                if type(refs) is not int or refs < 0:
                    raise ValueError("bad count")
                if wire is None:
                    t.acls.append(None)
                    t.refs.append(0)
                    continue
                acl = acl_from_wire(wire)
                acl = OPEN_ACL if acl == OPEN_ACL else acl
                if acl in t.ids or (i == 0) != (acl is OPEN_ACL) or not refs and i:
                    raise ValueError(f"ACL {i} is a duplicate, misplaced or unused")
                t.acls.append(acl)
                t.refs.append(refs)
                t.ids[acl] = i
            t.free = list(free)
        except (TypeError, ValueError, InvalidACLError) as e:
            raise ValueError(f"bad ACL table: {e!r}") from None
        holes = [i for i, a in enumerate(t.acls) if a is None]
        if not t.acls or t.acls[0] is not OPEN_ACL or sorted(t.free) != holes or sum(t.refs) != nodes:
            raise ValueError("ACL table inconsistent with the tree")
        return t


def allowed(acl: ACL, auth: Auth, perm: int) -> bool:
    """Whether ``auth`` may do ``perm`` on a node with ``acl``."""
    if auth.superuser or acl is OPEN_ACL:
        return True
    ids = auth.ids
    for e in acl:
        if not e.perms & perm:
            continue
        if e.scheme == "world":
            return True
        if e.scheme == "ip":
            if any(s == "ip" and _ip_in(i, e.id) for s, i in ids):
                return True
        elif (e.scheme, e.id) in ids:
            return True
    return False


def _ip_in(addr: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def auth_of(ids: Iterable[tuple[str, str]], superuser: bool) -> Auth:
    return Auth(frozenset(ids), superuser)
