#!/usr/bin/env python3
"""Session soak: many sessions and watches held for a long time, with churn,
RSS sampled over time; reports whether memory stays flat and whether
anything was lost (issue 11, "Soak").

Load: ``--sessions`` SDK sessions (``coordclient.Client``) spread over
``--procs`` load-generator processes (multiprocessing spawn, as bench.py),
each session owning one ephemeral node and holding ``--watches-per-session``
watches on distinct nodes of a shared set of ``--nodes`` nodes: a fraction
``--persistent-fraction`` of them persistent (``client.watch(path,
start_zxid=client.last_zxid)``, events consumed as a stream), the rest
one-shot (``get(path, watch=cb)``, re-armed by another ``get`` after each
event).  Then, for ``--duration`` seconds:

* a writer sets the watched nodes round robin at ``--write-rate`` per second
  (conditional sets: every applied write is known exactly, also after an
  ambiguous error);
* every ``--churn-interval`` s, ``--churn-fraction`` of the sessions close
  and reopen (new session, new ephemeral, new watches), and
  ``--move-fraction`` of them have their connection dropped so that the SDK
  resumes the session (and its watches, from where they were) on another
  server;
* every ``--sample-interval`` s one JSON line: each server's RSS (from
  /proc), sessions and watches (its status; with ``--http`` also its
  /metrics), each load generator's RSS and the load's counters.

Checks ("nothing lost"; any violation makes the exit status 1):

* events: every event a watch delivers, persistent or one-shot, is checked
  against the writer's log of applied writes: its zxid must be the first
  write to that node after the previous event of that watch (or after the
  point the watch started from, or the version the one-shot ``get`` read),
  so a missed, repeated or invented event is caught; before a session is
  closed by the churn, its watches must have caught up with every write
  acknowledged so far; at the end every watch must have reached the node's
  final write (one-shot ones armed on it);
* every node reads back with the last value the writer had acknowledged;
* the ephemerals under /soak/eph are exactly those of the live sessions,
  owned by them (closed sessions' ones are gone);
* every server reports the live sessions (plus those that were there
  before) and the watches they hold; after the final close, none is left;
* no session expired and every moved session came back.

Memory ("flat"): RSS of each server and load generator at the first sample
after load-up and at the last one, and the least-squares slope in MB per
10 minutes over the steady part (``--steady-after`` s into the churn);
slopes above ``--flat-threshold`` are flagged, not failed.  Before the load,
``--prefill-events`` sets (100,000: the size of a server's event history)
fill the bounded structures that would otherwise grow during the first
minutes and look like a leak.

    python bench/session_soak.py                                   # 10,000 sessions, 100,000 watches, 600 s
    python bench/session_soak.py --sessions 500 --duration 60      # a quick one
    python bench/session_soak.py --duration 3600 --json soak.json
    python bench/session_soak.py --endpoints 127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183

By default it starts its own 3-server ensemble (tests/cluster.py, fsync on,
as bench.py does); with ``--endpoints`` it uses a running one (the servers'
RSS is then found by their listening ports, same user only) and works
under /soak, which it deletes first.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import re
import signal
import socket
import sys
import tempfile
import time
import traceback
import urllib.request
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Run as a script, this directory comes first on sys.path and would make
# ``bench`` mean bench/bench.py: take it out, put the checkout (and the SDK) first.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
for _p in (ROOT, os.path.join(ROOT, "client")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench.bench import CLK_TCK, Ensemble, _mb, machine_ticks, proc_mem_kb, proc_ticks  # noqa: E402

mono = time.monotonic
SOAK = "/soak"
NODES = "/soak/w"
EPHS = "/soak/eph"
MAX_EXAMPLES = 50
PREFILL_TASKS = 64  # sets in flight while prefilling


def log(msg: str) -> None:
    sys.stderr.write(f"[soak {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def node_path(i: int) -> str:
    return f"{NODES}/{i:05d}"


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per 10 minutes."""
    pts = [(x, y) for x, y in points if y is not None]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return round(sum((x - mx) * (y - my) for x, y in pts) / sxx * 600, 2)


def at_least_one(x: float) -> int:
    """round(x), but 1 for any positive x (a small run still churns)."""
    return max(1, round(x)) if x > 0 else 0


