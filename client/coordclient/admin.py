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
"""

from __future__ import annotations

import itertools
import ssl
import zlib
from typing import Any, Callable, Iterable

import trio

from coordclient import messages
from coordclient.endpoints import parse_endpoints
from coordclient.errors import CoordError, NotLeaderError, OperationTimeoutError
from coordclient.wire import FramedStream

Endpoint = tuple[str, int]


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
        with trio.fail_after(timeout or self.timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(*addr)
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_hostname=addr[0])
            async with stream:
                fs = FramedStream(stream)
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
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.EndOfChannel) as e:
                last = e  # (a TLS failure is a BrokenResourceError too)
        raise CoordError.from_code("ConnectionLoss", f"no server answered: {last}")

    async def _on_leader(self, msg: dict, timeout: float | None = None) -> dict:
        """Send to the leader, following NotLeader redirects and waiting out elections."""
        deadline = trio.current_time() + (timeout or self.timeout)
        targets = list(self.endpoints)
        while True:
            for addr in targets:
                try:
                    resp = await self._request(addr, msg, timeout=max(0.5, deadline - trio.current_time()))
                except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.EndOfChannel):
                    continue
                if resp.get("ok") or resp.get("err") != "NotLeader":
                    return _result(resp)
                hint = resp.get("leader_client")
                if hint:
                    host, _, port = hint.rpartition(":")
                    targets = [(host.strip("[]"), int(port))] + [a for a in self.endpoints]
                    break
            else:
                targets = list(self.endpoints)
            if trio.current_time() >= deadline:
                raise NotLeaderError("no leader could be reached")
            await trio.sleep(0.1)

    # -- status -----------------------------------------------------------------
    async def status(self, server: Endpoint | None = None) -> dict:
        """One server's status (the first that answers, or ``server``)."""
        resp = await (self._request(server, {"op": "status"}) if server else self._any({"op": "status"}))
        return _result(resp)

    async def all_statuses(self) -> dict[Endpoint, dict | None]:
        out: dict[Endpoint, dict | None] = {}

        async def one(addr: Endpoint) -> None:
            try:
                out[addr] = _result(await self._request(addr, {"op": "status"}, timeout=2))
            except (OSError, CoordError, trio.TooSlowError, trio.BrokenResourceError, trio.EndOfChannel):
                out[addr] = None

        async with trio.open_nursery() as n:
            for a in self.endpoints:
                n.start_soon(one, a)
        return out

    async def leader_status(self) -> dict:
        """The leader's status (it alone knows every member's progress)."""
        st = await self.status()
        if st["role"] == "leader":
            return st
        client = st["members"].get(st["leader"], {}).get("client") if st["leader"] else None
        if client:
            host, _, port = client.rpartition(":")
            st2 = await self.status((host.strip("[]"), int(port)))
            if st2["role"] == "leader":
                return st2
        for addr, st3 in (await self.all_statuses()).items():
            if st3 and st3["role"] == "leader":
                return st3
        raise NotLeaderError("no leader right now")

    # -- membership ---------------------------------------------------------------
    async def change(self, *, add_voters: Iterable[dict] = (), add_learners: Iterable[dict] = (),
                     remove: Iterable[int] = (), promote: Iterable[int] = (), version: int | None = None,
                     wait: bool = True, timeout: float = 120.0) -> dict:
        """One membership change; voter changes are one joint-consensus step.
        ``version`` is the configuration version the change was computed from
        (``status()["config_version"]``); None skips that check."""
        msg = {"op": "member_change", "add_voters": list(add_voters), "add_learners": list(add_learners),
               "remove": list(remove), "promote": list(promote), "version": version, "wait": wait}
        st = await self._on_leader(msg, timeout=timeout)
        if wait and st.get("outgoing"):
            # The server that took the change lost leadership before C_new
            # committed; its successor finishes the change: wait for that.
            with trio.fail_after(timeout):
                while st.get("outgoing"):
                    await trio.sleep(0.1)
                    try:
                        st = await self.leader_status()
                    except CoordError:
                        continue
        return st

    async def add_learner(self, sid: int, *, peer: str, client: str | None = None, version: int | None = None) -> dict:
        return await self.change(add_learners=[{"id": sid, "peer": peer, "client": client}], version=version)

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
        with trio.fail_after(timeout):
            while True:
                st = await self.leader_status()
                prog = st.get("progress", {})
                lags = {s: _lag(prog.get(s, prog.get(str(s), {}))) for s in sids}
                if progress is not None:
                    progress(lags)
                ok_rounds = ok_rounds + 1 if all(lag <= max_lag for lag in lags.values()) else 0
                if ok_rounds >= rounds:
                    return
                await trio.sleep(0.2)

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


def _lag(progress: dict) -> int:
    """A server's lag behind the leader; unbounded until it has acknowledged
    anything (match 0: the leader has not heard from it yet, however short the log)."""
    if not progress.get("match"):
        return 1 << 62
    return progress.get("lag", 1 << 62)
