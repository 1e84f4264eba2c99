"""Coordination recipes on top of the SDK: locks, read/write locks,
semaphores and leader election, all with fencing tokens.

Async (Trio)::

    from coordclient.recipes import Lock, Election
    async with Lock(client, "/locks/job") as lock:
        await lock.fenced([ops.set("/job/state", b"running")])

Blocking (``SyncClient``): ``SyncLock``, ``SyncReadWriteLock``,
``SyncSemaphore``, ``SyncElection`` in ``coordclient.recipes.blocking``.

docs/recipes.md explains the guarantees and their limits.
"""

from coordclient.recipes._core import LeadershipLostError, LockLostError, RecipeUsageError
from coordclient.recipes.election import Campaign, Election, Leader, LeaderObserver
from coordclient.recipes.locks import Lock, ReadLock, ReadWriteLock, Semaphore, WriteLock

__all__ = [
    "Campaign",
    "Election",
    "LeadershipLostError",
    "Leader",
    "LeaderObserver",
    "Lock",
    "LockLostError",
    "ReadLock",
    "ReadWriteLock",
    "RecipeUsageError",
    "Semaphore",
    "WriteLock",
]
