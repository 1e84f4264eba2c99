"""Administration of an ensemble: status, membership changes, leadership
transfer, snapshots.  The same calls ``coordctl`` makes.

Admin operations need no session.  Changes must run on the leader: an
``AdminClient`` asks any server, and follows the ``NotLeader`` answer (which
names the leader's client address) to the leader.

    async with AdminClient("127.0.0.1:2181,127.0.0.1:2182") as admin:
        st = await admin.status()
        await admin.add_learner(4, peer="10.0.0.4:2888", client="10.0.0.4:2181")
        await admin.wait_caught_up(4)
        await admin.promote(4)

It runs on asyncio and on Trio (AnyIO), as ``Client`` does; a call that runs
out of time raises ``TimeoutError`` (or the ``NotLeaderError`` of a leader
that could not be found).
"""

from __future__ import annotations

import itertools
import ssl
import zlib
from typing import Any, Callable, Iterable

import anyio

from coordclient import messages
from coordclient.endpoints import parse_endpoints
from coordclient.errors import ConfChangeError, ConnectionLossError, CoordError, NotLeaderError, OperationTimeoutError
from coordclient.streams import connect_tcp, tls_connector
from coordclient.wire import FrameDecoder, FrameError, MalformedFrame, encode_frame

Endpoint = tuple[str, int]

PROBE_TIMEOUT = 1.0  # one status probe; a server slower than this counts as unreachable for that round

# A server that could not be reached or answered nothing usable (a TLS
# failure is an ssl.SSLError, an OSError; a timeout is a TimeoutError, one too).
_UNREACHABLE = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, FrameError)


class _Frames:
    """Whole frames over an AnyIO byte stream, one request at a time."""

    def __init__(self, stream: anyio.abc.ByteStream):
        self.stream = stream
        self._decoder = FrameDecoder()
        self._pending: list[Any] = []

    async def send(self, obj: Any) -> None:
        await self.stream.send(encode_frame(obj))

    async def receive(self) -> Any:
        while not self._pending:
            try:
                data = await self.stream.receive()
            except anyio.EndOfStream:
                if self._decoder.buffered:
                    raise MalformedFrame("the server closed the connection inside a frame") from None
                raise
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)


