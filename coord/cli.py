"""The ``coord`` command: run a server, or a local development ensemble."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import click

from coord.server.config import ConfigError, load_config


# Exit status of ``coord serve`` when the data directory cannot be trusted
# (sysexits' EX_DATAERR): systemd's unit does not restart on it.
EXIT_DATA_ERROR = 65


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
def main() -> None:
    """coord: a coordination service (locks, leader election, configuration, membership) on Raft."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="TOML configuration file (see conf/).")
@click.option("--log-level", default="info", show_default=True)
@click.option("--recover-lost-log", is_flag=True,
              help="Start even though this server's log lost entries it had written (a cut or deleted WAL "
                   "file): keep what is left and rejoin without voting until the leader has sent the rest. "
                   "Only for a server whose disk was damaged; the ensemble must still have a healthy majority.")
def serve(config_path: str, log_level: str, recover_lost_log: bool) -> None:
    """Run one server of an ensemble."""
    _setup_logging(log_level)
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise click.ClickException(f"bad configuration: {e}") from None
    cfg = dataclasses.replace(cfg, recover_lost_log=recover_lost_log)
    from coord.server.app import run_app
    from coord.storage import StorageError

    try:
        run_app(cfg)
    except KeyboardInterrupt:
        pass
    except StorageError as e:  # refused at start: the data directory needs an operator, not a restart
        click.echo(f"coord: server {cfg.server_id} refuses to start: {e}", err=True)
        sys.exit(EXIT_DATA_ERROR)


@main.command()
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
def digest(user: str, password_stdin: bool) -> None:
    """Print the identity for USER's password, for [auth] superusers/admins and
    digest ACLs: digest:USER:base64(sha1(USER:PASSWORD)) (ZooKeeper's format).
    The password is asked for (or read from stdin), never taken as an argument."""
    from coord.namespace.acl import digest_id

    if ":" in user or not user:
        raise click.BadParameter("a user name without ':'", param_hint="USER")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else \
        click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        click.echo(f"digest:{digest_id(f'{user}:{password}')}")
    except Exception as e:  # AuthFailedError: an empty password
        raise click.ClickException(str(e)) from None


async def probe_status(addr: tuple[str, int], timeout: float = 2.0) -> dict | None:
    """One server's status over the client protocol, or None if it does not answer."""
    import trio
    from coordclient.wire import FramedStream

    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(*addr)
        except OSError:
            return None
        async with stream:
            fs = FramedStream(stream)
            try:
                await fs.send({"id": 1, "op": "status"})
                resp = await fs.receive()
            except (OSError, trio.BrokenResourceError, trio.EndOfChannel, ValueError):
                return None
            return resp.get("r") if isinstance(resp, dict) and resp.get("ok") else None
    return None


def wait_for_leader(addrs: list[tuple[str, int]], timeout: float) -> dict | None:
    """Poll the servers until one reports itself leader; its status, or None."""
    import trio

    async def poll() -> dict | None:
        with trio.move_on_after(timeout):
            while True:
                for a in addrs:
                    st = await probe_status(a, timeout=0.5)
                    if st and st.get("role") == "leader":
                        return st
                await trio.sleep(0.1)
        return None

    return trio.run(poll)


def free_ports(n: int) -> list[int]:
    """Ports that were free a moment ago on 127.0.0.1 (bound, read, released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def dev_config(sid: int, n: int, data_root: str, peer_ports: list[int], client_ports: list[int],
               cluster_id: str = "dev", http_ports: list[int] | None = None,
               zk_ports: list[int] | None = None) -> str:
    members = "\n".join(
        f'{i} = {{ peer = "127.0.0.1:{peer_ports[i - 1]}", client = "127.0.0.1:{client_ports[i - 1]}" }}'
        for i in range(1, n + 1)
    )
    return f"""# generated by `coord dev`
