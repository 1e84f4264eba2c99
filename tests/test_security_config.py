"""``[tls]``, the peer secret and the peer-credential rule: parsed and loaded
with errors that name the field and never show a key or the secret."""

import os

import pytest
from click.testing import CliRunner

from coord.cli import main
from coord.security.credentials import Credentials
from coord.server.config import ConfigError, parse_config
from tests.tlsutil import TLSMaterial


def doc(tmp_path, *, server=None, tls=None):
    d = {
        "server": {"id": 1, "cluster_id": "c", "data_dir": str(tmp_path / "data"), "peer_address": "127.0.0.1:1",
                   "client_address": "127.0.0.1:2", **(server or {})},
        "cluster": {"members": {"1": "127.0.0.1:1"}},
    }
    if tls is not None:
        d["tls"] = tls
    return d


@pytest.fixture
def material(tmp_path):
    return TLSMaterial(tmp_path / "ca")


def test_a_peer_credential_is_required(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(doc(tmp_path))
    msg = str(e.value)
    assert msg.startswith("server.peer_secret_file: the peer port needs a credential")
    assert "[tls]" in msg and "insecure_peer_network = true" in msg
    assert parse_config(doc(tmp_path, server={"insecure_peer_network": True})).insecure_peer_network
    cfg = parse_config(doc(tmp_path, server={"peer_secret_file": "secret"}), base_dir="/etc/coord")
    assert cfg.peer_secret_file == "/etc/coord/secret"  # relative to the configuration file
    with pytest.raises(ConfigError, match=r"^server\.insecure_peer_network: must be true or false"):
        parse_config(doc(tmp_path, server={"insecure_peer_network": "yes"}))


def test_tls_table_parsed(tmp_path, material):
    cfg = parse_config(doc(tmp_path, tls={"cert": "s.crt", "key": "s.key", "ca": "/x/ca.crt",
                                          "client_auth": "require", "handshake_timeout_ms": 250}),
                       base_dir="/etc/coord")
    assert (cfg.tls.cert, cfg.tls.key, cfg.tls.ca) == ("/etc/coord/s.crt", "/etc/coord/s.key", "/x/ca.crt")
    assert cfg.tls.client_auth == "require" and cfg.tls.handshake_timeout_ms == 250
    assert parse_config(doc(tmp_path, tls=material.tls_table(1))).peer_secret_file is None  # TLS is a credential


@pytest.mark.parametrize("tls, field", [
    ({"key": "k", "ca": "c"}, "tls.cert: required"),
    ({"cert": "c", "ca": "c"}, "tls.key: required"),
    ({"cert": "c", "key": "k"}, "tls.ca: required"),
    ({"cert": "", "key": "k", "ca": "c"}, "tls.cert: must not be empty"),
    ({"cert": 1, "key": "k", "ca": "c"}, "tls.cert: must be a string"),
    ({"cert": "c", "key": "k", "ca": "c", "client_auth": "optional"}, "tls.client_auth: must be one of"),
    ({"cert": "c", "key": "k", "ca": "c", "handshake_timeout_ms": 0}, "tls.handshake_timeout_ms: must be >= 10"),
    ({"cert": "c", "key": "k", "ca": "c", "verify": True}, "tls.verify: unknown setting"),
])
def test_bad_tls_table_names_the_field(tmp_path, tls, field):
    with pytest.raises(ConfigError) as e:
        parse_config(doc(tmp_path, tls=tls))
    assert str(e.value).startswith(field), str(e.value)


def test_tls_must_be_a_table(tmp_path):
    d = doc(tmp_path)
    d["tls"] = "on"
    with pytest.raises(ConfigError, match="^tls: must be a table"):
        parse_config(d)


def _load(tmp_path, material, **over):
    table = {**material.tls_table(1), **over}
    return Credentials.load(parse_config(doc(tmp_path, tls=table)))


def test_tls_files_checked_when_loaded(tmp_path, material):
    creds = _load(tmp_path, material)
    assert creds.client_ssl is not None and creds.peer.tls and creds.http_ssl is None
    assert creds.describe() == "client port: TLS (client certificates: request); peers: mutual TLS"

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = material.server(2)
    encrypted = tmp_path / "enc.key"
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(open(other.key, "rb").read(), None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw")))
    cases = [
        (dict(cert=str(tmp_path / "missing.crt")), "tls.cert: cannot read"),
        (dict(cert=str(garbage)), "tls.cert: "),
        (dict(key=str(garbage)), "tls.key: "),
        (dict(key=str(encrypted)), "tls.key: "),
        (dict(key=other.key), "tls.key: "),  # another certificate's key
        (dict(ca=str(garbage)), "tls.ca: "),
    ]
    secret_bits = open(other.key).read().splitlines()[1]
    for over, prefix in cases:
        with pytest.raises(ConfigError) as e:
            _load(tmp_path, material, **over)
        assert str(e.value).startswith(prefix), (over, str(e.value))
        assert secret_bits not in str(e.value)
    with pytest.raises(ConfigError, match="is not the key of the certificate"):
        _load(tmp_path, material, key=other.key)
    with pytest.raises(ConfigError, match="is encrypted"):
        _load(tmp_path, material, key=str(encrypted))


def test_peer_secret_file_checked_when_loaded(tmp_path, caplog):
    path = tmp_path / "peer.secret"

    def load():
        return Credentials.load(parse_config(doc(tmp_path, server={"peer_secret_file": str(path)})))

    with pytest.raises(ConfigError, match=r"^server\.peer_secret_file: .* does not exist \(`coord certs secret"):
        load()
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="holds 5 bytes; a cluster secret needs at least 16") as e:
        load()
    assert "short" not in str(e.value)
    path.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(path, 0o600)
    creds = load()
    assert creds.peer.secret == b"0123456789abcdef0123456789abcdef" and not creds.peer.tls
    assert creds.client_ssl is None and "readable by group" not in caplog.text
    os.chmod(path, 0o640)
    load()
    assert "server.peer_secret_file" in caplog.text and "mode 0640" in caplog.text
    assert "0123456789abcdef" not in caplog.text


def test_serve_refuses_to_start_on_a_bad_tls_file(tmp_path, material):
    table = {**material.tls_table(1), "key": str(tmp_path / "nope.key")}
    lines = ['[server]', 'id = 1', 'cluster_id = "c"', f'data_dir = "{tmp_path / "data"}"',
             'peer_address = "127.0.0.1:0"', 'client_address = "127.0.0.1:0"',
             '[cluster]', 'members = { 1 = "127.0.0.1:0" }', '[tls]']
    lines += [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in table.items()]
    path = tmp_path / "server.toml"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    assert f"bad configuration: tls.key: cannot read {tmp_path / 'nope.key'}" in result.output
    assert not os.path.exists(tmp_path / "data")  # refused before the data directory was touched
