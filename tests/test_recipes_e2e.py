"""Recipes end to end: a real 3-process ensemble, servers SIGKILLed and
restarted, client processes SIGKILLed and SIGSTOPped, a client cut off
from the network.

What is checked, and why it is sound across processes:

* In this process, critical sections are timed with one monotonic clock:
  they must never overlap and their tokens must strictly increase.  A body
  that loses its lock records its end when it is cancelled, so this checks
  that a holder stops before the next one starts.
* Processes that may be SIGKILLed cannot report an end.  Every holder, in
  any process, appends "<token> start" and "<token> end" to a log in coord
  with fenced writes; coord orders the log, so the log must read as
  non-interleaved sections with strictly increasing tokens, whatever the
  clients' clocks or deaths.

Run as ``python -m tests.test_recipes_e2e ENDPOINTS SEED UNTIL`` it is the
contending worker used for the client processes (UNTIL: a ``time.monotonic()``
deadline, a clock that all processes share).
"""

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio

from coordclient._compat import to_thread_abandonable

from coordclient import Client, ConnState, ops
from coordclient.errors import CoordError, MultiError, NoNodeError
from coordclient.recipes import Election, LeadershipLostError, Lock
from tests.cluster import ROOT, Cluster, child_env

LOCK, LOG = "/me/lock", "/me/log"
SESSION = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(3, tmp_path_factory.mktemp("recipes"))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
async def ensemble(cluster):
    """The module's cluster with every server running and a leader."""
    for sid in range(1, cluster.n + 1):
        if sid not in cluster.running():
            cluster.start_server(sid)
    await cluster.wait_leader()
    return cluster


async def contend(endpoints, seed, seconds, sections=None, errors=None, on_session=None):
    """Loop on LOCK for ``seconds``; every hold writes fenced start/end marks
    to LOG.  ``sections`` gets (token, start, end) per hold (end = when the
    body ended, normally or cancelled)."""
    rng = random.Random(seed)
    errors = errors if errors is not None else collections.Counter()
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        try:
            async with Client(endpoints, session_timeout=SESSION) as c:
                if on_session:
                    on_session(c.session_id)
                lock = Lock(c, LOCK)
                # The deadline cancels the loop, not the client: a release needs the client's connection.
                with trio.move_on_at(deadline):
                    while c.state not in (ConnState.EXPIRED, ConnState.CLOSED):
                        try:
                            async with lock:
                                token, start = lock.fencing_token, trio.current_time()
                                try:
                                    await lock.fenced([ops.create(f"{LOG}/e-", b"%d start" % token, sequential=True)])
                                    await trio.sleep(rng.uniform(0, 0.02))
                                    await lock.fenced([ops.create(f"{LOG}/e-", b"%d end" % token, sequential=True)])
                                finally:
                                    if sections is not None:
                                        sections.append((token, start, trio.current_time()))
                        except CoordError as exc:  # LockLostError included
                            errors[type(exc).__name__] += 1
                            await lock.release()  # finishes a release left pending, if any
        except CoordError as exc:
            errors[type(exc).__name__] += 1
            await trio.sleep(0.1)


def assert_exclusive(sections):
    sections = sorted(sections, key=lambda s: s[1])
    for (tok_a, _, end_a), (tok_b, start_b, _) in zip(sections, sections[1:]):
        assert end_a <= start_b, f"overlap: {tok_a} ended at {end_a:.4f}, {tok_b} started at {start_b:.4f}"
        assert tok_a < tok_b, f"token went from {tok_a} to {tok_b}"


def assert_log_sections(marks):
    """``marks``: (token, "start"|"end") in log order.  Sections do not
    interleave and tokens strictly increase from one section to the next; a
    section whose holder died or lost the lock may lack its end."""
    current, state = None, None
    for token, mark in marks:
        if token != current:
            assert current is None or token > current, f"token {token} after {current}"
            assert mark == "start", f"{token} {mark} without a start"
            current, state = token, "start"
        else:
            assert (state, mark) == ("start", "end"), f"{token}: {mark} after {state}"
            state = "end"


async def read_log(client):
    names = sorted(await client.children(LOG))
    datas = {}

    async def get(name):
        datas[name] = (await client.get(f"{LOG}/{name}"))[0].decode()

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(get, name)
    return [(int(tok), mark) for tok, mark in (datas[n].split() for n in names)]


