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

from coord.server.config import SECTIONS as CONFIG_SECTIONS
from coord.server.config import ConfigError, load_config


# Exit status of ``coord serve`` when the data directory cannot be trusted
# (sysexits' EX_DATAERR): systemd's unit does not restart on it.
EXIT_DATA_ERROR = 65
# Exit status when a write or fsync failed (EIO, ...; sysexits' EX_IOERR):
# never retried in-process (the kernel may have dropped the data), but a
# restart recovers from what is really on disk, so systemd restarts on it.
EXIT_IO_ERROR = 74


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``:
    Trio's nurseries wrap what a task raised, and an operator should read
    the error, not a tree of tracebacks."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _main_error(exc: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first exception of ``kinds`` (in that order of preference) inside ``exc``."""
    leaves = _leaves(exc)
    for kind in kinds:
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return None


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
    from coord.storage import DiskIOError, NoSpaceError, StorageError

    try:
        run_app(cfg)
    except BaseException as exc:  # noqa: BLE001 - sorted below; anything else is re-raised as it was
        err = _main_error(exc, (DiskIOError, NoSpaceError, StorageError, ConfigError, KeyboardInterrupt))
        if isinstance(err, NoSpaceError):  # only where it cannot be waited out: while starting
            click.echo(f"coord: server {cfg.server_id} stopped: its disk is full ({err.path or cfg.data_dir}): "
                       f"{err}. Free some space and start it again.", err=True)
            sys.exit(EXIT_IO_ERROR)
        if isinstance(err, DiskIOError):
            # A write or fsync failed (EIO, ...): never retried in-process;
            # a restart recovers from what is really on disk.
            where = f" ({err.path})" if err.path else ""
            click.echo(f"coord: server {cfg.server_id} stopped: disk I/O failed{where}: {err}. "
                       "Nothing unwritten was acknowledged; check the disk (dmesg), then restart the server: "
                       "it recovers from what is on disk.", err=True)
            sys.exit(EXIT_IO_ERROR)
        if isinstance(err, ConfigError):  # a [tls] file or the peer secret, loaded at start
            raise click.ClickException(f"bad configuration: {err}") from None
        if isinstance(err, StorageError):  # the data directory needs an operator, not a restart
            click.echo(f"coord: server {cfg.server_id} refuses to start: {err}", err=True)
            sys.exit(EXIT_DATA_ERROR)
        if isinstance(err, KeyboardInterrupt):
            return
        raise


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


async def probe_status(addr: tuple[str, int], timeout: float = 2.0, ssl_context=None) -> dict | None:
    """One server's status over the client protocol (TLS with ``ssl_context``),
    or None if it does not answer."""
    import trio
    from coordclient.wire import FramedStream

    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(*addr)
        except OSError:
            return None
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_hostname=addr[0])
        async with stream:
            fs = FramedStream(stream)
            try:
                await fs.send({"id": 1, "op": "status"})
                resp = await fs.receive()
            except (OSError, trio.BrokenResourceError, trio.EndOfChannel, ValueError):
                return None
            return resp.get("r") if isinstance(resp, dict) and resp.get("ok") else None
    return None


def wait_for_leader(addrs: list[tuple[str, int]], timeout: float, ssl_context=None) -> dict | None:
    """Poll the servers until one reports itself leader; its status, or None."""
    import trio

    async def poll() -> dict | None:
        with trio.move_on_after(timeout):
            while True:
                for a in addrs:
                    st = await probe_status(a, timeout=0.5, ssl_context=ssl_context)
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


def _toml_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dev_config(sid: int, n: int, data_root: str, peer_ports: list[int], client_ports: list[int],
               cluster_id: str = "dev", http_ports: list[int] | None = None, *,
               peer_secret_file: str | None = None, tls: dict[str, str] | None = None,
               superusers: tuple[str, ...] = (), zk_ports: list[int] | None = None) -> str:
    """One dev server's configuration.  Peers authenticate with the cluster
    secret in ``peer_secret_file``, or with mutual TLS when ``tls`` (``cert``,
    ``key``, ``ca``, ``client_auth``) is given; ``superusers`` become
    ``[auth] superusers`` once the server knows an ``[auth]`` table."""
    members = "\n".join(
        f'{i} = {{ peer = "127.0.0.1:{peer_ports[i - 1]}", client = "127.0.0.1:{client_ports[i - 1]}"'
        + (f', zookeeper = "127.0.0.1:{zk_ports[i - 1]}"' if zk_ports else "") + " }"
        for i in range(1, n + 1)
    )
    server_extra = []
    if http_ports:
        server_extra.append(f'http_address = "127.0.0.1:{http_ports[sid - 1]}"')
    if zk_ports:
        server_extra.append(f'zookeeper_address = "127.0.0.1:{zk_ports[sid - 1]}"')
    if peer_secret_file:
        server_extra.append(f"peer_secret_file = {_toml_str(peer_secret_file)}")
    tables = []
    if tls:
        tables.append("[tls]\n" + "\n".join(f"{k} = {_toml_str(v)}" for k, v in tls.items()) + "\n")
    if superusers and "auth" in CONFIG_SECTIONS:
        tables.append("[auth]\nsuperusers = [" + ", ".join(_toml_str(u) for u in superusers) + "]\n")
    extra = "\n".join(server_extra)
    return f"""# generated by `coord dev`
[server]
id = {sid}
cluster_id = "{cluster_id}"
data_dir = {_toml_str(os.path.join(data_root, f"server{sid}"))}
peer_address = "127.0.0.1:{peer_ports[sid - 1]}"
client_address = "127.0.0.1:{client_ports[sid - 1]}"
wal_segment_bytes = {16 << 20}
{extra}

[cluster]
members = {{ {", ".join(m.strip() for m in members.splitlines())} }}

[raft]
tick_ms = 50
election_ticks = 10
heartbeat_ticks = 2
""" + "".join("\n" + t for t in tables)


