"""The client processes whose observations the checkers judge.

Everything runs in the test's Trio process against the client proxies:

* ``lin``        -- processes doing get (linearizable) / read (plain) / set /
  cas / create / delete on a few keys, recorded in a ``History``;
* ``creator``    -- creates (half sequential) under ``/faults/c``, each with a
  unique tag in its name, for "nothing lost" and "exactly once";
* ``ephemeral``  -- short-session owners creating ephemerals under ``/faults/e``;
* ``locker``     -- contenders for ``/faults/lock`` whose critical sections
  write the guarded resource ``/faults/res`` through a multi that checks
  their lock node (the fence);
* ``watcher``    -- persistent recursive watches on the ``lin`` subtree.

Every process (re)opens its session when the old one expires, so a run
keeps its load through any fault.  Calls are bounded by the SDK's request
timeout; the whole workload is cancelled when the schedule ends, and
calls caught in flight count as unknown.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import trio

from coordclient import Client, ConnState, ops
from coordclient.errors import CoordError, NoNodeError
from tests.faults.history import History
from tests.faults.lock import Lock

ROOT = "/faults"
LIN, CREATES, EPH, LOCK, RES = (f"{ROOT}/{x}" for x in ("lin", "c", "e", "lock", "res"))
LIVE = (ConnState.CONNECTED, ConnState.RECONNECTED)
LIN_MIX = (("get", 30), ("read", 10), ("set", 20), ("cas", 20), ("create", 10), ("delete", 10))


@dataclass
class Params:
    keys: int = 3
    lin_processes: int = 5
    pace: tuple[float, float] = (0.005, 0.03)  # pause between a process's calls
    session_timeout: float = 4.0
    ephemeral_owners: int = 2
    ephemeral_session_timeout: float = 2.0
    lockers: int = 3
    lock_session_timeout: float = 2.0
    watchers: int = 2

    def longest_session(self) -> float:
        return max(self.session_timeout, self.ephemeral_session_timeout, self.lock_session_timeout)


@dataclass
class Workload:
    """The load of one schedule.  ``start`` spawns every process; ``stop``
    ends the load (lin and creator processes are cancelled, their calls in
    flight become unknown) while ephemeral owners, lock contenders and
    watchers keep their sessions open for the final checks, until
    ``release``."""

    endpoints: str
    seed: int
    params: Params = field(default_factory=Params)
    history: History = field(default_factory=History)
    creates: dict = field(default_factory=lambda: {"acked": [], "unknown": []})
    sessions: list[dict] = field(default_factory=list)  # ephemeral owners' sessions
    holds: list[dict] = field(default_factory=list)
    guarded: list[dict] = field(default_factory=list)
    watchers: list[dict] = field(default_factory=list)
    eph_clients: dict[int, Client] = field(default_factory=dict)  # sid -> client, while its owner holds it
    live_watchers: dict[str, dict] = field(default_factory=dict)  # name -> record, while consuming
    stopping: bool = False
    _scopes: set = field(default_factory=set)
    _release_scopes: set = field(default_factory=set)
    _released: trio.Event = field(default_factory=trio.Event)
    _session_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- plumbing -------------------------------------------------------------
    def _new_client(self, session_timeout: float) -> Client:
        return Client(self.endpoints, session_timeout=session_timeout, request_timeout=2.5 * session_timeout,
                      rng=random.Random(self.rng.random()))

    def _load_scope(self) -> trio.CancelScope:
        """A scope that ``stop`` cancels (at once, if it already ran)."""
        scope = trio.CancelScope()
        if self.stopping:
            scope.cancel()
        self._scopes.add(scope)
        return scope

    def stop(self) -> None:
        self.stopping = True
        for scope in self._scopes:
            scope.cancel()

    def release(self) -> None:
        """The final checks are done: let the remaining sessions close."""
        self.stop()
        self._released.set()
        for scope in self._release_scopes:
            scope.cancel()

    async def setup(self) -> None:
        async with self._new_client(self.params.session_timeout) as c:
            for path in (ROOT, LIN, CREATES, EPH, LOCK, RES):
                try:
                    await c.create(path, b"")
                except CoordError:
                    if await c.exists(path) is None:
                        raise

    def start(self, nursery: trio.Nursery) -> None:
        p = self.params
        for pid in range(p.lin_processes):
            nursery.start_soon(self._forever, self.lin, pid, p.session_timeout)
        nursery.start_soon(self._forever, self.creator, 0, p.session_timeout)
        for k in range(p.ephemeral_owners):
            nursery.start_soon(self._forever, self.ephemeral, k, p.ephemeral_session_timeout)
        for k in range(p.lockers):
            nursery.start_soon(self._forever, self.locker, k, p.lock_session_timeout)
        for k in range(p.watchers):
            nursery.start_soon(self._forever, self.watcher, k, p.session_timeout)

    async def _forever(self, body, k: int, session_timeout: float) -> None:
        """Run ``body(client, session, k)`` on fresh sessions until the load stops;
        a session that opens after the stop is not used."""
        while not self.stopping:
            try:
                client = self._new_client(session_timeout)
                async with client:
                    if not self.stopping:
                        await body(client, next(self._session_ids), k)
            except CoordError:
                await trio.sleep(0.2)  # could not open a session (or closing it failed): try again

    # -- linearizability ----------------------------------------------------
    async def lin(self, client: Client, session: int, pid: int) -> None:
        rng = random.Random(f"{self.seed}-lin-{pid}-{session}")
        names, weights = zip(*LIN_MIX)
        versions: dict[str, int] = {}
        h = self.history
        with self._load_scope():
            for n in itertools.count(1):
                f = rng.choices(names, weights)[0]
                key = f"{LIN}/k{rng.randrange(self.params.keys)}"
                value = f"{pid}.{session}.{n}" if f in ("set", "cas", "create") else None
                expect = None
                if f == "cas":
                    expect = versions.get(key, 0) if rng.random() < 0.8 else rng.randrange(4)
                elif f == "delete":
                    expect = -1 if rng.random() < 0.5 else versions.get(key, 0)
                op = h.invoke(pid, session, f, key, trio.current_time(), value=value, expect=expect)
                try:
                    if f in ("get", "read"):
                        data, st = await client.get(key, linearizable=f == "get")
                        h.ok(op, trio.current_time(), [data.decode(), st.version], st.mzxid)
                        versions[key] = st.version
                    elif f in ("set", "cas"):
                        st = await client.set(key, value.encode(), version=-1 if expect is None else expect)
                        h.ok(op, trio.current_time(), st.version, st.mzxid)
                        versions[key] = st.version
                    elif f == "create":
                        await client.create(key, value.encode())
                        h.ok(op, trio.current_time())
                        versions[key] = 0
                    else:
                        await client.delete(key, version=expect)
                        h.ok(op, trio.current_time())
                except NoNodeError:
                    if f in ("get", "read"):
                        h.ok(op, trio.current_time(), None)
                    else:
                        h.error(op, trio.current_time(), "NoNode")
                except CoordError as e:
                    h.error(op, trio.current_time(), e.code.value)
                    if client.state is ConnState.EXPIRED:
                        return
                await trio.sleep(rng.uniform(*self.params.pace))

    # -- nothing lost ---------------------------------------------------------------
    async def creator(self, client: Client, session: int, k: int) -> None:
        rng = random.Random(f"{self.seed}-creator-{session}")
        with self._load_scope():
            for i in itertools.count():
                sequential = i % 2 == 0
                tag = f"n{session}.{i}-" if sequential else f"k{session}.{i}"
                attempt = [None, tag]
                self.creates["unknown"].append(attempt)  # until acknowledged (a cancelled call stays here)
                try:
                    path = await client.create(f"{CREATES}/{tag}", b"", sequential=sequential)
                except CoordError:
                    if client.state is ConnState.EXPIRED:
                        return
                else:
                    self.creates["unknown"].remove(attempt)
                    self.creates["acked"].append([path.rsplit("/", 1)[1], tag])
                await trio.sleep(rng.uniform(0.01, 0.04))

    async def ephemeral(self, client: Client, session: int, k: int) -> None:
        rng = random.Random(f"{self.seed}-eph-{session}")
        rec = {"sid": client.session_id, "state": "unknown", "acked": [], "unknown": []}
        self.sessions.append(rec)
        self.eph_clients[client.session_id] = client
        with self._load_scope():
            for i in itertools.count():
                path = f"{EPH}/{k}-{client.session_id:x}-{i}"
                rec["unknown"].append(path)  # until acknowledged (a cancelled call stays here)
                try:
                    await client.create(path, b"", ephemeral=True)
                except CoordError:
                    if client.state is ConnState.EXPIRED:
                        break
                else:
                    rec["unknown"].pop()
                    rec["acked"].append(path)
                await trio.sleep(rng.uniform(0.05, 0.2))
        if client.state is ConnState.EXPIRED:
            rec["state"] = "expired"
            self.eph_clients.pop(client.session_id, None)
            return
        await self._released.wait()  # the final checks decide whether it is live
        self.eph_clients.pop(client.session_id, None)

    # -- locks ------------------------------------------------------------------------
    async def locker(self, client: Client, session: int, k: int) -> None:
        rng = random.Random(f"{self.seed}-lock-{session}")
        name = f"l{k}"
        hold: dict | None = None
        mine: list[dict] = []  # this session's holds
        suspended_at = 0  # holds before this index had a suspension after them

        def on_state(state: ConnState) -> None:
            nonlocal suspended_at
            # Curator's rule: once the connection is suspended the lock may be gone.
            if hold is not None and hold["until"] is None and state not in LIVE:
                hold["until"] = trio.current_time()
                hold["ended"] = state.value
            if state is ConnState.SUSPENDED:
                suspended_at = len(mine)
            elif state is ConnState.EXPIRED:
                # The session ended although the client was never suspended since
                # these holds began: it could not have known its lock was gone.
                for h in mine[suspended_at:]:
                    h["expired_unseen"] = True

        client.add_listener(on_state)
        lock = Lock(client, LOCK, f"{name}.{session}")
        with self._load_scope():
            while client.state is not ConnState.EXPIRED:
                try:
                    token = await lock.acquire(timeout=3 * self.params.lock_session_timeout)
                except (CoordError, trio.TooSlowError):
                    if lock.orphan is not None:
                        return
                    await trio.sleep(rng.uniform(0.01, 0.1))
                    continue
                hold = {"client": name, "token": token, "acquired": trio.current_time(), "until": None,
                        "ended": None, "server": client.server_id, "zxid": client.last_zxid, "queue": lock.seen}
                if client.state not in LIVE:
                    hold["until"], hold["ended"] = hold["acquired"], client.state.value
                self.holds.append(hold)
                mine.append(hold)
                try:
                    for j in range(rng.randint(1, 3)):
                        if hold["until"] is not None:
                            break
                        _, st = await client.multi([ops.check(lock.node, 0),
                                                    ops.set(RES, f"{token}:{name}:{j}".encode())])
                        self.guarded.append({"zxid": st.mzxid, "token": token, "client": name})
                        await trio.sleep(rng.uniform(0.005, 0.03))
                except CoordError as e:
                    if hold["until"] is None:
                        hold["until"], hold["ended"] = trio.current_time(), e.code.value
                finally:
                    if hold["until"] is None:
                        hold["until"], hold["ended"] = trio.current_time(), "released"
                    hold = None
                with trio.move_on_after(self.params.lock_session_timeout):
                    try:
                        await lock.release()
                    except CoordError:
                        pass
                if lock.orphan is not None:
                    return  # closing the session deletes the node that would block everybody
                await trio.sleep(rng.uniform(0.0, 0.02))

    # -- watches -------------------------------------------------------------------------
    async def watcher(self, client: Client, session: int, k: int) -> None:
        """Consumes until ``release`` (past the stop: the final checks wait for
        every live watcher to reach the end marker)."""
        await client.sync()
        rec = {"name": f"w{k}.s{session}", "start": client.last_zxid, "end": client.last_zxid,
               "events": [], "resyncs": [], "ended": None}
        self.watchers.append(rec)
        self.live_watchers[rec["name"]] = rec
        with trio.CancelScope() as scope:
            self._release_scopes.add(scope)
            try:
                async with client.watch(LIN, recursive=True, start_zxid=rec["start"], buffer=100_000) as events:
                    async for ev in events:
                        if ev.type == "resync":
                            rec["resyncs"].append(ev.zxid)
                        else:
                            rec["events"].append([ev.zxid, ev.type, ev.path])
                            rec["end"] = max(rec["end"], ev.zxid)
            except CoordError as e:
                rec["ended"] = e.code.value
        self.live_watchers.pop(rec["name"], None)
        if not rec["ended"] and not self._released.is_set():
            rec["ended"] = "stream ended"

    # -- what the checkers need ---------------------------------------------------------
    def acked_changes(self) -> list[list]:
        """Changes whose zxid the workload learned: acknowledged set/cas on the lin keys."""
        return [[op.mzxid, "changed", op.key] for op in self.history.ops
                if op.f in ("set", "cas") and op.status == "ok" and op.mzxid is not None]


async def wait_live(client: Client, timeout: float) -> bool:
    try:
        return await client.wait_state(*LIVE, ConnState.EXPIRED, ConnState.CLOSED, timeout=timeout) in LIVE
    except trio.TooSlowError:
        return False


