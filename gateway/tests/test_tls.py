"""The gateway talks to a TLS server it can verify with its configured CA bundle, and refuses
one it cannot (a real uvicorn with a certificate made here, on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvicorn

from navign_gateway.config import load_config
from navign_gateway.credentials import Credentials
from navign_gateway.daemon import client_ssl
from navign_gateway.db import Database
from navign_gateway.identity import create_identity
from navign_gateway.upstream import UpstreamError
from navign_proto.testing import issue
from navign_server.app import Server, create_app
from navign_server.testing import free_port, server_settings


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    issued = issue(directory, name)
    return issued.cert, issued.key


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    cert, key = make_certificate(tmp_path, "server")
    other, _ = make_certificate(tmp_path, "stranger")
    port = free_port()
    app = create_app(server_settings(tmp_path / "server"))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = Server(config, app)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}", cert, other
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def register(tmp_path: Path, url: str, ca: Path) -> None:
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        f'server_url = "{url}"\nentity_id = "mall-x"\norchestrator_id = "gw-1"\n'
        f'data_dir = "{tmp_path / "data"}"\nca_bundle = "{ca}"\n'
    )
    config = load_config(config_path, env={})
    identity = create_identity(tmp_path / "identity.pem")
    connector = aiohttp.TCPConnector(ssl=client_ssl(config))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        Database(tmp_path / "gw.db") as db,
    ):
        credentials = Credentials(
            session=session, config=config, identity=identity, db=db, version="0.1.0"
        )
        await credentials.token()


async def test_a_server_verified_by_the_ca_bundle_is_talked_to(
    tls_server: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, cert, _ = tls_server
    # The TLS handshake succeeds; the server then answers (no such entity: 404).
    with pytest.raises(UpstreamError) as answered:
        await register(tmp_path, url, cert)
    assert answered.value.code == "ENTITY_NOT_FOUND"


async def test_a_server_the_bundle_does_not_vouch_for_is_refused(
    tls_server: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, _, stranger = tls_server
    with pytest.raises(UpstreamError) as refused:
        await register(tmp_path, url, stranger)
    assert refused.value.status == 0  # never reached: the certificate did not verify
    assert "certificate" in str(refused.value).lower()


def test_the_default_is_the_system_trust_store(tmp_path: Path) -> None:
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        'server_url = "https://navign.example.com"\nentity_id = "m"\norchestrator_id = "g"\n'
    )
    context = client_ssl(load_config(config_path, env={}))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
