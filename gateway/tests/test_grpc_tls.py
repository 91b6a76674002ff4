"""TLS on the gRPC port (``navign_gateway.grpc_tls``): a real server on 127.0.0.1 with
certificates made here, called through grpcio's TLS credentials; rotation of the files while it
serves; client certificates; the configuration's checks."""

# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from navign_gateway import cli
from navign_gateway.config import ConfigError, load_config
from navign_gateway.daemon import Gateway
from navign_gateway.grpc_tls import ServerTls, TlsError, TlsFiles, build_context
from navign_gateway.grpc_transport import GrpcServer
from navign_proto.testing import OWN_SUBCHANNELS, Issued, issue, tls_credentials

from .test_grpc_transport import SERVICE, Echo, call, report


@contextlib.asynccontextmanager
async def serving(tls: ServerTls) -> AsyncIterator[int]:
    server = GrpcServer()
    server.add(SERVICE, Echo())
    port = await server.start("127.0.0.1:0", tls=tls.context)
    try:
        yield port
    finally:
        await server.stop(None)


def channel(port: int, trust: Issued, client: Issued | None = None) -> grpc.aio.Channel:
    credentials = tls_credentials(trust, client)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=[OWN_SUBCHANNELS])


async def answers(port: int, trust: Issued, client: Issued | None = None) -> bool:
    """Whether a new connection trusting ``trust`` (presenting ``client``) gets its call through."""
    async with channel(port, trust, client) as ch:
        try:
            return (await call(ch, report("tls"))).message == "tls"
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:  # refused at the handshake only
                raise
            return False


def install(source: Issued, cert: Path, key: Path) -> None:
    """Put ``source``'s pair in place the way a deploy tool does: write aside, rename over."""
    for origin, target in ((source.cert, cert), (source.key, key)):
        aside = target.with_suffix(".new")
        aside.write_bytes(origin.read_bytes())
        os.replace(aside, target)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    made = {name: issue(tmp_path, name) for name in ("first", "second", "stranger")}
    made["towers"] = issue(tmp_path, "towers", ca=True)
    made["other-ca"] = issue(tmp_path, "other-ca", ca=True)
    made["tower"] = issue(tmp_path, "tower", issuer=made["towers"])
    made["impostor"] = issue(tmp_path, "impostor", issuer=made["other-ca"])
    return made


def files_from(tmp_path: Path, source: Issued, client_ca: Issued | None = None) -> TlsFiles:
    """The gateway's own copies (so a test can rotate them): port.crt, port.key, clients.pem."""
    cert, key = tmp_path / "port.crt", tmp_path / "port.key"
    install(source, cert, key)
    ca = None
    if client_ca is not None:
        ca = tmp_path / "clients.pem"
        ca.write_bytes(client_ca.pem())
    return TlsFiles(cert, key, ca)


async def test_a_client_trusting_the_certificate_is_served_and_others_are_not(
    tmp_path: Path, pki: dict[str, Issued]
) -> None:
    tls = ServerTls(files_from(tmp_path, pki["first"]))
    async with serving(tls) as port:
        assert await answers(port, trust=pki["first"])
        assert not await answers(port, trust=pki["stranger"])
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[OWN_SUBCHANNELS]
        ) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(plain, report("plain"))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_rotated_certificate_serves_new_connections_without_a_restart(
    tmp_path: Path, pki: dict[str, Issued]
) -> None:
    files = files_from(tmp_path, pki["first"])
    tls = ServerTls(files)
    async with serving(tls) as port, channel(port, trust=pki["first"]) as kept:
        assert (await call(kept, report("before"))).message == "before"
        install(pki["second"], files.cert, files.key)
        assert await answers(port, trust=pki["second"])
        assert not await answers(port, trust=pki["first"])
        assert tls.reloads == 1
        assert tls.not_after == pki["second"].certificate.not_valid_after_utc
        # The connection made before the rotation keeps working.
        assert (await call(kept, report("after"))).message == "after"


