"""The gateway's registration and token handling against the real server (uvicorn on loopback,
real SQLite): enrollment, wiping the used token, refresh, refusals, pending approval, skew."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from navign_gateway.config import GatewayConfig, load_config
from navign_gateway.credentials import (
    STATE_REGISTERED,
    Credentials,
    PendingApprovalError,
    UplinkRefusedError,
)
from navign_gateway.db import Database
from navign_gateway.identity import create_identity, load_identity
from navign_gateway.upstream import Upstream
from navign_server.testing import (
    RunningServer,
    enrollment_token,
    import_sample_mall,
    run_server,
    server_settings,
)

ENTITY = "mall-riverside"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with run_server(server_settings(tmp_path / "server"), tmp_path / "server") as running:
        await import_sample_mall(running)
        yield running


def write_config(
    tmp_path: Path, server: RunningServer, token: str | None, gw: str = "gw-1"
) -> Path:
    path = tmp_path / "gateway.toml"
    lines = [
        "# the mall's gateway",
        f'server_url = "{server.base_url}"',
        f'entity_id = "{ENTITY}"',
        f'orchestrator_id = "{gw}"',
    ]
    if token is not None:
        lines.append(f'enrollment_token = "{token}"  # single use')
    lines += [f'data_dir = "{tmp_path / "data"}"', "", "[ble]", "enabled = false", ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


async def make_credentials(
    config_path: Path, session: aiohttp.ClientSession, db: Database, **kwargs: object
) -> tuple[GatewayConfig, Credentials]:
    config = load_config(config_path, env={})
    key_path = config.identity_key_path
    key_path.parent.mkdir(parents=True, exist_ok=True)
    identity = load_identity(key_path) if key_path.exists() else create_identity(key_path)
    credentials = Credentials(
        session=session,
        config=config,
        identity=identity,
        db=db,
        version="0.1.0",
        config_path=config_path,
        **kwargs,  # type: ignore[arg-type]
    )
    await credentials.load()
    return config, credentials


async def test_enrollment_registers_wipes_the_token_and_refreshes(
    server: RunningServer, tmp_path: Path
) -> None:
    token = await enrollment_token(server, ENTITY, "gw-1")
    config_path = write_config(tmp_path, server, token)
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        config, credentials = await make_credentials(config_path, session, db)
        first = await credentials.token()
        assert credentials.initial_sync_required
        assert await db.get_state(STATE_REGISTERED) == "1"
        # The used token is gone from the file; everything else (comments too) is kept.
        text = config_path.read_text()
        assert "enrollment_token" not in text
        assert "# the mall's gateway" in text
        assert "[ble]" in text
        assert config_path.stat().st_mode & 0o777 == 0o600
        # A token is reused while valid; a refresh is a signed request, no enrollment needed.
        assert await credentials.token() == first
        refreshed = await credentials.refresh(first)
        assert refreshed != first
        # Another caller holding the stale token gets the refreshed one, not a second refresh.
        assert await credentials.refresh(first) == refreshed
        # The token works for an authenticated request.
        upstream = Upstream(session, config.server_url, ENTITY, "gw-1", credentials)
        async with upstream.request(
            "GET", "/api/orchestrators/sync/checksum", params={"entity_id": ENTITY}
        ) as response:
            assert response.status == 200
    # A restart reuses the stored token without asking the server.
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        _, again = await make_credentials(config_path, session, db)
        assert await again.token() == refreshed


async def test_a_used_or_unknown_enrollment_token_stops_loudly(
    server: RunningServer, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, server, "enr_not_a_real_token_123")
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        _, credentials = await make_credentials(config_path, session, db)
        with pytest.raises(UplinkRefusedError) as refused:
            await credentials.token()
        assert refused.value.code == "ENROLLMENT_TOKEN_INVALID"
        assert await db.get_state(STATE_REGISTERED) is None
        assert "enrollment_token" in config_path.read_text()  # nothing wiped on failure


async def test_without_a_token_the_gateway_waits_for_approval(
    server: RunningServer, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, server, None, gw="gw-pending")
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        _, credentials = await make_credentials(config_path, session, db)
        with pytest.raises(PendingApprovalError) as pending:
            await credentials.token()
        assert pending.value.retry_after >= 1
        async with server.admin() as admin:
            response = await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-pending/approve")
            assert response.status_code == 200, response.text
        assert await credentials.token()


async def test_a_disabled_gateway_is_refused_on_refresh(
    server: RunningServer, tmp_path: Path
) -> None:
    token = await enrollment_token(server, ENTITY, "gw-1")
    config_path = write_config(tmp_path, server, token)
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        _, credentials = await make_credentials(config_path, session, db)
        first = await credentials.token()
        async with server.admin() as admin:
            response = await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/disable")
            assert response.status_code == 200, response.text
        with pytest.raises(UplinkRefusedError) as refused:
            await credentials.refresh(first)
        assert refused.value.code == "ORCHESTRATOR_DISABLED"


async def test_a_replaced_key_is_a_key_mismatch(server: RunningServer, tmp_path: Path) -> None:
    token = await enrollment_token(server, ENTITY, "gw-1")
    config_path = write_config(tmp_path, server, token)
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        config, credentials = await make_credentials(config_path, session, db)
        await credentials.token()
    # The SD card was replaced: a new key and an empty database, same gateway id.
    config.identity_key_path.unlink()
    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw2.sqlite3") as db:
        _, fresh = await make_credentials(config_path, session, db)
        with pytest.raises(UplinkRefusedError) as refused:
            await fresh.token()
        assert refused.value.code == "AUTH_KEY_MISMATCH"


async def test_a_clock_far_off_is_corrected_from_the_server_date(
    server: RunningServer, tmp_path: Path
) -> None:
    token = await enrollment_token(server, ENTITY, "gw-1")
    config_path = write_config(tmp_path, server, token)

    def two_hours_slow() -> float:  # a Pi without a real-time clock, before NTP
        return time.time() - 7200

    async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.sqlite3") as db:
        _, credentials = await make_credentials(config_path, session, db, clock=two_hours_slow)
        assert await credentials.token()