async def test_mutual_exclusion_under_server_and_client_kills(ensemble, tmp_path):
    seconds = 20
    sections, errors = [], collections.Counter()
    async with Client(ensemble.endpoints, session_timeout=10) as admin:
        await admin.create(LOG, make_parents=True)
        workers, sids = [], {}

        until = time.monotonic() + seconds

        async def spawn(k):
            with open(tmp_path / f"worker{k}.err", "wb") as err:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "tests.test_recipes_e2e", ensemble.endpoints, str(k), repr(until)],
                    stdout=subprocess.PIPE, stderr=err, env=child_env(), cwd=ROOT)
            workers.append(proc)
            nursery.start_soon(read_sids, proc)

        async def read_sids(proc):
            buffer = b""
            async for chunk in proc.stdout:
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    sids[int(line, 16)] = proc

        async def kill_a_holding_worker():
            """SIGKILL the client process holding the lock (any one after 3 s)."""
            with trio.move_on_after(3):
                while True:
                    kids = sorted(await admin.children(LOCK), key=lambda n: n[-10:])
                    proc = sids.get(int(kids[0].split("-")[1], 16)) if kids else None
                    if proc is not None and proc.returncode is None:
                        break
                    await trio.sleep(0.02)
            if proc is None or proc.returncode is not None:
                proc = next(p for p in workers if p.returncode is None)
            proc.send_signal(signal.SIGKILL)

        async def chaos():
            t0 = trio.current_time()
            for at, kind in ((2, "leader"), (6, "holder"), (8, "follower"), (12, "holder"), (14, "leader")):
                await trio.sleep_until(t0 + at)
                if kind == "holder":
                    await kill_a_holding_worker()
                    await spawn(100 + at)
                    continue
                leader = await ensemble.wait_leader()
                victim = leader if kind == "leader" else next(s for s in ensemble.running() if s != leader)
                ensemble.kill(victim)
                await trio.sleep(1.5)
                ensemble.start_server(victim)

        try:
            async with trio.open_nursery() as nursery:
                for k in range(3):
                    await spawn(k)
                nursery.start_soon(chaos)
                async with trio.open_nursery() as local:
                    for k in range(4):
                        local.start_soon(contend, ensemble.endpoints, 10 + k, seconds, sections, errors)
                with trio.fail_after(30):  # a worker's exit may wait for a release, then a session close
                    for proc in workers:
                        await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            for proc in workers:
                if proc.returncode is None:
                    proc.kill()
        marks = await read_log(admin)
    completed = sum(1 for _, mark in marks if mark == "end")
    codes = sorted(p.returncode for p in workers)
    worker_errors = "".join(f.read_text() for f in sorted(tmp_path.glob("worker*.err")))
    print(f"{len(sections)} in-process sections, {completed} completed overall, errors {dict(errors)}, "
          f"workers exited {codes}\n{worker_errors}")
    assert_exclusive(sections)
    assert_log_sections(marks)
    assert completed >= 40 and len(sections) >= 10
    assert codes == [-signal.SIGKILL] * 2 + [0] * 3, (codes, worker_errors)


HOLDER = textwrap.dedent("""
    import sys, trio
    from coordclient import Client, ops
    from coordclient.recipes import Lock, LockLostError

    async def main(endpoints):
        async with Client(endpoints, session_timeout=1.5) as c:
            lock = Lock(c, "/stop/lock")
            try:
                async with lock:
                    print("held", lock.fencing_token, lock.node, flush=True)
                    n = 0
                    while True:
                        await trio.sleep(0.05)
                        n += 1
                        try:
                            await lock.fenced([ops.set("/stop/data", b"holder %d" % n)])
                        except LockLostError:
                            print("write-rejected", n, flush=True)
                            raise
                        print("write-ok", n, flush=True)
            except LockLostError as exc:
                print("lost", exc.code.value, flush=True)

    trio.run(main, sys.argv[1])
""")


async def test_stopped_holder_is_cancelled_and_its_fenced_write_rejected(ensemble):
    async with Client(ensemble.endpoints, session_timeout=5) as c:
        await c.create("/stop/data", b"init", make_parents=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, ensemble.endpoints], stdout=subprocess.PIPE,
                                env=child_env())
        async def readline():
            with trio.fail_after(10):
                return await to_thread_abandonable(proc.stdout.readline)

        try:
            first = (await readline()).split()
            assert first[0] == b"held", first
            token, node = int(first[1]), first[2].decode()
            assert (await readline()).startswith(b"write-ok")
            proc.send_signal(signal.SIGSTOP)
            stopped = trio.current_time()
            contender = Lock(c, "/stop/lock")
            assert await contender.acquire(timeout=15)  # once the holder's session expired
            waited = trio.current_time() - stopped
            assert contender.fencing_token > token
            await contender.fenced([ops.set("/stop/data", b"contender")])
            # the holder's write, as coord would see it arriving late from anywhere
            with pytest.raises(MultiError) as stale:
                await c.multi([ops.check(node, -1), ops.set("/stop/data", b"stale")])
            assert stale.value.index == 0 and isinstance(stale.value.cause, NoNodeError)
            proc.send_signal(signal.SIGCONT)
            out, _ = await trio.to_thread.run_sync(proc.communicate, None, 15)
            lines = out.decode().splitlines()
            assert lines[-1].startswith("lost"), lines
            assert (await c.get("/stop/data"))[0] == b"contender"  # no holder write landed after ours
            await contender.release()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    assert 1.0 <= waited <= 10


