"""``coordctl`` administration commands: status, members, leader, snapshot.

Output fits scripts: ``-o json`` prints one JSON object; exit code 0 on
success, 1 when the ensemble refused (e.g. a change already in flight),
3 when no server (or no leader) could be reached.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Awaitable, Callable, Iterable

import click
import trio

from coordclient.admin import AdminClient, change_in_progress
from coordclient.errors import ConfChangeError, ConnectionLossError, CoordError, NotLeaderError, OperationTimeoutError

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


def _run(ctx_obj: Any, fn: Callable[[AdminClient], Awaitable[Any]]) -> Any:
    eps = [f"{h}:{p}" for h, p in ctx_obj.endpoints]

    async def go() -> Any:
        async with AdminClient(eps, timeout=ctx_obj.timeout, tls=ctx_obj.tls, auth=ctx_obj.auth) as admin:
            return await fn(admin)

    try:
        return trio.run(go)
    except (ConnectionLossError, NotLeaderError, OperationTimeoutError, OSError) as e:  # (TimeoutError is an OSError)
        click.echo(f"coordctl: {getattr(e, 'code', None) and e.code.value or type(e).__name__}: {e}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except CoordError as e:
        click.echo(f"coordctl: {e.code.value}: {e.message}", err=True)
        sys.exit(EXIT_FAILED)


def _emit(ctx_obj: Any, obj: Any, text: str) -> None:
    if ctx_obj.output == "json":
        click.echo(json.dumps(obj, sort_keys=True, default=str))
    else:
        click.echo(text)


def _members_table(st: dict) -> str:
    prog = st.get("progress", {})
    rows = [("ID", "ROLE", "PEER", "CLIENT", "MATCH", "LAG")]
    for sid_s, addrs in sorted(st["members"].items(), key=lambda kv: int(kv[0])):
        sid = int(sid_s)
        role = ("voter" if sid in st["voters"] else "learner" if sid in st["learners"] else "leaving")
        if sid in st["outgoing"] and sid not in st["voters"]:
            role = "leaving"
        if sid == st["leader"]:
            role += " (leader)"
        p = prog.get(sid, prog.get(str(sid), {}))
        rows.append((str(sid), role, addrs.get("peer", "-"), addrs.get("client", "-"),
                     str(p.get("match", "-")), str(p.get("lag", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    where = ""
    if st["outgoing"]:
        where = f"  (change in progress: joint configuration, old voters {st['outgoing']}, new {st['voters']})"
    elif change_in_progress(st):
        where = "  (change in progress: not yet committed)"
    catching_up = [int(k) for k, p in prog.items() if int(k) in st["learners"] and not p.get("match")]
    if catching_up:
        where += f"  (learners {sorted(catching_up)} not heard from yet)"
    return "\n".join(lines) + f"\nconfiguration version {st['config_version']}{where}"


def _server_arg(value: str) -> dict:
    """ID=PEER[,CLIENT[,ZOOKEEPER]] for `members change --add`."""
    try:
        sid, _, rest = value.partition("=")
        peer, _, rest = rest.partition(",")
        client, _, zk = rest.partition(",")
        if not peer or "," in zk:
            raise ValueError
        return {"id": int(sid), "peer": peer, "client": client or None, "zookeeper": zk or None}
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected ID=PEER_HOST:PORT[,CLIENT_HOST:PORT[,ZOOKEEPER_HOST:PORT]]") from None


def register(cli: click.Group, pass_ctx: Callable) -> None:
    @cli.command()
    @pass_ctx
    def status(c: Any) -> None:
        """Every reachable server's role, term, commit and applied index."""
        sts = _run(c, lambda a: a.all_statuses())
        if c.output == "json":
            click.echo(json.dumps({f"{h}:{p}": st for (h, p), st in sts.items()}, sort_keys=True, default=str))
            return
        rows = [("SERVER", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "NODES", "SESSIONS")]
        for (h, p), st in sts.items():
            if st is None:
                rows.append((f"{h}:{p}", "-", "unreachable", "-", "-", "-", "-", "-", "-"))
            else:
                role = st["role"] + (" (recovering)" if st.get("recovering") else "") \
                    + (" (disk_full)" if st.get("disk_full") else "")
                rows.append((f"{h}:{p}", str(st["server_id"]), role, str(st["term"]), str(st["leader"]),
                             str(st["commit"]), str(st["applied"]), str(st["nodes"]), str(st["sessions"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
        if all(st is None for st in sts.values()):
            sys.exit(EXIT_UNREACHABLE)

    @cli.group()
    def members() -> None:
        """List and change the ensemble's members (joint consensus)."""

    @members.command("list")
    @pass_ctx
    def members_list(c: Any) -> None:
        """Members with roles, addresses and (from the leader) replication lag."""
        st = _run(c, lambda a: a.leader_status())
        _emit(c, st, _members_table(st))

    @members.command("add")
    @click.argument("sid", type=click.IntRange(min=1))
    @click.option("--peer", required=True, metavar="HOST:PORT", help="The new server's peer address.")
    @click.option("--client", "client_addr", metavar="HOST:PORT", help="The new server's client address.")
    @click.option("--zookeeper", "zk_addr", metavar="HOST:PORT",
                  help="The new server's ZooKeeper client address (what ZooKeeper clients see in its config).")
    @click.option("--learner", is_flag=True, help="Leave it a learner (non-voting).")
    @click.option("--no-wait", is_flag=True, help="Return once the learner is added.")
    @click.option("--max-lag", default=64, show_default=True, help="Entries behind that count as caught up.")
    @pass_ctx
    def members_add(c: Any, sid: int, peer: str, client_addr: str | None, zk_addr: str | None, learner: bool,
                    no_wait: bool, max_lag: int) -> None:
        """Add server SID: as a learner first, then (once it has caught up) as a voter.

        Safe to run again: an interrupted add (say, the leader failed half-way,
        leaving SID a learner) is finished, and an add already done is no error."""
        add = [{"id": sid, "peer": peer, "client": client_addr, "zookeeper": zk_addr}]
        _note_done(c, add=[sid], voters=not (learner or no_wait))
        st = _run(c, lambda a: a.converge(add=add, voters=not (learner or no_wait), max_lag=max_lag,
                                          progress=_progress_bar(c)))
        _emit(c, st, _members_table(st))

    @members.command("promote")
    @click.argument("sids", type=click.IntRange(min=1), nargs=-1, required=True)
    @pass_ctx
    def members_promote(c: Any, sids: tuple[int, ...]) -> None:
        """Make learners SIDS voters (one joint-consensus step; voters already are no error)."""
        async def go(admin: AdminClient) -> dict:
            st = await admin.leader_status()
            members = {int(k): v for k, v in st["members"].items()}
            missing = [s for s in sids if s not in members]
            if missing:
                raise ConfChangeError(f"servers {missing} are not members: add them with `members add`")
            add = [{"id": s, "peer": members[s].get("peer"), "client": members[s].get("client"),
                    "zookeeper": members[s].get("zookeeper")} for s in sids]
            return await admin.converge(add=add)

        st = _run(c, go)
        _emit(c, st, _members_table(st))

    @members.command("remove")
    @click.argument("sids", type=click.IntRange(min=1), nargs=-1, required=True)
    @pass_ctx
    def members_remove(c: Any, sids: tuple[int, ...]) -> None:
        """Remove servers SIDS (the leader too: it steps down once C_new commits).
        Servers already gone are no error."""
        _note_done(c, remove=sids)
        st = _run(c, lambda a: a.converge(remove=sids))
        _emit(c, st, _members_table(st))

    @members.command("change")
    @click.option("--add", "adds", multiple=True, type=_server_arg, metavar="ID=PEER[,CLIENT[,ZOOKEEPER]]",
                  help="A server to add as a voter (repeatable).")
    @click.option("--remove", "removes", multiple=True, type=click.IntRange(min=1), help="A server to remove.")
    @click.option("--max-lag", default=64, show_default=True)
    @pass_ctx
    def members_change(c: Any, adds: tuple[dict, ...], removes: tuple[int, ...], max_lag: int) -> None:
        """Several additions and removals in ONE joint-consensus step: new servers
        join as learners, catch up, then C_old,new and C_new are committed.
        Safe to run again: it finishes whatever an interrupted run left."""
        if not adds and not removes:
            raise click.UsageError("nothing to change: give --add and/or --remove")
        st = _run(c, lambda a: a.converge(add=adds, remove=removes, max_lag=max_lag, progress=_progress_bar(c)))
        _emit(c, st, _members_table(st))

    @cli.group()
    def leader() -> None:
        """Leadership."""

    @leader.command("transfer")
    @click.argument("sid", type=click.IntRange(min=0), default=0)
    @pass_ctx
    def leader_transfer(c: Any, sid: int) -> None:
        """Move leadership to server SID (default: the most up-to-date other voter)."""
        r = _run(c, lambda a: a.transfer_leadership(sid))
        _emit(c, r, f"leader is now server {r['leader']}")

    @cli.group()
    def snapshot() -> None:
        """Snapshots of the state machine."""

    @snapshot.command("save")
    @click.argument("file", type=click.Path(dir_okay=False, writable=True))
    @pass_ctx
    def snapshot_save(c: Any, file: str) -> None:
        """Stream a consistent snapshot from a server into FILE."""
        with open(file, "wb") as f:
            meta = _run(c, lambda a: a.snapshot(f.write))
        _emit(c, meta, f"saved {meta['size']} bytes at zxid {meta['zxid']} to {file}")


def _note_done(c: Any, add: Iterable[int] = (), remove: Iterable[int] = (), voters: bool = True) -> None:
    """Say on stderr which parts of a change are already in place (so a
    mistyped id is visible even though re-running a change is no error)."""
    st = _run(c, lambda a: a.leader_status())
    members = {int(k) for k in st["members"]}
    for sid in add:
        if sid in st["voters"] or (not voters and sid in st["learners"]):
            click.echo(f"coordctl: server {sid} is already a {'voter' if sid in st['voters'] else 'learner'}"
                       " (nothing to do for it)", err=True)
    for sid in remove:
        if sid not in members:
            click.echo(f"coordctl: server {sid} is not a member (nothing to do for it)", err=True)


def _progress_bar(c: Any) -> Callable[[dict[int, int]], None]:
    """Catch-up progress on stderr (entries behind the leader), one line redrawn."""
    state = {"first": None}

    def show(lags: dict[int, int]) -> None:
        if c.output == "json" or not sys.stderr.isatty():
            return
        total = max(lags.values()) if lags else 0
        if state["first"] is None or total > state["first"]:
            state["first"] = max(total, 1)
        done = 1 - total / state["first"]
        bar = "#" * int(30 * done)
        detail = ", ".join(f"{s}: {lag if lag < 1 << 60 else '?'} behind" for s, lag in sorted(lags.items()))
        sys.stderr.write(f"\rcatching up [{bar:<30}] {detail}   ")
        sys.stderr.flush()
        if total <= 0:
            sys.stderr.write("\n")

    return show
