"""A threaded (Celery-style) worker: tasks run in a thread pool, share one
``SyncClient``, and take a lock with a fencing token before they touch a
shared resource.

The resource here is a stand-in for a database or an object store that
keeps the highest fencing token it has seen and refuses writes carrying a
lower one: the check that makes a lock safe even when its holder was paused
past its session timeout.  Writes to coord itself are fenced by coord
(``lock.fenced``).

    pip install -e ./client
    export COORD_ENDPOINTS=127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183
    python examples/threaded_worker_lock.py --threads 4 --tasks 20
"""

from __future__ import annotations

import argparse
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from coordclient import SyncClient, ops
from coordclient.recipes import LockLostError

LOCK = "/examples/worker/lock"
LEDGER = "/examples/worker/ledger"


class FencedStore:
    """Accepts a write only from the newest lock holder it has heard of."""

    def __init__(self) -> None:
        self.highest = 0
        self.rows: list[tuple[int, str]] = []
        self._mutex = threading.Lock()  # the store's own atomicity (a transaction, in a database)

    def write(self, token: int, row: str) -> None:
        with self._mutex:
            if token < self.highest:
                raise PermissionError(f"stale lock holder (token {token} < {self.highest})")
            self.highest = token
            self.rows.append((token, row))


def task(client: SyncClient, store: FencedStore, n: int) -> int:
    """One unit of work: under the lock, append to the store and to coord's ledger."""
    with client.lock(LOCK) as lock:
        token = lock.fencing_token
        store.write(token, f"task {n}")
        # coord rejects this if the lock was lost meanwhile (LockLostError)
        lock.fenced([ops.create(f"{LEDGER}/t-", b"%d" % n, sequential=True)])
        return token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", default=os.environ.get("COORD_ENDPOINTS", "127.0.0.1:2181"))
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=20)
    args = ap.parse_args()
    store = FencedStore()
    with SyncClient(args.endpoints, session_timeout=10) as client:
        if client.exists(LEDGER) is None:
            client.create(LEDGER, make_parents=True)
        before = len(client.children(LEDGER))
        with ThreadPoolExecutor(args.threads) as pool:
            tokens = []
            for future in [pool.submit(task, client, store, n) for n in range(args.tasks)]:
                try:
                    tokens.append(future.result())
                except LockLostError as exc:
                    print("a task lost its lock and was not counted:", exc)
        written = len(client.children(LEDGER)) - before
    assert [t for t, _ in store.rows] == sorted(t for t, _ in store.rows), "tokens went backwards"
    print(f"{len(tokens)} tasks done under the lock on {args.threads} threads; "
          f"{written} fenced ledger entries; tokens {min(tokens)}..{max(tokens)}, strictly increasing: "
          f"{tokens == sorted(tokens) or sorted(tokens) == sorted(set(tokens))}")


if __name__ == "__main__":
    main()