def dev_peer_secret(root: str) -> str:
    """The dev ensemble's cluster secret file (made once, mode 0600)."""
    from coord.security.peerauth import write_secret

    path = os.path.join(root, "peer.secret")
    if not os.path.exists(path):
        write_secret(path)
    return path


@main.command()
@click.option("--servers", "-n", default=3, show_default=True, type=click.IntRange(1, 7))
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the ensemble's data here (default: a temporary directory, removed on exit).")
@click.option("--secure", is_flag=True,
              help="TLS everywhere: a throwaway CA, server and client certificates and a superuser password "
                   "in the data dir; prints the COORD_* exports a client needs.")
@click.option("--log-level", default="info", show_default=True)
def dev(servers: int, data_dir: str | None, secure: bool, log_level: str) -> None:
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
    material = None
    probe_ssl = None
    try:
        if secure:
            import ssl

            from coord.security.devcerts import dev_material, superuser_identity

            material = dev_material(root, servers)
            probe_ssl = ssl.create_default_context(cafile=material.ca)
            probe_ssl.load_cert_chain(material.client.cert, material.client.key)
        for sid in range(1, servers + 1):
            path = os.path.join(root, f"server{sid}.toml")
            if not os.path.exists(path):
                if material is not None:
                    tls = {"cert": material.servers[sid].cert, "key": material.servers[sid].key,
                           "ca": material.ca, "client_auth": "request"}
                    text = dev_config(sid, servers, root, peer_ports, client_ports, http_ports=http_ports, tls=tls,
                                      superusers=(superuser_identity(material.superuser),), zk_ports=zk_ports)
                else:
                    text = dev_config(sid, servers, root, peer_ports, client_ports, http_ports=http_ports,
                                      peer_secret_file=dev_peer_secret(root), zk_ports=zk_ports)
                with open(path, "w") as f:
                    f.write(text)
            logf = open(os.path.join(root, f"server{sid}.log"), "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "coord", "serve", "--config", path, "--log-level", log_level],
                stdout=logf, stderr=subprocess.STDOUT,
            ))
            logf.close()
        cfgs = [load_config(os.path.join(root, f"server{sid}.toml")) for sid in range(1, servers + 1)]
        if secure and any(c.tls is None for c in cfgs):
            raise click.ClickException(f"--secure, but the configurations kept in {root} have no [tls]; "
                                       f"use another --data-dir")
        endpoints = ",".join(f"{c.client_address[0]}:{c.client_address[1]}" for c in cfgs)
        leader = wait_for_leader([c.client_address for c in cfgs], timeout=60, ssl_context=probe_ssl)
        if leader is None:
            raise click.ClickException(f"no leader was elected within 60 s; see the logs in {root}")
        click.echo(f"coord dev: {servers} servers up, leader is server {leader['server_id']}"
                   f"{' (TLS everywhere)' if secure else ''}", err=True)
        click.echo(f"coord dev: data and logs (server*.log) in {root}", err=True)
        dashboards = [c.http_address for c in cfgs if c.http_address is not None]
        scheme = "https" if secure else "http"
        if dashboards:
            click.echo(f"coord dev: dashboard at {scheme}://{dashboards[0][0]}:{dashboards[0][1]}/  "
                       f"(every server has one: {', '.join(f'{h}:{p}' for h, p in dashboards)}; "
                       f"also /metrics, /health, /ready)", err=True)
        click.echo(f"export COORD_ENDPOINTS={endpoints}")
        zk_hosts = ",".join(f"{c.zookeeper_address[0]}:{c.zookeeper_address[1]}" for c in cfgs
                            if c.zookeeper_address is not None)
        if zk_hosts:
            click.echo(f"export ZOOKEEPER_HOSTS={zk_hosts}")
            click.echo("coord dev: ZooKeeper clients (kazoo, Curator, zkCli.sh) connect to $ZOOKEEPER_HOSTS", err=True)
        if material is not None:
            click.echo(f"export COORD_CACERT={material.ca}")
            click.echo(f"export COORD_CERT={material.client.cert}")
            click.echo(f"export COORD_KEY={material.client.key}")
            click.echo(f"export COORD_USER={material.superuser}")
            click.echo(f"coord dev: the client certificate's identity is x509:{material.client.subject}; "
                       f"COORD_USER is the superuser (digest)", err=True)
            if dashboards:
                h, p = dashboards[0]
                click.echo(f"coord dev: the dashboard's sessions, connections and ACL-protected nodes need a "
                           f"sign-in: open https://{h}:{p}/login and give the user and password of COORD_USER, "
                           f"or: curl --cacert $COORD_CACERT -u \"$COORD_USER\" https://{h}:{p}/api/sessions",
                           err=True)
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
            click.echo(f"coord dev: data kept in {root}; `coord dev --data-dir {root}"
                       f"{' --secure' if secure else ''}` starts it again", err=True)