class Net:
    """A client's network that can be cut: while cut, nothing gets through
    in either direction and connecting fails (a partition around one client)."""

    def __init__(self):
        self.cut = False

    async def connect(self, host, port):
        if self.cut:
            raise OSError("partitioned")
        return _Cuttable(self, await trio.open_tcp_stream(host, port))


class _Cuttable(trio.abc.Stream):
    def __init__(self, net, inner):
        self.net, self.inner = net, inner

    async def send_all(self, data):
        if not self.net.cut:
            await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        while True:
            data = await self.inner.receive_some(max_bytes)
            if not data or not self.net.cut:
                return data

    async def aclose(self):
        await self.inner.aclose()


async def test_election_one_leader_across_server_kill_and_session_expiry(ensemble):
    seconds = 13
    terms, observed, lost = [], [], collections.Counter()
    nets = {f"p{k}": Net() for k in range(3)}
    current = {}

    deadline = trio.current_time() + seconds

    async def participate(identity):
        rng = random.Random(identity)
        while trio.current_time() < deadline:
            try:
                async with Client(ensemble.endpoints, session_timeout=2, connect_stream=nets[identity].connect) as c:
                    e = Election(c, "/elect", identity)
                    with trio.move_on_at(deadline):
                        await campaign(c, e, identity, rng)
            except CoordError:
                await trio.sleep(0.1)

    async def campaign(c, e, identity, rng):
        while c.state not in (ConnState.EXPIRED, ConnState.CLOSED):
            try:
                async with e.campaign() as term:
                    start = trio.current_time()
                    current["leader"] = identity
                    try:
                        # a term's work; a leader that is cut off does not know it and keeps going
                        until = start + rng.uniform(0.3, 0.8)
                        while trio.current_time() < until or nets[identity].cut:
                            await trio.sleep(0.05)
                    finally:
                        current["leader"] = None
                        terms.append((term.fencing_token, start, trio.current_time(), identity))
            except LeadershipLostError:
                lost[identity] += 1
            except CoordError:
                pass

    async def observe():
        async with Client(ensemble.endpoints, session_timeout=5) as c:
            async for leader in Election(c, "/elect", "observer").observe():
                observed.append(leader)

    async def chaos():
        await trio.sleep(2)
        leader = await ensemble.wait_leader()
        ensemble.kill(leader)
        await trio.sleep(2)
        ensemble.start_server(leader)
        await trio.sleep(2)
        with trio.fail_after(5):
            while current.get("leader") is None:
                await trio.sleep(0.01)
        victim = current["leader"]  # cut the election's leader off: its session will expire
        nets[victim].cut = True
        await trio.sleep(3)
        nets[victim].cut = False
        return victim

    async with trio.open_nursery() as nursery:
        nursery.start_soon(observe)
        async with trio.open_nursery() as participants:
            for identity in nets:
                participants.start_soon(participate, identity)
            victim = await chaos()
        await trio.sleep(1)  # the observer sees the last resignation
        nursery.cancel_scope.cancel()
    print(f"{len(terms)} terms, {len(observed)} changes observed, lost {dict(lost)}, victim {victim}")
    assert_exclusive([(tok, start, end) for tok, start, end, _ in terms])
    assert lost[victim] >= 1  # its body was cancelled: it learnt that it lost leadership
    tokens = [leader.token for leader in observed if leader is not None]
    assert tokens == sorted(set(tokens))  # every change once, in order
    seen = {leader.token: leader.identity for leader in observed if leader is not None}
    assert all(seen.get(tok) == who for tok, _, _, who in terms)  # every term served was observed
    assert len(terms) >= 6 and len({who for *_, who in terms}) == 3


if __name__ == "__main__":
    endpoints, seed, until = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    trio.run(lambda: contend(endpoints, seed, until - time.monotonic(),
                             on_session=lambda sid: print(f"{sid:x}", flush=True)))
    os._exit(0)
