"""A minimal ephemeral-sequential lock (ZooKeeper's recipe, as kazoo's Lock).

Used by the fault workload and by bench W4 until the SDK's recipe
(``client/coordclient/recipes/``) exists.  Each contender creates an
ephemeral sequential node ``<dir>/<id>__lock__<seq>``, holds the lock when
its node sorts first, and otherwise waits for the deletion of the node just
before its own (one watch per waiter: no herd).  The sequence number is the
fencing token: it only grows, and a holder whose session ended has lost its
node, so a multi that checks the node guards a write.

A create whose outcome is unknown (connection lost past the SDK's retries)
is resolved by looking for this attempt's unique prefix, as kazoo does.
A node that could not be deleted (release or an abandoned attempt) is left
in ``orphan``: it would block every later contender, so the caller should
end its session, which deletes it.
"""

from __future__ import annotations

import itertools

import trio

from coordclient.errors import ConnectionLossError, CoordError, NoNodeError, OperationTimeoutError

MARK = "__lock__"


class LockLost(CoordError):
    """Our lock node disappeared while waiting (the session expired)."""


def token_of(name: str) -> int:
    return int(name.rsplit(MARK, 1)[1])


class Lock:
    def __init__(self, client, path: str, ident: str, recheck: float = 1.0):
        self.client = client
        self.path = path.rstrip("/")
        self.ident = ident
        self.recheck = recheck  # re-read the queue this often even without a watch event
        self.node: str | None = None
        self.token: int | None = None
        self.seen: list[str] = []  # the head of the queue when the lock was granted (for diagnosis)
        self.orphan: str | None = None  # a node of ours we failed to delete: it blocks the queue until the session ends
        self._attempts = itertools.count(1)

    async def acquire(self, timeout: float) -> int:
        """Wait for the lock; return its fencing token.  Raises trio.TooSlowError
        after ``timeout`` and CoordError when the ensemble fails us; in both
        cases this attempt's node is deleted (best effort)."""
        prefix = f"{self.path}/{self.ident}-{next(self._attempts)}{MARK}"
        me = None
        try:
            with trio.fail_after(timeout):
                try:
                    me = await self.client.create(prefix, b"", ephemeral=True, sequential=True)
                except (ConnectionLossError, OperationTimeoutError):
                    me = await self._find(prefix)
                    if me is None:
                        raise
                name = me.rsplit("/", 1)[1]
                while True:
                    queue = sorted((k for k in await self.client.children(self.path) if MARK in k), key=token_of)
                    if name not in queue:
                        raise LockLost(f"lock node {me} is gone")
                    i = queue.index(name)
                    if i == 0:
                        self.node, self.token = me, token_of(name)
                        self.seen = queue[:3]
                        return self.token
                    gone = trio.Event()
                    if await self.client.exists(f"{self.path}/{queue[i - 1]}", watch=lambda ev: gone.set()) is None:
                        continue
                    with trio.move_on_after(self.recheck):
                        await gone.wait()
        except BaseException:
            if me is not None:
                await self._delete_quietly(me)
            raise

    async def release(self) -> None:
        """Delete our node; if that fails it is remembered in ``orphan`` (the
        caller should end the session, which deletes it)."""
        node, self.node, self.token = self.node, None, None
        if node is not None:
            self.orphan = node
            try:
                await self.client.delete(node)
            except NoNodeError:
                pass
            self.orphan = None

    async def _find(self, prefix: str) -> str | None:
        base = prefix.rsplit("/", 1)[1]
        for kid in await self.client.children(self.path):
            if kid.startswith(base):
                return f"{self.path}/{kid}"
        return None

    async def _delete_quietly(self, node: str) -> None:
        self.orphan = node
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.client.delete(node)
                self.orphan = None
            except NoNodeError:
                self.orphan = None
            except CoordError:
                pass
