"""coordctl: a command-line client for coord.

::

    coordctl --endpoints h1:2181,h2:2181 get /config
    COORD_ENDPOINTS=h1:2181 coordctl -o json ls -l /

Exit status: 0 on success, 1 when the operation failed (the error is one
line on stderr, e.g. "coordctl: NoNode: /a"), 2 for usage errors, 3 when no
server could be reached or the operation timed out.

With ``-o json`` every result is one JSON object on its own line; node data
is under "data" when it is valid UTF-8, else base64 under "data_b64".
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from typing import Any, Awaitable, Callable

import click
import trio

from coordclient.client import Client
from coordclient.endpoints import parse_endpoints
from coordclient.types import Stat, WatchEvent
from coordclient.errors import ConnectionLossError, CoordError, OperationTimeoutError, SessionExpiredError

__all__ = ["main", "cli"]

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class _Ctx:
    def __init__(self, endpoints: list[tuple[str, int]], output: str, timeout: float):
        self.endpoints = endpoints
        self.output = output
        self.timeout = timeout

    def emit(self, text: str | bytes | None, obj: dict) -> None:
        if self.output == "json":
            click.echo(json.dumps(obj, sort_keys=True))
        elif text is not None:
            click.echo(text)

    def run(self, action: Callable[[Client], Awaitable[None]]) -> None:
        """Open a session, run ``action``, map errors to one line and an exit code."""

        async def session() -> None:
            async with Client(self.endpoints, session_timeout=self.timeout) as client:
                await action(client)

        try:
            trio.run(session)
        except (ConnectionLossError, OperationTimeoutError, SessionExpiredError) as exc:
            _fail(exc, EXIT_UNREACHABLE)
        except CoordError as exc:
            _fail(exc, EXIT_FAILED)


def _fail(exc: CoordError, code: int) -> None:
    """One line on stderr and exit: "coordctl: NoNode: /a" for a failed
    operation on a path, "coordctl: <code>: <message>" otherwise."""
    detail = exc.path if exc.path and code == EXIT_FAILED else exc.message
    click.echo(f"coordctl: {exc.code.value}: {detail}", err=True)
    sys.exit(code)


def _stat(stat: Stat) -> dict:
    return dataclasses.asdict(stat)


def _data(data: bytes) -> dict:
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_b64": base64.b64encode(data).decode("ascii")}


def _stat_text(stat: Stat) -> str:
    return "\n".join(f"{name} = {value}" for name, value in dataclasses.asdict(stat).items())


def _event(ev: WatchEvent) -> dict:
    return {"type": ev.type, "path": ev.path, "zxid": ev.zxid}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoints", envvar="COORD_ENDPOINTS", metavar="H:P[,H:P...]",
              help="Servers to connect to (default: $COORD_ENDPOINTS).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Session timeout in seconds; calls give up after twice this.")
@click.pass_context
def cli(ctx: click.Context, endpoints: str | None, output: str, timeout: float) -> None:
    """Inspect and change a coord ensemble."""
    if ctx.resilient_parsing:
        return
    if not endpoints:
        raise click.UsageError("no servers given: pass --endpoints H:P[,H:P...] or set COORD_ENDPOINTS")
    try:
        parsed = parse_endpoints(endpoints)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoints") from None
    ctx.obj = _Ctx(parsed, output, timeout)


pass_ctx = click.make_pass_decorator(_Ctx)


@cli.command()
@click.argument("path")
@pass_ctx
def get(c: _Ctx, path: str) -> None:
    """Print a node's data."""

    async def action(client: Client) -> None:
        data, stat = await client.get(path)
        c.emit(data, {"path": path, **_data(data), "stat": _stat(stat)})

    c.run(action)


@cli.command(name="set")
@click.argument("path")
@click.argument("data")
@click.option("--version", type=int, default=-1, help="Expected version (-1: any).")
@pass_ctx
def set_(c: _Ctx, path: str, data: str, version: int) -> None:
    """Replace a node's data (DATA is UTF-8 text)."""

    async def action(client: Client) -> None:
        stat = await client.set(path, data.encode(), version=version)
        c.emit(None, {"path": path, "stat": _stat(stat)})

    c.run(action)


@cli.command()
@click.argument("path")
@click.argument("data", default="")
@click.option("-e", "--ephemeral", is_flag=True, help="Delete the node when this session ends (i.e. at once).")
@click.option("-s", "--sequential", is_flag=True, help="Append a unique increasing counter to the name.")
@click.option("-p", "--parents", is_flag=True, help="Create missing parent nodes.")
@pass_ctx
def create(c: _Ctx, path: str, data: str, ephemeral: bool, sequential: bool, parents: bool) -> None:
    """Create a node and print its path."""

    async def action(client: Client) -> None:
        created = await client.create(path, data.encode(), ephemeral=ephemeral, sequential=sequential,
                                      make_parents=parents)
        c.emit(created, {"path": created})

    c.run(action)


@cli.command()
@click.argument("path")
@click.option("-l", "long_", is_flag=True, help="Show version, data length and child count.")
@pass_ctx
def ls(c: _Ctx, path: str, long_: bool) -> None:
    """List a node's children."""

    async def action(client: Client) -> None:
        if long_:
            entries = await client.children(path, stats=True)
            lines = [f"{s.version:>6} {s.data_length:>9} {s.num_children:>6} {'e' if s.ephemeral_owner else '-'} {name}"
                     for name, s in entries]
            c.emit("\n".join(lines) if lines else None,
                   {"path": path, "children": [{"name": n, "stat": _stat(s)} for n, s in entries]})
        else:
            names = await client.children(path)
            c.emit("\n".join(names) if names else None, {"path": path, "children": names})

    c.run(action)


@cli.command()
@click.argument("path")
@pass_ctx
def stat(c: _Ctx, path: str) -> None:
    """Print a node's metadata."""

    async def action(client: Client) -> None:
        st = await client.exists(path)
        if st is None:
            raise CoordError.from_code("NoNode", path=path)
        c.emit(_stat_text(st), {"path": path, "stat": _stat(st)})

    c.run(action)


@cli.command()
@click.argument("path")
@click.option("-r", "--recursive", is_flag=True, help="Delete the whole subtree.")
@click.option("--version", type=int, default=-1, help="Expected version (-1: any).")
@pass_ctx
def rm(c: _Ctx, path: str, recursive: bool, version: int) -> None:
    """Delete a node."""

    async def action(client: Client) -> None:
        await client.delete(path, version=version, recursive=recursive)
        c.emit(None, {"path": path, "deleted": True})

    c.run(action)


@cli.command()
@click.argument("path")
@click.option("-r", "--recursive", is_flag=True, help="Watch the whole subtree.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Exit after N events.")
@pass_ctx
def watch(c: _Ctx, path: str, recursive: bool, count: int | None) -> None:
    """Print events on a node (or subtree) as they happen."""

    async def action(client: Client) -> None:
        seen = 0
        async with client.watch(path, recursive=recursive) as events:
            async for ev in events:
                obj = _event(ev)
                c.emit(f"{obj['type']} {ev.path} {ev.zxid}", obj)
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return

    c.run(action)


from coordclient import cli_admin  # noqa: E402  (commands that register on the group above)

cli_admin.register(cli, pass_ctx)

from coordclient.cli_recipes import register as _register_recipes  # noqa: E402

_register_recipes(cli)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point (``coordctl = "coordclient.cli:main"``)."""
    return cli.main(args=argv, prog_name="coordctl")


if __name__ == "__main__":
    main()
