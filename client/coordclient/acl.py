"""Access control lists for the SDK, in ZooKeeper's (and kazoo's) shapes.

An ACL is a list of ``ACL(perms, scheme, id)``: perms are the ``Perms``
bits (READ, WRITE, CREATE, DELETE, ADMIN; ALL), the schemes ``world``
(id ``anyone``), ``digest`` (``user:base64(sha1(user:password))``), ``ip``
(an address or network), ``x509`` (a client certificate's subject) and,
when setting, ``auth`` (the session's own authenticated identities).
The server's rules are in PROTOCOL.md ("Access control").

    from coordclient.acl import make_digest_acl, OPEN_ACL_UNSAFE
    acl = [make_digest_acl("app", "s3cret", all=True), ACL.parse("world:anyone:r")]
    await client.create("/app/config", b"v1", acl=acl)
"""

from __future__ import annotations

import base64
import enum
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = [
    "ACL", "CREATOR_ALL_ACL", "OPEN_ACL_UNSAFE", "Perms", "READ_ACL_UNSAFE", "acl_from_wire", "acl_to_wire",
    "digest", "make_acl", "make_digest_acl",
]


class Perms(enum.IntFlag):
    READ = 1
    WRITE = 2
    CREATE = 4
    DELETE = 8
    ADMIN = 16
    ALL = 31


# ZooKeeper's order when it prints permissions (zkCli: "cdrwa")
_LETTERS = (("c", Perms.CREATE), ("d", Perms.DELETE), ("r", Perms.READ), ("w", Perms.WRITE), ("a", Perms.ADMIN))


@dataclass(frozen=True, slots=True)
class ACL:
    perms: int
    scheme: str
    id: str

    def __str__(self) -> str:
        """ZooKeeper's text form, ``scheme:id:perms`` (``digest:bob:HASH:cdrwa``)."""
        return f"{self.scheme}:{self.id}:{''.join(c for c, bit in _LETTERS if self.perms & bit)}"

    @classmethod
    def parse(cls, text: str) -> "ACL":
        """From ``scheme:id:perms`` (the id may contain colons: ``digest:bob:HASH:rw``)."""
        scheme, sep, rest = text.partition(":")
        ident, sep2, letters = rest.rpartition(":")
        if not sep or not sep2 or not scheme:
            raise ValueError(f"an ACL is scheme:id:perms, got {text!r}")
        perms = 0
        for ch in letters:
            bit = dict(_LETTERS).get(ch)
            if bit is None:
                raise ValueError(f"unknown permission {ch!r} in {text!r} (use r, w, c, d, a)")
            perms |= bit
        if not perms:
            raise ValueError(f"no permission in {text!r}")
        return cls(perms, scheme, ident)


def digest(user: str, password: str) -> str:
    """The digest id of a credential: ``user:base64(sha1(user:password))``."""
    return f"{user}:{base64.b64encode(hashlib.sha1(f'{user}:{password}'.encode()).digest()).decode()}"


def make_acl(scheme: str, credential: str, *, read: bool = False, write: bool = False, create: bool = False,
             delete: bool = False, admin: bool = False, all: bool = False) -> ACL:  # noqa: A002 - kazoo's name
    """One ACL entry, kazoo-style: ``make_acl("ip", "10.0.0.0/8", read=True)``."""
    perms = Perms.ALL if all else 0
    for flag, bit in ((read, Perms.READ), (write, Perms.WRITE), (create, Perms.CREATE), (delete, Perms.DELETE),
                      (admin, Perms.ADMIN)):
        if flag:
            perms |= bit
    if not perms:
        raise ValueError("an ACL entry needs at least one permission")
    return ACL(int(perms), scheme, credential)


def make_digest_acl(user: str, password: str, **perms: bool) -> ACL:
    """An entry for ``user`` with ``password`` (only the digest is sent)."""
    return make_acl("digest", digest(user, password), **perms)


OPEN_ACL_UNSAFE = [ACL(int(Perms.ALL), "world", "anyone")]
READ_ACL_UNSAFE = [ACL(int(Perms.READ), "world", "anyone")]
CREATOR_ALL_ACL = [ACL(int(Perms.ALL), "auth", "")]


def acl_to_wire(acl: Iterable[ACL | str]) -> list:
    """An ACL (entries, or their text forms) as the protocol carries it."""
    out = []
    for e in acl:
        if isinstance(e, str):
            e = ACL.parse(e)
        if not isinstance(e, ACL):
            raise TypeError(f"an ACL entry is an ACL or 'scheme:id:perms', not {type(e).__name__}")
        out.append([int(e.perms), e.scheme, e.id])
    if not out:
        raise ValueError("an ACL needs at least one entry")
    return out


def acl_from_wire(raw: Sequence[Any]) -> list[ACL]:
    return [ACL(int(p), str(s), str(i)) for p, s, i in raw]
