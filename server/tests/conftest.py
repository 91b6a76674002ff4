"""Server test fixtures; the helpers live in navign_server.testing (shared with gateway tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from navign_server.testing import (
    EXAMPLE_MALL,
    STARTUP_TIMEOUT,
    RunningServer,
    TestGateway,
    enrolled_gateway,
    enrollment_token,
    import_sample_mall,
    run_server,
    sample_mall,
    server_settings,
)

__all__ = [
    "EXAMPLE_MALL",
    "STARTUP_TIMEOUT",
    "RunningServer",
    "TestGateway",
    "enrolled_gateway",
    "enrollment_token",
    "import_sample_mall",
    "run_server",
    "sample_mall",
    "server_settings",
]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with run_server(server_settings(tmp_path), tmp_path) as running:
        yield running
