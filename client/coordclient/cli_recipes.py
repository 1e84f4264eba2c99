"""coordctl lock / elect: run a command while holding a lock or leading.

::

    coordctl lock /locks/backup -- pg_dump -f /backups/db.sql
    coordctl elect /election/cron "$(hostname)" -- run-cron-jobs
    coordctl elect /election/cron --observe

The command gets the fencing token in ``COORD_FENCING_TOKEN`` and the node
that proves the hold in ``COORD_LOCK_NODE`` (for a fenced write of its own:
a multi that checks that node).  If the hold is lost, the command gets
SIGTERM, then SIGKILL after ``--grace`` seconds.  coordctl exits with the
command's status (128+N if a signal N ended it).  SIGTERM and SIGHUP sent
to coordctl are passed on to the command; SIGINT is not, because a
terminal's Ctrl-C already reaches the command directly.

``register(cli)`` adds these commands to the coordctl group.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Sequence

import click
import trio

from coordclient.client import Client
from coordclient.errors import OperationTimeoutError
from coordclient.recipes import Election, Leader, Lock, LockLostError
from coordclient.recipes._core import Participant

__all__ = ["register", "elect", "lock"]

EXIT_CANNOT_RUN = 127  # the shell's status for a command that could not be started
FORWARDED = (signal.SIGTERM, signal.SIGHUP)


def register(group: click.Group) -> None:
    """Add ``lock`` and ``elect`` to the coordctl group (idempotent)."""
    group.add_command(lock)
    group.add_command(elect)


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _stop(proc: trio.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``grace`` seconds."""
    if proc.returncode is None:
        proc.terminate()
        with trio.move_on_after(grace):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def _forward_signals(proc: trio.Process) -> None:
    with trio.open_signal_receiver(*FORWARDED) as signals:
        async for signum in signals:
            if proc.returncode is None:
                proc.send_signal(signum)


async def run_holding(hold: Participant, command: Sequence[str], grace: float, env: dict[str, str]) -> int:
    """Run ``command`` under ``hold.guard()``; its exit status.  A lost hold
    cancels the guard's body, whose cleanup stops the command."""
    proc: trio.Process | None = None
    try:
        async with hold.guard():
            try:
                proc = await trio.lowlevel.open_process(list(command), env={**os.environ, **env})
            except OSError as exc:
                click.echo(f"coordctl: cannot run {command[0]}: {exc.strerror or exc}", err=True)
                return EXIT_CANNOT_RUN
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_forward_signals, proc)
                    await proc.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(proc, grace)
    except LockLostError as exc:
        click.echo(f"coordctl: {exc.message}; the command was stopped", err=True)
    assert proc is not None and proc.returncode is not None
    return _status(proc.returncode)


def _hold_env(hold: Participant) -> dict[str, str]:
    return {"COORD_FENCING_TOKEN": str(hold.fencing_token), "COORD_LOCK_NODE": str(hold.node)}


_command_arg = click.argument("command", nargs=-1, type=click.UNPROCESSED)
_grace_opt = click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
                          help="Seconds between SIGTERM and SIGKILL when the hold is lost.")


@click.command()
@click.argument("path")
@_command_arg
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=None,
              help="Give up (exit 3) if the lock is not acquired within SECONDS (default: wait forever).")
@_grace_opt
@click.pass_obj
def lock(obj: Any, path: str, command: tuple[str, ...], wait: float | None, grace: float) -> None:
    """Run COMMAND while holding the lock PATH:  lock PATH -- COMMAND [ARGS]..."""
    if not command:
        raise click.UsageError("no command given: coordctl lock PATH -- COMMAND [ARGS]...")
    status: list[int] = []

    async def action(client: Client) -> None:
        held = Lock(client, path)
        if not await held.acquire(timeout=wait):
            raise OperationTimeoutError(f"lock {path} not acquired within {wait}s", path=path)
        status.append(await run_holding(held, command, grace, _hold_env(held)))

    obj.run(action)
    sys.exit(status[0])


@click.command()
@click.argument("path")
@click.argument("identity", required=False)
@_command_arg
@click.option("--observe", is_flag=True, help="Print the leader, then every change, instead of campaigning.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="With --observe: exit after N lines.")
@_grace_opt
@click.pass_obj
def elect(obj: Any, path: str, identity: str | None, command: tuple[str, ...], observe: bool, count: int | None,
          grace: float) -> None:
    """Run COMMAND while leading the election PATH as IDENTITY, or --observe it.

    \b
    elect PATH IDENTITY -- COMMAND [ARGS]...
    elect PATH --observe [--count N]
    """
    if observe:
        if identity is not None or command:
            raise click.UsageError("--observe takes no IDENTITY or COMMAND")
        obj.run(lambda client: _observe(obj, client, path, count))
        return
    if identity is None or not command:
        raise click.UsageError("usage: coordctl elect PATH IDENTITY -- COMMAND [ARGS]...")
    status: list[int] = []

    async def action(client: Client) -> None:
        term = Election(client, path, identity).campaign()
        await term.acquire()
        env = {**_hold_env(term), "COORD_LEADER_IDENTITY": identity}
        status.append(await run_holding(term, command, grace, env))

    obj.run(action)
    sys.exit(status[0])


async def _observe(obj: Any, client: Client, path: str, count: int | None) -> None:
    seen = 0
    async with Election(client, path, "").observe() as changes:
        async for leader in changes:
            obj.emit(_leader_text(leader), _leader_json(path, leader))
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                return


def _leader_text(leader: Leader | None) -> str:
    return "(no leader)" if leader is None else f"{leader.identity} {leader.token}"


def _leader_json(path: str, leader: Leader | None) -> dict:
    if leader is None:
        return {"path": path, "leader": None, "token": None, "node": None}
    return {"path": path, "leader": leader.identity, "token": leader.token, "node": leader.node}