class AdminClient:
    """``tls``: a client ``ssl.SSLContext`` (see ``coordclient.streams.tls_context``);
    ``auth``: credentials such as ``[("digest", "ops:password")]``, presented
    on every connection (administration needs an admin or superuser identity
    once the servers' ``[auth]`` names any)."""

    def __init__(self, endpoints: str | Iterable[str], *, timeout: float = 10.0, tls: ssl.SSLContext | None = None,
                 auth: Iterable[tuple[str, str | None]] = ()):
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.tls = tls
        self.auth = list(auth)
        self._ids = itertools.count(1)

    async def __aenter__(self) -> "AdminClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    # -- plumbing -------------------------------------------------------------
    async def _request(self, addr: Endpoint, msg: dict, on_chunk: Callable[[bytes], None] | None = None,
                       timeout: float | None = None) -> dict:
        with anyio.fail_after(timeout or self.timeout):
            connect = connect_tcp if self.tls is None else tls_connector(self.tls, handshake_timeout=None)
            stream = await connect(*addr)
            async with stream:
                fs = _Frames(stream)
                for scheme, cred in self.auth:
                    rid = next(self._ids)
                    await fs.send({**messages.add_auth(scheme, cred), "id": rid})
                    resp = await fs.receive()
                    if not resp.get("ok"):
                        raise CoordError.from_code(resp.get("err", "AuthFailed"), resp.get("msg", ""))
                rid = next(self._ids)
                await fs.send({**msg, "id": rid})
                while True:
                    frame = await fs.receive()
                    if frame.get("ev") == "chunk" and frame.get("id") == rid and on_chunk is not None:
                        on_chunk(frame["data"])
                        continue
                    if frame.get("id") == rid:
                        return frame

    async def _any(self, msg: dict, **kw: Any) -> dict:
        """Send to the first server that answers."""
        last: Exception | None = None
        for addr in self.endpoints:
            try:
                return await self._request(addr, msg, **kw)
            except _UNREACHABLE as e:
                last = e
        raise CoordError.from_code("ConnectionLoss", f"no server answered: {last}")

    async def _on_leader(self, msg: dict, timeout: float | None = None) -> dict:
        """Send to the leader, finding it across all servers and waiting out
        elections (a paused or dead server costs one short probe, not the
        whole timeout)."""
        deadline = anyio.current_time() + (timeout or self.timeout)
        while True:
            addr, _ = await self.find_leader(timeout=max(0.1, deadline - anyio.current_time()))
            try:
                resp = await self._request(addr, msg, timeout=max(0.5, deadline - anyio.current_time()))
            except _UNREACHABLE:
                resp = None
            if resp is not None and (resp.get("ok") or resp.get("err") != "NotLeader"):
                return _result(resp)
            if anyio.current_time() >= deadline:
                raise NotLeaderError("no leader could be reached")
            await anyio.sleep(0.1)

    # -- status -----------------------------------------------------------------
    async def status(self, server: Endpoint | None = None) -> dict:
        """One server's status (the first that answers, or ``server``)."""
        resp = await (self._request(server, {"op": "status"}) if server else self._any({"op": "status"}))
        return _result(resp)

    async def _probe(self, addrs: Iterable[Endpoint], timeout: float) -> dict[Endpoint, dict | CoordError | None]:
        """Every server's status at once: a dict, the error it answered, or
        None (unreachable or too slow within ``timeout``)."""
        out: dict[Endpoint, dict | CoordError | None] = {}

        async def one(addr: Endpoint) -> None:
            try:
                out[addr] = _result(await self._request(addr, {"op": "status"}, timeout=timeout))
            except CoordError as e:
                out[addr] = e
            except _UNREACHABLE:
                out[addr] = None

        async with anyio.create_task_group() as tg:
            for a in dict.fromkeys(addrs):
                tg.start_soon(one, a)
        return out

    async def all_statuses(self) -> dict[Endpoint, dict | None]:
        return {a: (st if isinstance(st, dict) else None)
                for a, st in (await self._probe(self.endpoints, PROBE_TIMEOUT * 2)).items()}

    async def find_leader(self, timeout: float | None = None) -> tuple[Endpoint, dict]:
        """The leader's client address and status.  Every server is asked at
        once (and any leader they name), round after round, until one says it
        leads or ``timeout`` passes: an election in progress is waited out, and
        one hung server does not hold up the answer."""
        deadline = anyio.current_time() + (timeout or self.timeout)
        hinted: list[Endpoint] = []
        while True:
            remaining = deadline - anyio.current_time()
            sts = await self._probe([*self.endpoints, *hinted], min(PROBE_TIMEOUT, max(0.1, remaining)))
            leaders = [(a, st) for a, st in sts.items() if isinstance(st, dict) and st.get("role") == "leader"]
            if leaders:
                # two leaders only briefly, in different terms: the newer one leads
                return max(leaders, key=lambda pair: pair[1].get("term", 0))
            errors = [st for st in sts.values() if isinstance(st, CoordError)]
            if errors and len(errors) == sum(st is not None for st in sts.values()):
                raise errors[0]  # every server that answered refused (NoAuth, say): waiting will not help
            hinted = [h for st in sts.values() if isinstance(st, dict) for h in [_leader_hint(st)] if h]
            if anyio.current_time() >= deadline:
                seen = sum(isinstance(st, dict) for st in sts.values())
                raise NotLeaderError(f"no leader within {timeout or self.timeout:g}s "
                                     f"({seen} of {len(sts)} servers answered; an election may be under way)")
            await anyio.sleep(0.1)

    async def leader_status(self, timeout: float | None = None) -> dict:
        """The leader's status (it alone knows every member's progress)."""
        return (await self.find_leader(timeout))[1]

    # -- membership ---------------------------------------------------------------
    async def change(self, *, add_voters: Iterable[dict] = (), add_learners: Iterable[dict] = (),
                     remove: Iterable[int] = (), promote: Iterable[int] = (), version: int | None = None,
                     wait: bool = True, timeout: float = 120.0) -> dict:
        """One membership change; voter changes are one joint-consensus step.
        ``version`` is the configuration version the change was computed from
        (``status()["config_version"]``); None skips that check.  With
        ``wait`` it returns once the change (C_new, for a voter change) is
        committed, whichever leader finishes it; the leader's status."""
        msg = {"op": "member_change", "add_voters": list(add_voters), "add_learners": list(add_learners),
               "remove": list(remove), "promote": list(promote), "version": version, "wait": False}
        with anyio.fail_after(timeout):
            await self._on_leader(msg, timeout=timeout)
            st = await self.leader_status(timeout=timeout)
            while wait and change_in_progress(st):
                await anyio.sleep(0.1)
                st = await self.leader_status(timeout=timeout)
        return st

    async def converge(self, *, add: Iterable[dict] = (), remove: Iterable[int] = (), voters: bool = True,
                       max_lag: int = 64, timeout: float = 600.0,
                       progress: Callable[[dict[int, int]], None] | None = None) -> dict:
        """Make the membership include every server in ``add`` (``{id, peer,
        client}``; as voters, or learners if not ``voters``) and none in
        ``remove``, in as few steps as it takes: new servers join as learners,
        catch up, then promotions and removals are one joint-consensus step.

        Each step is computed from the leader's configuration at that moment,
        so the call is idempotent and resumable: run it again after it was
        interrupted (or a leader changed half-way) and it finishes what is
        left; a server already where it should be is no error.  A change in
        progress (a joint configuration) is waited for first.  Returns the
        leader's status once nothing is left to do."""
        add = list(add)
        remove = list(remove)
        if {a["id"] for a in add} & set(remove):
            raise ConfChangeError("a server cannot be both added and removed")
        with anyio.fail_after(timeout):
            while True:
                st = await self.leader_status()
                if change_in_progress(st):
                    await anyio.sleep(0.1)  # the leader finishes C_new by itself
                    continue
                members = {int(k): v for k, v in st["members"].items()}
                for a in add:
                    have = members.get(a["id"])
                    if have is not None and have.get("peer") != a["peer"]:
                        raise ConfChangeError(f"server {a['id']} is already a member with peer address "
                                              f"{have.get('peer')}, not {a['peer']}: remove it first")
                new = [a for a in add if a["id"] not in members]
                promote = [a["id"] for a in add if voters and a["id"] in st["learners"]]
                gone = [sid for sid in remove if sid in members]
                try:
                    if new:
                        await self._step(add_learners=new, version=st["config_version"])
                    elif promote or gone:
                        if promote:
                            await self.wait_caught_up(promote, max_lag=max_lag, progress=progress)
                        await self._step(promote=promote, remove=gone, version=st["config_version"])
                    else:
                        return st
                except _Retry:
                    await anyio.sleep(0.2)

    async def _step(self, **change: Any) -> None:
        """Propose one change; raise _Retry where computing it again from a
        fresh configuration may succeed (a race, a new leader, a timeout)."""
        try:
            await self._on_leader({"op": "member_change", "add_voters": [], "add_learners": [], "remove": [],
                                   "promote": [], "wait": False, **change}, timeout=self.timeout)
        except (NotLeaderError, OperationTimeoutError, ConnectionLossError):
            raise _Retry() from None
        except ConfChangeError as e:
            if any(m in str(e) for m in _TRANSIENT):
                raise _Retry() from None
            raise

    async def add_learner(self, sid: int, *, peer: str, client: str | None = None, zookeeper: str | None = None,
                          version: int | None = None) -> dict:
        """``zookeeper``: its ZooKeeper client address, if it has one."""
        return await self.change(add_learners=[{"id": sid, "peer": peer, "client": client, "zookeeper": zookeeper}],
                                 version=version)

    async def promote(self, *sids: int, version: int | None = None) -> dict:
        return await self.change(promote=sids, version=version)

    async def remove(self, *sids: int, version: int | None = None) -> dict:
        return await self.change(remove=sids, version=version)

    async def wait_caught_up(self, sids: Iterable[int], *, max_lag: int = 64, rounds: int = 2,
                             timeout: float = 600.0, progress: Callable[[dict[int, int]], None] | None = None) -> None:
        """Until every server in ``sids`` is within ``max_lag`` entries of the
        leader for ``rounds`` consecutive polls.  ``progress`` gets {id: lag}."""
        sids = list(sids)
        ok_rounds = 0
        with anyio.fail_after(timeout):
            while True:
                st = await self.leader_status()
                prog = st.get("progress", {})
                lags = {s: _lag(prog.get(s, prog.get(str(s), {}))) for s in sids}
                if progress is not None:
                    progress(lags)
                ok_rounds = ok_rounds + 1 if all(lag <= max_lag for lag in lags.values()) else 0
                if ok_rounds >= rounds:
                    return
                await anyio.sleep(0.2)

    async def transfer_leadership(self, to: int = 0) -> dict:
        """Move leadership to server ``to`` (0: the most up-to-date other voter)."""
        return await self._on_leader({"op": "leader_transfer", "to": to})

    async def snapshot(self, sink: Callable[[bytes], None], server: Endpoint | None = None) -> dict:
        """Stream a consistent snapshot into ``sink``; returns {zxid, size, crc32}."""
        crc = 0
        size = 0

        def on_chunk(data: bytes) -> None:
            nonlocal crc, size
            crc = zlib.crc32(data, crc)
            size += len(data)
            sink(data)

        msg = {"op": "snapshot"}
        resp = await (self._request(server, msg, on_chunk, timeout=600) if server
                      else self._any(msg, on_chunk=on_chunk, timeout=600))
        meta = _result(resp)
        if meta["size"] != size or meta["crc32"] != crc:
            raise OperationTimeoutError("the snapshot stream was cut short or damaged")
        return meta