class Violations:
    """Counts per kind and the first few examples."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.examples: list[dict] = []

    def add(self, kind: str, n: int = 1, **detail) -> None:
        self.counts[kind] += n
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, **detail})

    def merge(self, counts: dict, examples: list[dict]) -> None:
        self.counts.update(counts)
        for e in examples:
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(e)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ============================================================================ load generator (child process)
class _Watch:
    __slots__ = ("node", "persistent", "last", "armed", "evt", "box", "stream")

    def __init__(self, node: int, persistent: bool):
        self.node = node
        self.persistent = persistent
        self.last = 0  # persistent: zxid of the last event (or the start); one-shot: the version it was armed on
        self.armed = False
        self.evt = None
        self.box: list = []
        self.stream = None


class _Session:
    __slots__ = ("slot", "gen", "client", "eph", "sid", "server", "watches", "closing", "reopen", "moving")

    def __init__(self, slot: int, gen: int):
        import trio

        self.slot, self.gen = slot, gen
        self.client = None
        self.eph = ""
        self.sid = 0
        self.server = None
        self.watches: list[_Watch] = []
        self.closing = False
        self.reopen = trio.Event()
        self.moving = False


class LoadGen:
    """One load-generator process: ``sessions`` sessions, each with its
    ephemeral and its watches, churned and moved on command; checks every
    event against the writer's log, which the parent sends in increments."""

    def __init__(self, cfg: dict, cmd_q, out_q):
        self.cfg = cfg
        self.wid = cfg["wid"]
        self.cmd_q, self.out_q = cmd_q, out_q
        self.rng = random.Random(cfg["seed"] * 7919 + self.wid)
        self.wlog: dict[int, array] = {}  # node -> applied write zxids, ascending
        self.log_high = 0  # every write up to this zxid is in wlog
        self.log_complete = False
        self.pending: list[tuple[int, int, int, int]] = []  # (node, prev, zxid, persistent) to check
        self.n = collections.Counter()
        self.v = Violations()
        self.sessions: dict[int, _Session] = {}  # slot -> live (set up) session
        self.shutdown = False
        self.churn_until = 0.0
        self.churn_started = False
        self.planted_event = not cfg.get("plant_event")  # True: nothing (more) to plant
        self.slots_running = 0

    # -- the writer's log and the event checks ---------------------------------
    def add_log(self, items: list[tuple[int, int]]) -> None:
        for node, zxid in items:
            a = self.wlog.get(node)
            if a is None:
                a = self.wlog[node] = array("q")
            a.append(zxid)
            if zxid > self.log_high:
                self.log_high = zxid

    def succ(self, node: int, prev: int) -> int | None:
        a = self.wlog.get(node)
        if not a:
            return None
        k = bisect.bisect_right(a, prev)
        return a[k] if k < len(a) else None

    def last_write(self, node: int, upto: int | None = None) -> int:
        a = self.wlog.get(node)
        if not a:
            return 0
        if upto is None:
            return a[-1]
        k = bisect.bisect_right(a, upto)
        return a[k - 1] if k else 0

    def check_pending(self) -> None:
        keep = []
        for item in self.pending:
            node, prev, z, persistent = item
            if z > self.log_high and not self.log_complete:
                keep.append(item)
                continue
            s = self.succ(node, prev)
            if s == z:
                self.n["events_checked"] += 1
                continue
            a = self.wlog.get(node) or array("q")
            k = bisect.bisect_left(a, z)
            known = k < len(a) and a[k] == z
            kind = "persistent" if persistent else "one-shot"
            if not known:
                self.v.add("event_for_unknown_write", node=node, after=prev, zxid=z, watch=kind, wid=self.wid)
            else:
                missed = k - bisect.bisect_right(a, prev)
                self.v.add("missed_event", max(1, missed), node=node, after=prev, zxid=z, expected=s, watch=kind,
                           wid=self.wid)
        self.pending = keep

    def record(self, w: _Watch, zxid: int) -> None:
        self.pending.append((w.node, w.last, zxid, 1 if w.persistent else 0))

    # -- one session ----------------------------------------------------------------
    def _on_state(self, sess: _Session, state) -> None:
        from coordclient import ConnState

        if state is ConnState.EXPIRED and not sess.closing:
            self.v.add("session_expired", wid=self.wid, slot=sess.slot, sid=hex(sess.sid))
            sess.reopen.set()
        elif state is ConnState.SUSPENDED:
            self.n["suspended"] += 1
        elif state is ConnState.RECONNECTED:
            self.n["reconnected"] += 1

    async def _arm(self, sess: _Session, w: _Watch) -> bool:
        """(Re-)arm a one-shot watch with a get; False if the session is closing."""
        import trio

        from coordclient.errors import CoordError

        box: list = []
        evt = trio.Event()

        def cb(ev, box=box, evt=evt):
            box.append(ev)
            evt.set()

        deadline = mono() + 3 * self.cfg["session_timeout"]
        while True:
            try:
                _, stat = await sess.client.get(node_path(w.node), watch=cb)
                break
            except CoordError as e:
                if sess.closing or self.shutdown:
                    return False
                self.n["arm_retries"] += 1
                if mono() > deadline:
                    self.v.add("arm_failed", wid=self.wid, slot=sess.slot, node=w.node, error=repr(e))
                    return False
                await trio.sleep(0.2)
        w.box, w.evt = box, evt
        w.last = stat.mzxid
        w.armed = True
        return True

    async def _oneshot_task(self, sess: _Session, w: _Watch) -> None:
        from coordclient import RESYNC

        while not sess.closing:
            await w.evt.wait()
            w.armed = False
            ev = w.box[0]
            if ev.type == RESYNC:
                self.v.add("resync", wid=self.wid, slot=sess.slot, node=w.node, zxid=ev.zxid, watch="one-shot")
            else:
                self.n["events_oneshot"] += 1
                self.record(w, ev.zxid)
                w.last = ev.zxid
            if not await self._arm(sess, w):
                return

    async def _persistent_task(self, sess: _Session, w: _Watch) -> None:
        from coordclient import RESYNC
        from coordclient.errors import CoordError

        try:
            async for ev in w.stream:
                if ev.type == RESYNC:
                    self.v.add("resync", wid=self.wid, slot=sess.slot, node=w.node, zxid=ev.zxid, watch="persistent")
                    w.last = ev.zxid
                    continue
                if not self.planted_event and self.churn_started:
                    self.planted_event = True  # planted loss (tests): this event is "not delivered"
                    self.n["planted_dropped_events"] += 1
                    continue
                self.n["events_persistent"] += 1
                self.record(w, ev.zxid)
                w.last = ev.zxid
        except CoordError as e:
            if not sess.closing and not self.shutdown:
                self.v.add("watch_stream_failed", wid=self.wid, slot=sess.slot, node=w.node, error=repr(e))
        if not sess.closing and not self.shutdown:
            self.v.add("watch_stream_ended", wid=self.wid, slot=sess.slot, node=w.node)

    def _reached(self, w: _Watch, target: int, final: bool) -> bool:
        if w.persistent:
            return w.last >= target
        if final:
            return w.armed and w.last == target
        return w.last >= target

    async def _drain_before_close(self, sess: _Session) -> None:
        """Before a churned session closes: its watches must have delivered
        every write acknowledged so far (what the log says up to now)."""
        import trio

        upto = self.log_high
        targets = [(w, self.last_write(w.node, upto)) for w in sess.watches]
        deadline = mono() + self.cfg["drain_timeout"]
        while mono() < deadline:
            if all(self._reached(w, t, False) for w, t in targets):
                return
            await trio.sleep(0.1)
        for w, t in targets:
            if not self._reached(w, t, False):
                self.v.add("missed_before_close", wid=self.wid, slot=sess.slot, node=w.node, last=w.last, target=t,
                           watch="persistent" if w.persistent else "one-shot")

    async def _setup(self, sess: _Session, c) -> None:
        sess.client = c
        sess.sid = c.session_id
        sess.server = c.server_id
        sess.eph = f"w{self.wid}-s{sess.slot}-g{sess.gen}"
        await c.create(f"{EPHS}/{sess.eph}", b"%d" % sess.sid, ephemeral=True)
        r = random.Random(hash((self.cfg["seed"], self.wid, sess.slot, sess.gen)))
        nodes = r.sample(range(self.cfg["nodes"]), self.cfg["watches_per_session"])
        n_pers = self.cfg["persistent_per_session"]
        for i, node in enumerate(nodes):
            w = _Watch(node, i < n_pers)
            if w.persistent:
                start = c.last_zxid
                w.stream = c.watch(node_path(node), start_zxid=start)
                await w.stream.start()
                w.last = start
            elif not await self._arm(sess, w):
                raise RuntimeError("one-shot watch not armed during setup")
            sess.watches.append(w)

    async def _slot(self, slot: int, ready) -> None:
        self.slots_running += 1
        try:
            await self._slot_loop(slot, ready)
        finally:
            self.slots_running -= 1

    async def _slot_loop(self, slot: int, ready) -> None:
        import trio

        from coordclient import Client
        from coordclient.errors import CoordError

        gen = 0
        failures = 0
        while not self.shutdown:
            sess = _Session(slot, gen)
            gen += 1
            try:
                async with Client(self.cfg["endpoints"], session_timeout=self.cfg["session_timeout"],
                                  rng=random.Random(hash((self.cfg["seed"], self.wid, slot, gen)))) as c:
                    c.add_listener(lambda st, sess=sess: self._on_state(sess, st))
                    with trio.fail_after(self.cfg["setup_timeout"]):
                        await self._setup(sess, c)
                    self.sessions[slot] = sess
                    self.n["sessions_opened"] += 1
                    failures = 0
                    ready.set()
                    if self.shutdown:
                        sess.reopen.set()
                    async with trio.open_nursery() as nursery:
                        for w in sess.watches:
                            nursery.start_soon(self._persistent_task if w.persistent else self._oneshot_task, sess, w)
                        await sess.reopen.wait()
                        if not self.shutdown:
                            await self._drain_before_close(sess)
                        sess.closing = True
                        nursery.cancel_scope.cancel()
                    self.sessions.pop(slot, None)
                if not self.shutdown:
                    self.n["sessions_closed"] += 1
            except (CoordError, trio.TooSlowError, RuntimeError) as e:
                sess.closing = True
                self.sessions.pop(slot, None)
                failures += 1
                self.n["session_errors"] += 1
                if failures <= 3 or failures % 20 == 0:
                    log(f"w{self.wid} slot {slot}: {e!r} (failure {failures})")
                if failures >= self.cfg["max_slot_failures"]:
                    self.v.add("session_not_reopened", wid=self.wid, slot=slot, error=repr(e))
                    ready.set()
                    return
                await trio.sleep(min(5.0, 0.2 * failures))

    async def _move(self, sess: _Session) -> None:
        """Drop the session's connection: the SDK resumes it on the next
        server of its list, re-registering the watches from where they were."""
        import trio

        from coordclient import ConnState

        c = sess.client
        conn = c._conn  # noqa: SLF001 - there is no public "reconnect elsewhere"
        if conn is None or sess.closing:
            return
        sess.moving = True
        old = c.server_id
        conn.abort("session_soak: move to another server")
        deadline = mono() + self.cfg["move_timeout"]
        try:
            while mono() < deadline:
                if sess.closing:
                    return
                cur = c._conn  # noqa: SLF001
                if cur is not None and cur is not conn and c.state in (ConnState.CONNECTED, ConnState.RECONNECTED):
                    self.n["moves"] += 1
                    if c.server_id != old:
                        self.n["moves_to_other_server"] += 1
                    sess.server = c.server_id
                    return
                await trio.sleep(0.05)
            self.v.add("move_not_resumed", wid=self.wid, slot=sess.slot, sid=hex(sess.sid))
        finally:
            sess.moving = False

    async def _churn(self, nursery) -> None:
        import trio

        cfg = self.cfg
        self.churn_started = True
        nxt = mono() + cfg["churn_interval"]
        while True:
            await trio.sleep(max(0.0, min(nxt, self.churn_until) - mono()))
            if mono() >= self.churn_until or self.shutdown:
                return
            live = [s for s in self.sessions.values() if not s.closing and not s.moving]
            self.rng.shuffle(live)
            k, m = cfg["churn_per_interval"], cfg["move_per_interval"]
            for s in live[:k]:
                s.reopen.set()
                self.n["churned"] += 1
            for s in live[k:k + m]:
                nursery.start_soon(self._move, s)
            nxt += cfg["churn_interval"]

    # -- reports ---------------------------------------------------------------------------
    def stats(self) -> dict:
        ws = [w for s in self.sessions.values() for w in s.watches]
        return {"wid": self.wid, "live_sessions": len(self.sessions),
                "watches_persistent": sum(1 for w in ws if w.persistent),
                "watches_oneshot_armed": sum(1 for w in ws if not w.persistent and w.armed),
                "events": self.n["events_persistent"] + self.n["events_oneshot"],
                "pending_checks": len(self.pending), "log_high": self.log_high,
                "violations": self.v.total, **dict(self.n)}

    def live(self) -> list[tuple[str, int]]:
        return [(s.eph, s.sid) for s in self.sessions.values()]

    async def _settle(self, timeout: float) -> bool:
        import trio

        deadline = mono() + timeout
        while mono() < deadline:
            if (len(self.sessions) == self.cfg["sessions"]
                    and not any(s.closing or s.moving for s in self.sessions.values())):
                return True
            await trio.sleep(0.1)
        return False

    async def _final(self, timeout: float) -> dict:
        """The log is complete: every live watch must reach its node's last
        write (one-shot watches armed on it); then every event is checked."""
        import trio

        self.log_complete = True
        deadline = mono() + timeout
        t0 = mono()
        while mono() < deadline:
            if all(self._reached(w, self.last_write(w.node), True) for s in self.sessions.values() for w in s.watches):
                break
            await trio.sleep(0.1)
        waited = mono() - t0
        for s in self.sessions.values():
            for w in s.watches:
                target = self.last_write(w.node)
                if not self._reached(w, target, True):
                    self.v.add("watch_missed_final", wid=self.wid, slot=s.slot, node=w.node, last=w.last,
                               final=target, armed=w.armed, watch="persistent" if w.persistent else "one-shot")
        self.check_pending()
        return {"stats": self.stats(), "live": self.live(), "violations": dict(self.v.counts),
                "examples": self.v.examples, "final_wait_s": round(waited, 2)}

    # -- main -----------------------------------------------------------------------------------
    async def run(self) -> None:
        import trio

        cfg = self.cfg
        out = self.out_q
        async with trio.open_nursery() as nursery:
            cmds, cmd_recv = trio.open_memory_channel(1000)

            async def read_cmds():
                while True:
                    try:
                        msg = await trio.to_thread.run_sync(self.cmd_q.get, True, 0.5, abandon_on_cancel=True)
                    except queue.Empty:
                        continue
                    if msg[0] == "log":
                        self.add_log(msg[1])
                        self.check_pending()
                    else:
                        await cmds.send(msg)

            async def report():
                while True:
                    await trio.sleep(cfg["sample_interval"])
                    out.put(("stats", self.wid, self.stats()))

            nursery.start_soon(read_cmds)
            nursery.start_soon(report)
            # Open the sessions, ``open_concurrency`` at a time.
            sem = trio.Semaphore(cfg["open_concurrency"])
            t0 = mono()

            async def open_one(slot):
                ready = trio.Event()
                async with sem:
                    nursery.start_soon(self._slot, slot, ready)
                    with trio.move_on_after(cfg["setup_timeout"] * 3):
                        await ready.wait()

            async with trio.open_nursery() as opener:
                for slot in range(cfg["sessions"]):
                    opener.start_soon(open_one, slot)
            out.put(("ready", self.wid, {"opened": len(self.sessions), "load_s": round(mono() - t0, 2),
                                          "stats": self.stats()}))
            while True:
                msg = await cmd_recv.receive()
                if msg[0] == "churn":
                    self.churn_until = msg[1]
                    await self._churn(nursery)
                    ok = await self._settle(cfg["settle_timeout"])
                    if not ok:
                        self.v.add("not_settled", wid=self.wid, live=len(self.sessions))
                    out.put(("settled", self.wid, {"ok": ok, "stats": self.stats()}))
                elif msg[0] == "final":
                    out.put(("final", self.wid, await self._final(msg[1])))
                elif msg[0] == "close":
                    self.shutdown = True
                    for s in list(self.sessions.values()):
                        s.reopen.set()
                    with trio.move_on_after(cfg["setup_timeout"] * 2):
                        while self.slots_running:
                            await trio.sleep(0.1)
                    left = self.slots_running
                    nursery.cancel_scope.cancel()
                    out.put(("closed", self.wid, {"left_open": left}))
                    return