# --- coord certs -------------------------------------------------------------------------

@main.group()
def certs() -> None:
    """Make what a secured ensemble needs: a CA, server and client certificates, a peer secret.

    \b
      coord certs init --dir /etc/coord/tls
      coord certs issue --dir /etc/coord/tls --server-id 1 --host 10.0.0.1 --host coord1.example
      coord certs issue --dir /etc/coord/tls --client alice
      coord certs secret --out /etc/coord/peer.secret
    """


def _certs_error(fn):
    import functools

    from coord.security.certs import CertError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CertError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(f"{e.filename or ''}: {e.strerror}") from None
    return wrapper


@certs.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="Where ca.crt/ca.key go.")
@click.option("--name", default="coord cluster CA", show_default=True, help="The CA's common name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500))
@click.option("--force", is_flag=True, help="Replace an existing CA (every certificate it signed stops working).")
@_certs_error
def certs_init(directory: str, name: str, days: int, force: bool) -> None:
    """Create a certificate authority for one cluster (ca.crt, ca.key)."""
    from coord.security.certs import init_ca

    ca = init_ca(directory, name=name, days=days, force=force)
    click.echo(f"wrote {ca.cert} and {ca.key} (mode 0600: keep it off the servers if you can)")


@certs.command("issue")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="The CA's directory (from `coord certs init`); the new files go there too.")
@click.option("--server-id", type=click.IntRange(1), default=None, help="Issue server N's certificate.")
@click.option("--host", "hosts", multiple=True,
              help="An address clients reach the server at (IP or DNS name); repeat for several.")
@click.option("--client", "client", default=None, help="Issue a client certificate with subject CN=NAME.")
@click.option("--days", default=825, show_default=True, type=click.IntRange(1, 36500))
@click.option("--force", is_flag=True, help="Replace existing files.")
@_certs_error
def certs_issue(directory: str, server_id: int | None, hosts: tuple[str, ...], client: str | None, days: int,
                force: bool) -> None:
    """Issue a server certificate (--server-id, --host) or a client certificate (--client)."""
    from coord.security.certs import issue_client, issue_server

    if (server_id is None) == (client is None):
        raise click.UsageError("give either --server-id (with --host) or --client")
    if client is not None:
        if hosts:
            raise click.UsageError("--host is for server certificates")
        c = issue_client(directory, client, days=days, force=force)
        click.echo(f"wrote {c.cert} and {c.key}; its identity is x509:{c.subject}")
        return
    c = issue_server(directory, server_id, list(hosts), days=days, force=force)
    click.echo(f"wrote {c.cert} and {c.key} (server {server_id}); in server {server_id}'s configuration:\n"
               f"[tls]\ncert = {_toml_str(os.path.abspath(c.cert))}\nkey = {_toml_str(os.path.abspath(c.key))}\n"
               f"ca = {_toml_str(os.path.abspath(os.path.join(directory, 'ca.crt')))}")


@certs.command("secret")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The file to write (mode 0600).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@_certs_error
def certs_secret(out: str, force: bool) -> None:
    """Write a new cluster secret, for server.peer_secret_file (the same file on every server)."""
    from coord.security.peerauth import write_secret

    try:
        write_secret(out, overwrite=force)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; pass --force to replace it") from None
    click.echo(f"wrote {out}; copy it to every server and set server.peer_secret_file to its path")


if __name__ == "__main__":
    main()
