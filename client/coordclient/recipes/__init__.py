"""Coordination recipes on top of the SDK, for asyncio and Trio alike, each
with a blocking twin in ``coordclient.recipes.blocking`` (for ``SyncClient``):

* locks: ``Lock``, ``ReadWriteLock``, ``Semaphore``; ``Election``
  (fencing tokens, cancel-on-loss);
* ``Barrier``, ``DoubleBarrier``; ``Counter``;
* ``Queue`` and ``LockingQueue`` (an item comes back if its taker dies);
* ``Group`` (membership / service discovery, live ``GroupView`` snapshots);
* ``Lease`` (a time-bound grant to at most N holders);
* ``TreeCache`` and ``NodeCache`` (always-converging local mirrors);
* ``RingMember``/``HashRing``: a consistent-hash ring partitioner with safe,
  fenced hand-off.

::

    from coordclient.recipes import Lock, Election
    async with Lock(client, "/locks/job") as lock:
        await lock.fenced([ops.set("/job/state", b"running")])

docs/recipes.md explains the guarantees and their limits; docs/sdk.md is
the reference.
"""

from coordclient.recipes._core import LeadershipLostError, LockLostError, RecipeUsageError
from coordclient.recipes._hold import Hold
from coordclient.recipes.barrier import Barrier, DoubleBarrier
from coordclient.recipes.cache import CacheEvent, NodeCache, NodeData, TreeCache
from coordclient.recipes.counter import Counter
from coordclient.recipes.election import Campaign, Election, Leader, LeaderObserver
from coordclient.recipes.group import Group, GroupView, Member, Membership, Registration
from coordclient.recipes.lease import Lease, LeaseGrant
from coordclient.recipes.locks import Lock, ReadLock, ReadWriteLock, Semaphore, WriteLock
from coordclient.recipes.queue import LockingQueue, Queue, QueueItem
from coordclient.recipes.ring import HashRing, PartitionLostError, RingMember, key_hash

__all__ = [
    "Barrier",
    "CacheEvent",
    "Campaign",
    "Counter",
    "DoubleBarrier",
    "Election",
    "Group",
    "GroupView",
    "HashRing",
    "Hold",
    "LeadershipLostError",
    "Leader",
    "LeaderObserver",
    "Lease",
    "LeaseGrant",
    "Lock",
    "LockLostError",
    "LockingQueue",
    "Member",
    "Membership",
    "NodeCache",
    "NodeData",
    "PartitionLostError",
    "Queue",
    "QueueItem",
    "ReadLock",
    "ReadWriteLock",
    "RecipeUsageError",
    "Registration",
    "RingMember",
    "Semaphore",
    "TreeCache",
    "WriteLock",
    "key_hash",
]
