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
import os
import json
import ssl
import sys
from typing import Any, Awaitable, Callable

import click
import trio

from coordclient.acl import ACL
from coordclient.client import Client
from coordclient.endpoints import parse_endpoints
from coordclient.streams import tls_context
from coordclient.types import Stat, WatchEvent
from coordclient.errors import ConnectionLossError, CoordError, OperationTimeoutError, SessionExpiredError

__all__ = ["main", "cli"]

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class _Ctx:
    """What every command needs, checked only when a command needs it (so
    ``coordctl members add --help`` works without any servers configured)."""

    def __init__(self, endpoints: str | None, output: str, timeout: float, cacert: str | None,
                 cert: str | None, key: str | None, user: str | None):
        self._endpoints = endpoints
        self.output = output
        self.timeout = timeout
        self._tls_files = (cacert, cert, key)
        self._user = user

    @property
    def auth(self) -> list[tuple[str, str]]:
        if not self._user:
            return []
        if ":" not in self._user:
            raise click.BadParameter("expected USER:PASSWORD", param_hint="--user / COORD_USER")
        return [("digest", self._user)]

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        if not self._endpoints:
            raise click.UsageError("no servers given: pass --endpoints H:P[,H:P...] or set COORD_ENDPOINTS")
        try:
            return parse_endpoints(self._endpoints)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--endpoints") from None

    @property
    def tls(self) -> ssl.SSLContext | None:
        cacert, cert, key = self._tls_files
        if not (cacert or cert or key):
            return None
        for option, path in (("--cacert", cacert), ("--cert", cert), ("--key", key)):
            if path and not os.path.isfile(path):
                raise click.BadParameter(f"no such file: {path}", param_hint=option)
        try:
            return tls_context(cacert, cert, key)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise click.BadParameter(f"unusable TLS files: {exc}", param_hint="--cacert/--cert/--key") from None

    def emit(self, text: str | bytes | None, obj: dict) -> None:
        if self.output == "json":
            click.echo(json.dumps(obj, sort_keys=True))
        elif text is not None:
            click.echo(text)

    def run(self, action: Callable[[Client], Awaitable[None]]) -> None:
        """Open a session, run ``action``, map errors to one line and an exit code."""
        endpoints, tls, auth = self.endpoints, self.tls, self.auth

        async def session() -> None:
            async with Client(endpoints, session_timeout=self.timeout, tls=tls, auth=auth) as client:
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