[server]
id = {sid}
cluster_id = "{cluster_id}"
data_dir = "{os.path.join(data_root, f"server{sid}")}"
peer_address = "127.0.0.1:{peer_ports[sid - 1]}"
client_address = "127.0.0.1:{client_ports[sid - 1]}"
wal_segment_bytes = {16 << 20}
{f'http_address = "127.0.0.1:{http_ports[sid - 1]}"' if http_ports else ""}
{f'zookeeper_address = "127.0.0.1:{zk_ports[sid - 1]}"' if zk_ports else ""}

[cluster]
members = {{ {", ".join(m.strip() for m in members.splitlines())} }}

[raft]
tick_ms = 50
election_ticks = 10
heartbeat_ticks = 2
"""


@main.command()
@click.option("--servers", "-n", default=3, show_default=True, type=click.IntRange(1, 7))
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the ensemble's data here (default: a temporary directory, removed on exit).")
@click.option("--log-level", default="info", show_default=True)
def dev(servers: int, data_dir: str | None, log_level: str) -> None:
    """Start a local ensemble of SERVERS processes on 127.0.0.1; Ctrl-C stops it."""
    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # stop the children on SIGTERM too
    temp = data_dir is None
    root = tempfile.mkdtemp(prefix="coord-dev-") if temp else os.path.abspath(data_dir)
    os.makedirs(root, exist_ok=True)
    ports = free_ports(4 * servers)
    peer_ports, client_ports = ports[:servers], ports[servers:2 * servers]
    http_ports, zk_ports = ports[2 * servers:3 * servers], ports[3 * servers:]
    procs: list[subprocess.Popen] = []
    try:
        for sid in range(1, servers + 1):
            path = os.path.join(root, f"server{sid}.toml")
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(dev_config(sid, servers, root, peer_ports, client_ports, http_ports=http_ports,
                                       zk_ports=zk_ports))
            logf = open(os.path.join(root, f"server{sid}.log"), "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "coord", "serve", "--config", path, "--log-level", log_level],
                stdout=logf, stderr=subprocess.STDOUT,
            ))
            logf.close()
        cfgs = [load_config(os.path.join(root, f"server{sid}.toml")) for sid in range(1, servers + 1)]
        endpoints = ",".join(f"{c.client_address[0]}:{c.client_address[1]}" for c in cfgs)
        leader = wait_for_leader([c.client_address for c in cfgs], timeout=60)
        if leader is None:
            raise click.ClickException(f"no leader was elected within 60 s; see the logs in {root}")
        click.echo(f"coord dev: {servers} servers up, leader is server {leader['server_id']}", err=True)
        click.echo(f"coord dev: data and logs (server*.log) in {root}", err=True)
        dashboards = [c.http_address for c in cfgs if c.http_address is not None]
        if dashboards:
            click.echo(f"coord dev: dashboard at http://{dashboards[0][0]}:{dashboards[0][1]}/  "
                       f"(every server has one: {', '.join(f'{h}:{p}' for h, p in dashboards)}; "
                       f"also /metrics, /health, /ready)", err=True)
        click.echo(f"export COORD_ENDPOINTS={endpoints}")
        zk_hosts = ",".join(f"{c.zookeeper_address[0]}:{c.zookeeper_address[1]}" for c in cfgs
                            if c.zookeeper_address is not None)
        if zk_hosts:
            click.echo(f"export ZOOKEEPER_HOSTS={zk_hosts}")
            click.echo("coord dev: ZooKeeper clients (kazoo, Curator, zkCli.sh) connect to $ZOOKEEPER_HOSTS", err=True)
        click.echo("coord dev: in another terminal, after the export above:  coordctl status;  "
                   "coordctl create /hello world;  coordctl get /hello", err=True)
        click.echo("coord dev: Ctrl-C stops the ensemble", err=True)
        sys.stdout.flush()
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        bad = [(i + 1, p.returncode) for i, p in enumerate(procs) if p.poll() is not None]
        raise click.ClickException(f"server(s) exited: {bad}; see the logs in {root}")
    except KeyboardInterrupt:
        click.echo("coord dev: stopping", err=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        if temp:
            shutil.rmtree(root, ignore_errors=True)
        else:
            click.echo(f"coord dev: data kept in {root}; `coord dev --data-dir {root}` starts it again", err=True)


if __name__ == "__main__":
    main()