def _result(resp: dict) -> Any:
    if resp.get("ok"):
        return resp.get("r")
    err = CoordError.from_code(resp.get("err", "SystemError"), resp.get("msg", ""), path=resp.get("path"))
    raise err


# Refusals that a retry computed from a fresh configuration can get past.
_TRANSIENT = ("configuration changed", "another membership change is in progress",
              "has not committed its first entry", "is already a member", "is not a member", "is not a learner")


class _Retry(Exception):
    pass


def change_in_progress(st: dict) -> bool:
    """A leader's status shows a membership change not finished: a joint
    configuration, or a configuration entry not yet committed."""
    return bool(st.get("outgoing")) or st.get("config_version", 0) > st.get("commit", 0)


def _leader_hint(st: dict) -> Endpoint | None:
    """The client address of the leader a server's status names, if any."""
    client = st.get("members", {}).get(st.get("leader") or 0, {}).get("client") if st.get("leader") else None
    if not client and st.get("leader"):
        client = st.get("members", {}).get(str(st["leader"]), {}).get("client")
    if not client:
        return None
    host, _, port = client.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def _lag(progress: dict) -> int:
    """A server's lag behind the leader; unbounded until it has acknowledged
    anything (match 0: the leader has not heard from it yet, however short the log)."""
    if not progress.get("match"):
        return 1 << 62
    return progress.get("lag", 1 << 62)