async def test_a_half_done_rotation_keeps_the_loaded_pair_and_warns_once(
    tmp_path: Path, pki: dict[str, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    files = files_from(tmp_path, pki["first"])
    tls = ServerTls(files)
    async with serving(tls) as port:
        files.cert.write_bytes(pki["second"].pem())  # the new certificate, the old key
        with caplog.at_level(logging.WARNING, logger="navign_gateway.grpc_tls"):
            assert await answers(port, trust=pki["first"])
            assert await answers(port, trust=pki["first"])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "kept the loaded certificate" in warnings[0]
        assert "does not match" in warnings[0]
        assert tls.reloads == 0
        files.key.write_bytes(pki["second"].key_pem())  # the rotation completes
        assert await answers(port, trust=pki["second"])
        assert tls.reloads == 1


async def test_client_certificates_are_required_from_the_configured_ca(
    tmp_path: Path, pki: dict[str, Issued]
) -> None:
    files = files_from(tmp_path, pki["first"], client_ca=pki["towers"])
    tls = ServerTls(files)
    assert tls.describe()["client_certificates"] is True
    async with serving(tls) as port:
        assert await answers(port, trust=pki["first"], client=pki["tower"])
        assert not await answers(port, trust=pki["first"])
        assert not await answers(port, trust=pki["first"], client=pki["impostor"])
        # The mall replaces the towers' CA: the old one's certificates stop working.
        assert files.client_ca is not None
        files.client_ca.write_bytes(pki["other-ca"].pem())
        assert await answers(port, trust=pki["first"], client=pki["impostor"])
        assert not await answers(port, trust=pki["first"], client=pki["tower"])


def test_an_expiring_certificate_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    soon = issue(tmp_path, "soon", valid=dt.timedelta(days=3))
    with caplog.at_level(logging.WARNING, logger="navign_gateway.grpc_tls"):
        ServerTls(files_from(tmp_path, soon))
    assert any("expires in 2 days" in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    today = issue(tmp_path, "today", valid=dt.timedelta(hours=5))
    with caplog.at_level(logging.WARNING, logger="navign_gateway.grpc_tls"):
        ServerTls(files_from(tmp_path, today))
    assert any("expires in 4 hours" in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    later = issue(tmp_path, "later", valid=dt.timedelta(days=300))
    with caplog.at_level(logging.WARNING, logger="navign_gateway.grpc_tls"):
        ServerTls(files_from(tmp_path, later))
    assert not caplog.records


def test_a_running_gateway_warns_daily_and_notices_rotation_without_connections(
    tmp_path: Path, pki: dict[str, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    soon = issue(tmp_path, "soon", valid=dt.timedelta(days=10))
    files = files_from(tmp_path, soon)
    clock = [dt.datetime.now(dt.UTC)]
    with caplog.at_level(logging.WARNING, logger="navign_gateway.grpc_tls"):
        tls = ServerTls(files, now=lambda: clock[0])
        for _ in range(23):  # hourly checks within the day of the first warning: silent
            clock[0] += dt.timedelta(hours=1)
            tls.check()
        assert len(caplog.records) == 1
        clock[0] += dt.timedelta(hours=1)
        tls.check()
        assert len(caplog.records) == 2
        assert "expires in 8 days" in caplog.records[-1].getMessage()
        install(pki["first"], files.cert, files.key)  # renewed; no caller has connected since
        clock[0] += dt.timedelta(days=1)
        tls.check()
    assert tls.reloads == 1
    assert tls.not_after == pki["first"].certificate.not_valid_after_utc
    assert len(caplog.records) == 2  # 90 days left: no more warnings


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("mismatch", "does not match the certificate"),
        ("garbage-cert", "cannot load"),
        ("missing-key", "no such file"),
        ("garbage-ca", "not a PEM CA bundle"),
        ("encrypted-key", "the key is encrypted"),
    ],
)
def test_unusable_files_are_one_readable_error(
    tmp_path: Path, pki: dict[str, Issued], damage: str, message: str
) -> None:
    files = files_from(tmp_path, pki["first"], client_ca=pki["towers"])
    assert files.client_ca is not None
    if damage == "mismatch":
        files.key.write_bytes(pki["second"].key_pem())
    elif damage == "garbage-cert":
        files.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    elif damage == "missing-key":
        files.key.unlink()
    elif damage == "encrypted-key":  # OpenSSL would ask for its passphrase on the terminal
        files.key.write_bytes(
            pki["first"].private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
    else:
        files.client_ca.write_text("a CA? no\n")
    with pytest.raises(TlsError, match=message) as raised:
        build_context(files)
    assert "\n" not in str(raised.value)


def write_config(tmp_path: Path, grpc_table: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'server_url = "http://127.0.0.1:9"\nentity_id = "mall-x"\norchestrator_id = "gw-1"\n'
        f'data_dir = "{tmp_path / "data"}"\n[grpc]\n{grpc_table}\n'
    )
    return path


def test_the_configuration_checks_the_files_before_the_gateway_starts(
    tmp_path: Path, pki: dict[str, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, towers = pki["first"], pki["second"], pki["towers"]
    good = write_config(
        tmp_path,
        f'tls_cert = "{first.cert}"\ntls_key = "{first.key}"\ntls_client_ca = "{towers.cert}"',
    )
    files = load_config(good, env={}).grpc.tls_files
    assert files == TlsFiles(first.cert, first.key, towers.cert)
    cases = {
        f'tls_cert = "{first.cert}"': "tls_cert and tls_key go together",
        f'tls_client_ca = "{towers.cert}"': "tls_client_ca needs tls_cert and tls_key",
        f'tls_cert = "{first.cert}"\ntls_key = "{second.key}"': "does not match the certificate",
        f'tls_cert = "{tmp_path / "nope.crt"}"\ntls_key = "{first.key}"': "no such file",
    }
    for table, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path, table), env={})
    # check-config (the unit's ExecStartPre) says it in one line and exits 2.
    path = write_config(tmp_path, f'tls_cert = "{first.cert}"\ntls_key = "{second.key}"')
    assert cli.main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("navign-gateway: ")
    assert "does not match" in err
    assert "\n" not in err


def test_the_gateway_warns_when_tokens_would_cross_the_network_in_the_clear(
    tmp_path: Path, pki: dict[str, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    token = f'operator_token_sha256 = ["{"ab" * 32}"]'

    def grpc_tls(grpc_table: str, listen: str) -> ServerTls | None:
        config = load_config(
            write_config(tmp_path, grpc_table), env={"NAVIGN_GATEWAY_LISTEN__GRPC": listen}
        )
        return Gateway(config)._grpc_tls()

    with caplog.at_level(logging.WARNING, logger="navign_gateway.daemon"):
        assert grpc_tls(token, "0.0.0.0:50051") is None
        assert "has no TLS: operator and reader tokens cross the network" in caplog.text
        caplog.clear()
        assert grpc_tls(token, "127.0.0.1:50051") is None  # loopback stays on the machine
        assert grpc_tls("", "0.0.0.0:50051") is None  # no token to leak
        first = pki["first"]
        tls = grpc_tls(f'{token}\ntls_cert = "{first.cert}"\ntls_key = "{first.key}"', "[::]:1")
        assert tls is not None
        assert tls.describe()["client_certificates"] is False
    assert not caplog.records


# -- navign-gateway tls-init / tls-issue: a mall without a PKI ---------------------------------


def _loaded(path: Path) -> Issued:
    """A pair made by the tool, as the tests' helpers take it."""
    certificate = x509.load_pem_x509_certificate(path.with_suffix(".crt").read_bytes())
    key = serialization.load_pem_private_key(path.with_suffix(".key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issued(path.with_suffix(".crt"), path.with_suffix(".key"), key, certificate)


async def test_tls_init_and_issue_make_a_working_port_and_towers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "mall-pki"
    assert cli.main(["tls-init", str(pki), "--address", "127.0.0.1", "--address", "gw.mall"]) == 0
    assert "ca.key stays here" in capsys.readouterr().out
    assert cli.main(["tls-issue", str(pki), "--client", "tower-1"]) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*pki.iterdir(), *pki.glob("clients/*")]}
    assert modes["ca.key"] == modes["grpc.key"] == modes["tower-1.key"] == 0o600
    assert not [name for name in modes if name.startswith(".")]  # nothing staged is left
    port = ServerTls(TlsFiles(pki / "grpc.crt", pki / "grpc.key", pki / "clients.pem"))
    ca, tower = _loaded(pki / "ca"), _loaded(pki / "clients" / "tower-1")
    async with serving(port) as listening:
        assert await answers(listening, trust=ca, client=tower)
        assert not await answers(listening, trust=ca)  # no client certificate
        # Renewal from the same CA: the gateway picks it up, towers trust it as before.
        before = port.not_after
        assert cli.main(["tls-issue", str(pki), "--address", "127.0.0.1", "--days", "30"]) == 0
        assert await answers(listening, trust=ca, client=tower)
        assert port.reloads == 1
        assert port.not_after < before


def test_tls_tool_refusals_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    assert cli.main(["tls-init", str(pki), "--address", "10.0.0.5"]) == 0
    capsys.readouterr()
    listing = sorted(str(p) for p in pki.rglob("*"))
    refusals = {
        ("tls-init", str(pki), "--address", "10.0.0.5"): "ca.crt exists",
        ("tls-init", str(tmp_path / "new"), "--address", "bad_name"): "neither an IP address",
        ("tls-init", str(tmp_path / "new2")): "at least one --address",
        ("tls-issue", str(tmp_path / "none"), "--client", "t"): "tls-init makes the CA",
        ("tls-issue", str(pki), "--client", "../escape"): "letters, digits",
    }
    for argv, message in refusals.items():
        assert cli.main(list(argv)) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err, (argv, err)
        assert "\n" not in err
    assert not (tmp_path / "new").exists()
    assert cli.main(["tls-issue", str(pki), "--client", "t"]) == 0
    assert cli.main(["tls-issue", str(pki), "--client", "t"]) == 1
    assert "exists; nothing written" in capsys.readouterr().err
    (pki / "ca.key").write_bytes(issue(tmp_path, "other").key_pem())
    assert cli.main(["tls-issue", str(pki), "--client", "u"]) == 1
    assert "not the key of" in capsys.readouterr().err
    assert not (pki / "clients" / "u.crt").exists()
    assert sorted(str(p) for p in pki.rglob("*") if "clients" not in p.parts) == [
        p for p in listing if "clients" not in Path(p).parts
    ]