def _loadgen_main(cfg: dict, cmd_q, out_q) -> None:
    """Entry point of a load-generator process (multiprocessing spawn)."""
    import trio

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C reaches the whole group)
    try:
        trio.run(LoadGen(cfg, cmd_q, out_q).run)
    except BaseException:  # noqa: BLE001 - the parent reports it
        out_q.put(("error", cfg["wid"], traceback.format_exc()))


# ============================================================================ the parent
class Soak:
    def __init__(self, args, ens: Ensemble, emit=print):
        self.args = args
        self.ens = ens
        self.emit = emit
        self.v = Violations()
        self.samples: list[dict] = []
        self.phase = "setup"
        self.t0 = mono()
        self.procs: list = []
        self.cmd_qs: list = []
        self.out_q = None
        self.latest: dict[int, dict] = {}
        self.replies: dict[str, dict[int, dict]] = collections.defaultdict(dict)
        self.new_log: list[tuple[int, int]] = []
        self.last: dict[int, tuple[int, bytes, int]] = {}  # node -> (zxid, value, version) of its last write
        self.writes = 0
        self.ambiguous_writes = 0
        self.planted: list[str] = []
        self.info: dict = {}
        self.server_pids: dict[int, int] = {}
        self.exited: set[int] = set()
        self.leaders_seen: set[tuple[int, int]] = set()  # (term, leader) in the samples' statuses
        self._ticks: dict = {}  # what the last sample saw: pid -> CPU ticks, "t", "machine"

    # -- processes ---------------------------------------------------------------
    def spawn(self) -> None:
        a = self.args
        ctx = mp.get_context("spawn")
        self.out_q = ctx.Queue()
        eps = [self.ens.endpoint(n) for n in self.ens.nodes]
        per = [a.sessions // a.procs + (1 if i < a.sessions % a.procs else 0) for i in range(a.procs)]
        n_pers = round(a.watches_per_session * a.persistent_fraction)
        for wid, count in enumerate(per):
            cfg = {"wid": wid, "endpoints": ",".join(eps), "sessions": count, "nodes": a.nodes,
                   "watches_per_session": a.watches_per_session, "persistent_per_session": n_pers,
                   "session_timeout": a.session_timeout, "seed": a.seed, "sample_interval": a.sample_interval,
                   "churn_interval": a.churn_interval,
                   "churn_per_interval": at_least_one(count * a.churn_fraction),
                   "move_per_interval": at_least_one(count * a.move_fraction),
                   "open_concurrency": a.open_concurrency, "setup_timeout": max(30.0, 2 * a.session_timeout),
                   "drain_timeout": 10.0, "move_timeout": 2 * a.session_timeout, "settle_timeout": 120.0,
                   "max_slot_failures": 50, "plant_event": "event" in a.plant and wid == 0}
            q = ctx.Queue()
            p = ctx.Process(target=_loadgen_main, args=(cfg, q, self.out_q), daemon=True,
                            name=f"soak-loadgen-{wid}")
            p.start()
            self.procs.append(p)
            self.cmd_qs.append(q)

    def send_all(self, msg) -> None:
        for q in self.cmd_qs:
            q.put(msg)

    def stop_procs(self) -> None:
        """After "close" they have exited; on an error or Ctrl-C they are
        terminated (then killed) after a few seconds."""
        deadline = mono() + 3
        for p in self.procs:
            p.join(timeout=max(0.1, deadline - mono()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for q in self.cmd_qs:
            q.cancel_join_thread()  # nobody reads them any more: do not wait to flush at exit

    async def _intake(self) -> None:
        import trio

        while True:
            try:
                kind, wid, body = await trio.to_thread.run_sync(self.out_q.get, True, 0.5, abandon_on_cancel=True)
            except queue.Empty:
                for p in self.procs:
                    if p.exitcode is not None and wid_done(self, p) is False:
                        raise RuntimeError(f"load generator {p.name} exited with {p.exitcode}")
                continue
            if kind == "error":
                raise RuntimeError(f"load generator {wid} failed:\n{body}")
            if kind == "stats":
                self.latest[wid] = body
            else:
                self.replies[kind][wid] = body
                if "stats" in body:
                    self.latest[wid] = body["stats"]

    async def wait_replies(self, kind: str, timeout: float) -> dict[int, dict]:
        import trio

        with trio.move_on_after(timeout):
            while len(self.replies[kind]) < len(self.procs):
                await trio.sleep(0.1)
        got = self.replies[kind]
        if len(got) < len(self.procs):
            raise RuntimeError(f"only {len(got)} of {len(self.procs)} load generators said {kind!r} "
                               f"within {timeout:.0f} s")
        return got

    # -- observation -------------------------------------------------------------
    async def statuses(self) -> dict[int, dict]:
        from coord.cli import probe_status

        out = {}
        for n in self.ens.nodes:
            st = await probe_status(self.ens.addrs[n - 1], timeout=3.0)
            if st is not None:
                out[n] = st
        return out

    def _check_servers_alive(self) -> None:
        """A server this script started that exited is a violation (once), with its log's end."""
        if not self.ens.own:
            return
        for sid, p in self.ens.cluster.procs.items():
            if p.poll() is not None and sid not in self.exited:
                self.exited.add(sid)
                tail = self.ens.cluster.logs(sid, 1500).strip().splitlines()[-8:]
                self.v.add("server_exited", server=sid, code=p.returncode, log_tail=tail)
                log(f"server {sid} exited with {p.returncode}: " + " | ".join(tail[-3:]))

    def _pids(self) -> dict[int, int]:
        if not self.server_pids or any(proc_mem_kb(p, "VmRSS") is None for p in self.server_pids.values()):
            self.server_pids = self.ens.server_pids()
        return self.server_pids

    async def sample(self) -> dict:
        import trio

        sts = await self.statuses()
        self._check_servers_alive()
        pids = self._pids()
        servers = {}
        for n in self.ens.nodes:
            st = sts.get(n, {})
            if st.get("term") is not None and st.get("leader"):
                self.leaders_seen.add((st["term"], st["leader"]))
            servers[str(n)] = {"rss_mb": _mb(proc_mem_kb(pids.get(n), "VmRSS")), "role": st.get("role"),
                               "term": st.get("term"),
                               "sessions": st.get("sessions"), "watches": st.get("watches"),
                               "nodes": st.get("nodes"), "applied": st.get("applied")}
        if self.ens.metrics_urls:
            for n, url in zip(self.ens.nodes, self.ens.metrics_urls):
                servers[str(n)]["metrics"] = await trio.to_thread.run_sync(scrape, url)
        lg = {str(p.pid): _mb(proc_mem_kb(p.pid, "VmRSS")) for p in self.procs}
        # CPU since the previous sample, in cores: each server, the load generators, the machine
        now, mach = mono(), machine_ticks()
        ticks = {pid: proc_ticks(pid) for pid in [*pids.values(), *(p.pid for p in self.procs)]}
        prev, self._ticks = self._ticks, {"t": now, "machine": mach, **ticks}
        cpu = None
        if prev:
            wall = now - prev["t"]

            def cores(pid):
                a, b = prev.get(pid), ticks.get(pid)
                return None if a is None or b is None else round((b - a) / CLK_TCK / wall, 2)

            lgc = [cores(p.pid) for p in self.procs]
            cpu = {"servers": {str(n): cores(pid) for n, pid in pids.items()},
                   "loadgen": round(sum(x for x in lgc if x is not None), 2),
                   "machine_busy": round((mach[0] - prev["machine"][0]) / CLK_TCK / wall, 2)}
        st = list(self.latest.values())
        s = {"t": round(mono() - self.t0, 1), "phase": self.phase, "servers": servers,
             "loadgen_rss_mb": lg, "loadgen_rss_mb_total": round(sum(x for x in lg.values() if x), 1),
             "cpu_cores": cpu,
             "live_sessions": sum(x.get("live_sessions", 0) for x in st),
             "client_watches": sum(x.get("watches_persistent", 0) + x.get("watches_oneshot_armed", 0) for x in st),
             "writes": self.writes,
             "events": sum(x.get("events", 0) for x in st),
             "events_checked": sum(x.get("events_checked", 0) for x in st),
             "sessions_churned": sum(x.get("churned", 0) for x in st),
             "moves": sum(x.get("moves", 0) for x in st),
             "violations": self.v.total + sum(x.get("violations", 0) for x in st)}
        self.samples.append(s)
        self.emit(json.dumps(s))
        return s

    async def _sampler(self) -> None:
        import trio

        nxt = mono()
        while True:
            await self.sample()
            nxt += self.args.sample_interval
            await trio.sleep(max(0.0, nxt - mono()))

    # -- the namespace and the writer ------------------------------------------
    async def prepare(self, c) -> None:
        from coordclient import ops

        a = self.args
        if await c.exists(SOAK) is not None:
            await c.delete(SOAK, recursive=True)
        await c.create(SOAK, b"")
        await c.create(NODES, b"")
        await c.create(EPHS, b"")
        for base in range(0, a.nodes, 500):
            await c.multi([ops.create(node_path(i), b"0") for i in range(base, min(base + 500, a.nodes))])
        # Fill the servers' bounded structures (the event history replayed to
        # reconnecting watches, 100,000 events by default) before measuring,
        # so that the RSS slope shows growth, not a buffer filling up.  One
        # set per command, as the writer does: an event inside a multi of
        # 1,000 costs the history a tenth of a single write's, so a history
        # filled with multis kept growing for half an hour under the
        # writer's load (issue 11).
        import trio

        todo = [i % a.nodes for i in range(a.prefill_events)]
        t = mono()

        async def fill(k: int) -> None:
            for i in todo[k::PREFILL_TASKS]:
                await c.set(node_path(i), b"0")

        async with trio.open_nursery() as nursery:
            for k in range(PREFILL_TASKS):
                nursery.start_soon(fill, k)
        if todo:
            log(f"prefilled the event history with {len(todo)} sets in {mono() - t:.1f} s")
        for name, st in await c.children(NODES, stats=True, linearizable=True):
            node = int(name)
            self.last[node] = (st.mzxid, b"0", st.version)
            self.new_log.append((node, st.mzxid))

    async def _set_resolved(self, c, node: int, value: bytes, version: int) -> tuple[int, int] | None:
        """A conditional set of ``node`` from ``version``: (zxid, new version)
        once applied, None if it surely was not.  After an ambiguous error the
        node is read back (only this writer writes it, and only
        conditionally, so a late apply of an earlier attempt cannot double)."""
        import trio

        from coordclient.errors import BadVersionError, CoordError

        path = node_path(node)
        try:
            st = await c.set(path, value, version=version)
            return st.mzxid, st.version
        except CoordError as e:
            self.ambiguous_writes += 1
            log(f"write to {path} failed ({e!r}); resolving")
        deadline = mono() + 4 * self.args.session_timeout
        while mono() < deadline:
            await trio.sleep(0.5)
            try:
                data, st = await c.get(path, linearizable=True)
                if st.version == version + 1 and data == value:
                    return st.mzxid, st.version
                if st.version != version:
                    raise RuntimeError(f"{path}: version {st.version} ({data!r}), expected {version} or "
                                       f"{version + 1} with {value!r}: somebody else writes")
                st = await c.set(path, value, version=version)
                return st.mzxid, st.version
            except BadVersionError:
                continue  # the earlier attempt was applied after all: read it back
            except CoordError as e:
                log(f"write to {path}: still failing ({e!r})")
        raise RuntimeError(f"write to {path} could not be resolved within {4 * self.args.session_timeout:.0f} s")

    async def _writer(self, c, t_end: float) -> None:
        import trio

        a = self.args
        period = 1.0 / a.write_rate
        nxt = mono()
        k = 0
        while mono() < t_end:
            node = k % a.nodes
            k += 1
            value = b"%d" % k
            zxid, ver = self.last[node][0], self.last[node][2]
            got = await self._set_resolved(c, node, value, ver)
            if got is not None:
                self.last[node] = (got[0], value, got[1])
                self.new_log.append((node, got[0]))
                self.writes += 1
            nxt += period
            if nxt < mono() - 1.0:
                nxt = mono()  # behind by more than a second: do not build a backlog
            await trio.sleep(max(0.0, nxt - mono()))

    async def _log_pusher(self) -> None:
        import trio

        while True:
            self.flush_log()
            await trio.sleep(1.0)

    def flush_log(self) -> None:
        if self.new_log:
            batch, self.new_log = self.new_log, []
            self.send_all(("log", batch))

    # -- checks ---------------------------------------------------------------------------
    async def _until(self, fn, timeout: float):
        """Poll ``fn()`` (async, returns (ok, detail)) until ok or timeout; the last (ok, detail)."""
        import trio

        deadline = mono() + timeout
        while True:
            ok, detail = await fn()
            if ok or mono() >= deadline:
                return ok, detail
            await trio.sleep(0.25)

    async def check_nodes(self, c) -> dict:
        bad = 0
        for node, (zxid, value, version) in sorted(self.last.items()):
            data, st = await c.get(node_path(node), linearizable=True)
            if data != value or st.version != version or st.mzxid != zxid:
                bad += 1
                self.v.add("write_lost", node=node, expected=[value.decode(), version, zxid],
                           found=[data.decode(errors="replace"), st.version, st.mzxid])
        return {"nodes_read": len(self.last), "wrong": bad}

    async def check_ephemerals(self, c, live: dict[str, int]) -> dict:
        kids = dict((name, st.ephemeral_owner) for name, st in
                    await c.children(EPHS, stats=True, linearizable=True))
        missing = sorted(set(live) - set(kids))
        extra = sorted(set(kids) - set(live))
        wrong = sorted(n for n in set(live) & set(kids) if kids[n] != live[n])
        for n in missing:
            self.v.add("ephemeral_missing", path=f"{EPHS}/{n}", planted=f"{EPHS}/{n}" in self.planted)
        for n in extra:
            self.v.add("ephemeral_left_over", path=f"{EPHS}/{n}", owner=hex(kids[n]))
        for n in wrong:
            self.v.add("ephemeral_wrong_owner", path=f"{EPHS}/{n}", owner=hex(kids[n]), session=hex(live[n]))
        return {"expected": len(live), "found": len(kids), "missing": len(missing), "left_over": len(extra),
                "wrong_owner": len(wrong)}

    async def check_counts(self, sessions: int, watches: int, what: str, timeout: float = 15.0) -> dict:
        async def probe():
            sts = await self.statuses()
            per = {str(n): st.get("sessions") for n, st in sts.items()}
            w = sum(st.get("watches") or 0 for st in sts.values())
            ok = (len(sts) == len(self.ens.nodes) and all(v == sessions for v in per.values()) and w == watches)
            return ok, {"sessions_expected": sessions, "sessions_reported": per, "watches_expected": watches,
                        "watches_reported": w}

        ok, detail = await self._until(probe, timeout)
        if not ok:
            if any(v != sessions for v in detail["sessions_reported"].values()):
                self.v.add("sessions_count", when=what, **detail)
            if detail["watches_reported"] != watches:
                self.v.add("watches_count", when=what, **detail)
        return detail

    # -- the run ------------------------------------------------------------------------
    async def main(self) -> dict:
        import trio

        from coordclient import Client

        a = self.args
        eps = self.ens.all_endpoints()
        async with Client(eps, session_timeout=a.session_timeout) as wc, \
                Client(eps, session_timeout=a.session_timeout) as cc:
            await self.prepare(cc)
            sts = await self.statuses()
            self.info["baseline"] = {
                "sessions": max(st["sessions"] for st in sts.values()),
                "watches": sum(st.get("watches") or 0 for st in sts.values()),
                "rss_mb": {str(n): _mb(proc_mem_kb(p, "VmRSS")) for n, p in self._pids().items()}}
            base_sessions, base_watches = self.info["baseline"]["sessions"], self.info["baseline"]["watches"]
            log(f"{a.sessions} sessions x {a.watches_per_session} watches over {a.nodes} nodes, "
                f"{a.procs} processes; baseline {self.info['baseline']}")
            self.phase = "load"
            await trio.to_thread.run_sync(self.spawn)
            self.flush_log()
            async with trio.open_nursery() as n:
                n.start_soon(self._intake)
                n.start_soon(self._sampler)
                n.start_soon(self._log_pusher)
                t = mono()
                ready = await self.wait_replies("ready", a.load_timeout)
                self.info["load_s"] = round(mono() - t, 1)
                self.info["opened_at_ready"] = sum(r["opened"] for r in ready.values())
                log(f"loaded: {self.info['opened_at_ready']} sessions in {self.info['load_s']} s; "
                    f"churn for {a.duration} s")
                self.phase = "churn"
                t_churn = mono()
                self.info["churn_started_t"] = round(t_churn - self.t0, 1)
                await self.sample()
                t_end = t_churn + a.duration
                self.send_all(("churn", t_end))
                await self._writer(wc, t_end)
                self.info["churn_s"] = round(mono() - t_churn, 1)
                self.info["write_rate"] = round(self.writes / max(1e-9, mono() - t_churn), 1)
                self.phase = "settle"
                self.flush_log()
                await self.wait_replies("settled", 180)
                await self.sample()
                self.info["churn_ended_t"] = round(mono() - self.t0, 1)
                if "ephemeral" in a.plant:  # planted loss (tests): an ephemeral deleted behind its owner's back
                    name = sorted(x for x in await cc.children(EPHS) if x.startswith("w0-"))[0]
                    await cc.delete(f"{EPHS}/{name}")
                    self.planted.append(f"{EPHS}/{name}")
                    log(f"planted: deleted {EPHS}/{name}")
                self.phase = "final"
                self.flush_log()
                self.send_all(("final", a.final_timeout))
                finals = await self.wait_replies("final", a.final_timeout + 60)
                live: dict[str, int] = {}
                for wid, r in sorted(finals.items()):
                    live.update(dict(r["live"]))
                    self.v.merge(r["violations"], r["examples"])
                self.info["final_wait_s"] = max(r["final_wait_s"] for r in finals.values())
                checks = {"nodes": await self.check_nodes(cc),
                          "ephemerals": await self.check_ephemerals(cc, live),
                          "counts_live": await self.check_counts(base_sessions + len(live),
                                                                 base_watches + len(live) * a.watches_per_session,
                                                                 "live")}
                self.info["live_at_end"] = len(live)
                await self.sample()
                self.phase = "closed"
                self.send_all(("close",))
                closed = await self.wait_replies("closed", 120)
                self.latest = {}
                left = sum(r["left_open"] for r in closed.values())
                if left:
                    self.v.add("sessions_not_closed", count=left)
                checks["counts_closed"] = await self.check_counts(base_sessions, base_watches, "after close", 30)
                checks["ephemerals_closed"] = await self.check_ephemerals(cc, {})
                await self.sample()
                n.cancel_scope.cancel()
        return checks

    def summary(self, checks: dict) -> dict:
        a = self.args
        churn = [s for s in self.samples if s["phase"] == "churn"]
        t_start = self.info.get("churn_started_t", 0.0)
        steady_after = a.steady_after if a.steady_after is not None else min(120.0, 0.1 * a.duration)
        steady = [s for s in churn if s["t"] >= t_start + steady_after] or churn
        mem: dict = {"servers": {}, "steady_window_s": [steady[0]["t"], steady[-1]["t"]] if steady else None,
                     "threshold_mb_per_10min": a.flat_threshold}
        closed = [s for s in self.samples if s["phase"] == "closed"]

        def series(get):
            return ([get(s) for s in churn], [(s["t"], get(s)) for s in steady])

        for n in self.ens.nodes:
            vals, pts = series(lambda s, n=n: s["servers"][str(n)]["rss_mb"])
            vals = [v for v in vals if v is not None]
            slope = slope_per_10min(pts)
            mem["servers"][str(n)] = {
                "rss_mb_before_load": self.info.get("baseline", {}).get("rss_mb", {}).get(str(n)),
                "rss_mb_first": vals[0] if vals else None, "rss_mb_last": vals[-1] if vals else None,
                "rss_mb_max": max(vals) if vals else None, "slope_mb_per_10min": slope,
                "rss_mb_after_close": closed[-1]["servers"][str(n)]["rss_mb"] if closed else None,
                "growing": slope is not None and slope > a.flat_threshold}
        vals, pts = series(lambda s: s["loadgen_rss_mb_total"])
        slope = slope_per_10min(pts)
        mem["loadgen_total"] = {"rss_mb_first": vals[0] if vals else None, "rss_mb_last": vals[-1] if vals else None,
                                "slope_mb_per_10min": slope,
                                "growing": slope is not None and slope > a.flat_threshold}
        mem["flagged"] = [k for k, m in mem["servers"].items() if m["growing"]] + (
            ["loadgen"] if mem["loadgen_total"]["growing"] else [])
        st = {}
        for r in self.replies.get("final", {}).values():
            for k, v in r["stats"].items():
                if isinstance(v, (int, float)) and k != "wid":
                    st[k] = st.get(k, 0) + v
        srv_w = [s for s in churn]
        load = {"sessions": a.sessions, "watches": a.sessions * a.watches_per_session,
                "watches_persistent_per_session": round(a.watches_per_session * a.persistent_fraction),
                "nodes": a.nodes, "duration_s": self.info.get("churn_s"), "load_s": self.info.get("load_s"),
                "writes": self.writes, "write_rate": self.info.get("write_rate"),
                "ambiguous_writes": self.ambiguous_writes,
                "events_delivered": st.get("events_persistent", 0) + st.get("events_oneshot", 0),
                "events_persistent": st.get("events_persistent", 0), "events_oneshot": st.get("events_oneshot", 0),
                "events_checked": st.get("events_checked", 0),
                "sessions_opened": st.get("sessions_opened", 0), "sessions_closed_by_churn": st.get("sessions_closed", 0),
                "moves": st.get("moves", 0), "moves_to_other_server": st.get("moves_to_other_server", 0),
                "reconnects": st.get("reconnected", 0), "session_errors": st.get("session_errors", 0),
                "arm_retries": st.get("arm_retries", 0), "final_wait_s": self.info.get("final_wait_s"),
                "suspended": st.get("suspended", 0),
                "leaders_seen": sorted(self.leaders_seen),
                "server_sessions_range": [min((x["servers"][k]["sessions"] or 0) for x in srv_w for k in x["servers"]),
                                          max((x["servers"][k]["sessions"] or 0) for x in srv_w for k in x["servers"])]
                if srv_w else None,
                "server_watches_total_range": [min(sum(v["watches"] or 0 for v in x["servers"].values()) for x in srv_w),
                                               max(sum(v["watches"] or 0 for v in x["servers"].values()) for x in srv_w)]
                if srv_w else None}
        cs = [s["cpu_cores"] for s in churn if s.get("cpu_cores")]

        def mean(xs):
            xs = [x for x in xs if x is not None]
            return round(sum(xs) / len(xs), 2) if xs else None

        cpu = {"servers": {str(n): mean([c["servers"].get(str(n)) for c in cs]) for n in self.ens.nodes},
               "loadgen": mean([c["loadgen"] for c in cs]), "machine_busy": mean([c["machine_busy"] for c in cs]),
               "note": "mean cores busy over the churn phase"}
        return {"summary": True, "load": load, "memory": mem, "cpu_cores": cpu, "checks": checks,
                "violations": dict(self.v.counts), "violations_total": self.v.total,
                "violation_examples": self.v.examples, "planted": self.planted, "info": self.info}


def wid_done(soak: Soak, p) -> bool:
    """A load generator that exited is fine once it said "closed"."""
    wid = soak.procs.index(p)
    return wid in soak.replies.get("closed", {})


_METRICS = ("coord_sessions", "coord_watches", "coord_client_connections", "coord_sessions_expired_total",
            "process_resident_memory_bytes")


def scrape(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return None
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r"([a-z_]+)(?:\{[^}]*\})? ([-+0-9.eE]+|NaN)$", line)
        if m and m.group(1) in _METRICS:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", help="an existing ensemble's client endpoints (default: start 3 servers)")
    ap.add_argument("--http", action="store_true", help="give the servers HTTP ports and sample their /metrics")
    ap.add_argument("--http-endpoints", help="with --endpoints: the servers' HTTP ports, to sample /metrics")
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--watches-per-session", type=int, default=10)
    ap.add_argument("--persistent-fraction", type=float, default=0.5,
                    help="share of each session's watches that are persistent (the rest are one-shot, re-armed)")
    ap.add_argument("--nodes", type=int, default=10_000,
                    help="watched nodes, shared by all sessions (events/s = write rate x watches / nodes)")
    ap.add_argument("--procs", type=int, default=4, help="load-generator processes")
    ap.add_argument("--duration", type=float, default=600.0, help="churn phase (s), after load-up")
    ap.add_argument("--write-rate", type=float, default=50.0, help="sets of the watched nodes per second")
    ap.add_argument("--churn-interval", type=float, default=10.0)
    ap.add_argument("--churn-fraction", type=float, default=0.01,
                    help="sessions closed and reopened every interval")
    ap.add_argument("--move-fraction", type=float, default=0.01,
                    help="sessions whose connection is dropped every interval (resumed on another server)")
    ap.add_argument("--session-timeout", type=float, default=30.0)
    ap.add_argument("--election-ticks", type=int, default=40,
                    help="election timeout of the servers this script starts, in 50 ms ticks (bench.py: 10). "
                         "On a shared 2-core machine 0.5 s lets CPU starvation start elections, and every "
                         "election makes every server drop all its clients (see the README)")
    ap.add_argument("--min-session-timeout-ms", type=int, default=10_000,
                    help="[limits] min_session_timeout_ms of the servers this script starts.  A follower drops "
                         "all its clients when the leader has not acknowledged its keepalives for half of it: "
                         "tests/cluster.py's 500 ms makes a busy 2-core machine push every client onto the "
                         "leader (and see the README)")
    ap.add_argument("--sample-interval", type=float, default=10.0)
    ap.add_argument("--steady-after", type=float, default=None,
                    help="seconds into the churn where the memory slope starts (default min(120, 10%% of it))")
    ap.add_argument("--flat-threshold", type=float, default=5.0, help="flag an RSS slope above this (MB/10 min)")
    ap.add_argument("--open-concurrency", type=int, default=50, help="sessions being opened at once per process")
    ap.add_argument("--load-timeout", type=float, default=None, help="default: max(300, sessions / 15) s")
    ap.add_argument("--final-timeout", type=float, default=60.0,
                    help="how long watches may take to reach the final writes")
    ap.add_argument("--prefill-events", type=int, default=100_000,
                    help="sets (in multis of 1000) before the load, to fill the servers' event history "
                         "(its default size) so that its filling is not taken for growth; 0: none")
    ap.add_argument("--log-level", default="info", help="of the servers this script starts")
    ap.add_argument("--keep-logs", help="copy the servers' logs into this directory at the end")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write parameters, every sample, the summary and the checks to this file")
    ap.add_argument("--plant", default="", help=argparse.SUPPRESS)  # tests: "ephemeral,event" plants losses
    return ap


def run(args, emit=print) -> dict:
    """The whole soak; returns the summary (``violations_total`` 0: nothing lost)."""
    if args.load_timeout is None:
        args.load_timeout = max(300.0, args.sessions / 15)
    args.plant = [p for p in (args.plant or "").split(",") if p] if isinstance(args.plant, str) else args.plant
    base = tempfile.mkdtemp(prefix="coord-soak-")
    meta = {"python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "host": socket.gethostname(), "params": vars(args),
            "utc_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ensemble": args.endpoints or "3 servers started by session_soak.py (tests/cluster.py), fsync on, "
                                           f"tick 50 ms, election {args.election_ticks} ticks, "
                                           f"min session timeout {args.min_session_timeout_ms} ms"}
    import trio

    ens = Ensemble(args.endpoints, 3, os.path.join(base, "soak"), http=args.http,
                   http_endpoints=args.http_endpoints, log_level=args.log_level,
                   cluster_opts={"min_session_timeout_ms": args.min_session_timeout_ms,
                                 "election_ticks": args.election_ticks})
    soak = Soak(args, ens, emit)
    try:
        ens.wait_healthy(60)
        try:
            checks = trio.run(soak.main)
        except Exception as e:  # noqa: BLE001 - a run that could not finish still reports what it saw
            log(f"the run failed: {e!r}")
            soak.v.add("run_failed", error=repr(e)[:2000], phase=soak.phase)
            checks = {"error": repr(e)[:2000]}
        out = soak.summary(checks)
    finally:
        soak.stop_procs()
        ens.close()
        if args.keep_logs and ens.own:
            import shutil

            os.makedirs(args.keep_logs, exist_ok=True)
            for sid in ens.nodes:
                shutil.copy(ens.cluster.log_path(sid), os.path.join(args.keep_logs, f"server{sid}.log"))
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    meta["utc_end"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["meta"] = meta
    out["samples"] = soak.samples
    return out


def main() -> int:
    args = build_parser().parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        out = run(args)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    short = {k: v for k, v in out.items() if k not in ("samples", "meta")}
    print(json.dumps(short), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    mem = out["memory"]
    log("RSS per server (MB) first -> last, slope MB/10 min: " + ", ".join(
        f"{k}: {m['rss_mb_first']} -> {m['rss_mb_last']}, {m['slope_mb_per_10min']}" for k, m in mem["servers"].items()))
    if mem["flagged"]:
        log(f"memory growing above {args.flat_threshold} MB/10 min: {mem['flagged']} (reported, not failed)")
    ld = out["load"]
    log(f"{ld['sessions']} sessions, {ld['watches']} watches, {ld['writes']} writes, "
        f"{ld['events_delivered']} events ({ld['events_checked']} checked), "
        f"{ld['sessions_closed_by_churn']} sessions churned, {ld['moves']} moved; "
        f"violations: {out['violations_total']} {out['violations'] or ''}")
    return 1 if out["violations_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
