"""Questions between members over the peer links (``InfoQuery`` / ``InfoReply``).

The dashboard on any member shows every member's status and which sessions
are connected where.  Asking over the client ports would need client
credentials (TLS client certificates, an admin identity when
``status_requires_admin``) and the client ports' addresses; the peer links
are already up, already authenticated (cluster secret or mutual TLS) and
the same with or without ``[tls]``, so members ask each other there.

Asking side (``ask``): a question goes only to a peer whose outbound link
is up now (otherwise it would wait in the queue for a link that may never
come back), at most ``MAX_PENDING`` at a time per peer, and is given up
after its timeout; a late answer finds nobody waiting and is dropped.
Service messages are never dropped by the transport's queue, so these
bounds are what keeps questions from piling up there.

Answering side (``on_query``): synchronous, from the peer's receive task;
each kind is one callable returning a small JSON-like map (the service
registers ``status`` and ``connections``).  A kind this version does not
know, a failing callable or an oversized answer gets an ``{"error": ...}``
answer rather than silence or a dropped link.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

import trio

from coord.transport.envelope import InfoQuery, InfoReply, ServiceMessage, decode_info, encode_info

__all__ = ["MAX_PENDING", "MemberInfo"]

log = logging.getLogger("coord.service")

MAX_PENDING = 8  # unanswered questions per peer


@dataclass(slots=True)
class _Pending:
    to: int
    done: trio.Event = field(default_factory=trio.Event)
    doc: dict | None = None


class MemberInfo:
    """Ask other members for a document, and answer theirs.

    ``send`` queues a service message on the peer links; ``connected(pid)``
    says whether the link to ``pid`` is up; ``answers`` maps each kind of
    question to the callable that makes its answer."""

    def __init__(self, server_id: int, send: Callable[[ServiceMessage], None], connected: Callable[[int], bool],
                 answers: dict[str, Callable[[], dict]]):
        self.server_id = server_id
        self._send = send
        self._connected = connected
        self.answers = answers
        self._qids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.unanswered = 0  # questions given up (timeout), for tests and debugging

    def pending_to(self, peer: int) -> int:
        return sum(1 for p in self._pending.values() if p.to == peer)

    async def ask(self, to: int, what: str, timeout: float) -> dict | None:
        """Member ``to``'s answer to ``what``, or None (no link, too many
        questions outstanding, no answer in ``timeout``, a bad answer)."""
        if to == self.server_id or not self._connected(to) or self.pending_to(to) >= MAX_PENDING:
            return None
        qid = next(self._qids)
        p = self._pending[qid] = _Pending(to)
        try:
            self._send(InfoQuery(self.server_id, to, qid, what))
            with trio.move_on_after(timeout):
                await p.done.wait()
            if not p.done.is_set():
                self.unanswered += 1
            return p.doc
        finally:
            del self._pending[qid]

    def on_reply(self, r: InfoReply) -> None:
        p = self._pending.get(r.qid)
        if p is None or p.to != r.frm:
            return  # given up already, or not the member it was asked of
        try:
            p.doc = decode_info(r.body)
        except ValueError as e:
            log.warning("server %d: member %d answered query %d with a bad document: %s",
                        self.server_id, r.frm, r.qid, e)
        p.done.set()

    def on_query(self, q: InfoQuery) -> None:
        make = self.answers.get(q.what)
        try:
            body = encode_info(make() if make is not None else {"error": f"unknown query {q.what!r}"})
        except Exception as e:  # noqa: BLE001 - an answer must go back whatever went wrong here
            if not isinstance(e, ValueError):
                log.exception("server %d: answering %r for member %d failed", self.server_id, q.what, q.frm)
            body = encode_info({"error": f"could not answer {q.what!r}: {type(e).__name__}"})
        self._send(InfoReply(self.server_id, q.frm, q.qid, body))