class _Coordctl(click.Group):
    """The top-level group: its options may be written after the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))


@click.group(cls=_Coordctl, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoints", envvar="COORD_ENDPOINTS", metavar="H:P[,H:P...]",
              help="Servers to connect to (default: $COORD_ENDPOINTS).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Session timeout in seconds; calls give up after twice this.")
@click.option("--cacert", envvar="COORD_CACERT", type=click.Path(dir_okay=False),
              help="TLS: the CA that signed the servers' certificates ($COORD_CACERT).")
@click.option("--cert", envvar="COORD_CERT", type=click.Path(dir_okay=False),
              help="TLS: this client's certificate, its x509 identity ($COORD_CERT).")
@click.option("--key", envvar="COORD_KEY", type=click.Path(dir_okay=False),
              help="TLS: the key of --cert ($COORD_KEY).")
@click.option("--user", envvar="COORD_USER", metavar="USER:PASSWORD",
              help="A digest identity, added to the session ($COORD_USER).")
@click.pass_context
def cli(ctx: click.Context, endpoints: str | None, output: str, timeout: float, cacert: str | None,
        cert: str | None, key: str | None, user: str | None) -> None:
    """Inspect and change a coord ensemble.

    Options may also follow the command (coordctl status -o json)."""
    ctx.obj = _Ctx(endpoints, output, timeout, cacert, cert, key, user)


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
@click.option("-c", "--container", is_flag=True,
              help="A container: deleted by the ensemble once it has had children and has none left.")
@click.option("-t", "--ttl", type=click.FloatRange(min=0.001), metavar="SECONDS",
              help="A TTL node: deleted once it has no children and has not changed for SECONDS.")
@click.option("--acl", "acl_entries", multiple=True, metavar="SCHEME:ID:PERMS",
              help="An ACL entry (repeat for more), e.g. digest:bob:HASH:cdrwa, world:anyone:r; "
                   "default: the server's default ACL.")
@pass_ctx
def create(c: _Ctx, path: str, data: str, ephemeral: bool, sequential: bool, parents: bool, container: bool,
           ttl: float | None, acl_entries: tuple[str, ...]) -> None:
    """Create a node and print its path."""
    acl = _parse_acl(acl_entries) if acl_entries else None
    if (ephemeral, container, ttl is not None).count(True) > 1:
        raise click.UsageError("a node is at most one of --ephemeral, --container and --ttl")

    async def action(client: Client) -> None:
        created = await client.create(path, data.encode(), ephemeral=ephemeral, sequential=sequential,
                                      make_parents=parents, acl=acl, container=container, ttl=ttl)
        c.emit(created, {"path": created})

    c.run(action)


def _parse_acl(entries: tuple[str, ...]) -> list[ACL]:
    try:
        return [ACL.parse(e) for e in entries]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ACL") from None


@cli.group()
def acl() -> None:
    """Read and change node ACLs (ZooKeeper's text form: scheme:id:perms)."""


@acl.command("get")
@click.argument("path")
@pass_ctx
def acl_get(c: _Ctx, path: str) -> None:
    """Print a node's ACL, one entry per line."""

    async def action(client: Client) -> None:
        entries, stat = await client.get_acl(path)
        c.emit("\n".join(str(e) for e in entries),
               {"path": path, "acl": [str(e) for e in entries], "aversion": stat.aversion})

    c.run(action)


@acl.command("set")
@click.argument("path")
@click.argument("entries", nargs=-1, required=True, metavar="SCHEME:ID:PERMS...")
@click.option("--version", type=int, default=-1, help="Expected ACL version (aversion; -1: any).")
@pass_ctx
def acl_set(c: _Ctx, path: str, entries: tuple[str, ...], version: int) -> None:
    """Replace a node's ACL (needs ADMIN permission on it)."""
    parsed = _parse_acl(entries)

    async def action(client: Client) -> None:
        stat = await client.set_acl(path, parsed, version=version)
        c.emit(f"aversion = {stat.aversion}", {"path": path, "stat": _stat(stat)})

    c.run(action)


@cli.command()
@pass_ctx
def whoami(c: _Ctx) -> None:
    """The identities the server knows this client by."""

    async def action(client: Client) -> None:
        ids = await client.whoami()
        c.emit("\n".join(f"{s}:{i}" for s, i in ids), {"ids": [f"{s}:{i}" for s, i in ids]})

    c.run(action)


_KIND_MARK = {"ephemeral": "e", "container": "c", "ttl": "t", "persistent": "-"}


@cli.command()
@click.argument("path")
@click.option("-l", "long_", is_flag=True, help="Show version, data length, child count and kind (e ephemeral, c container, t TTL).")
@pass_ctx
def ls(c: _Ctx, path: str, long_: bool) -> None:
    """List a node's children."""

    async def action(client: Client) -> None:
        if long_:
            entries = await client.children(path, stats=True)
            lines = [f"{s.version:>6} {s.data_length:>9} {s.num_children:>6} {_KIND_MARK[s.kind]} {name}"
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


_GLOBAL_WITH_VALUE = {"-o", "--output", "--endpoints", "--timeout", "--cacert", "--cert", "--key", "--user"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move the group's options to the front wherever they were written, as
    kubectl and etcdctl users write them (``coordctl status -o json``).
    Anything after ``--`` stays where it is."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        name = a.split("=", 1)[0]
        if name in _GLOBAL_WITH_VALUE:
            if "=" in a or i + 1 >= len(argv):
                front.append(a)
            else:
                front.extend(argv[i:i + 2])
                i += 1
        else:
            rest.append(a)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point (``coordctl = "coordclient.cli:main"``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return cli.main(args=args, prog_name="coordctl")


if __name__ == "__main__":
    main()
