from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from navign_server.settings import ServerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NAVIGN_SERVER_"):
            monkeypatch.delenv(name)


def test_defaults_are_valid_and_sqlite() -> None:
    settings = ServerSettings()
    assert settings.environment == "production"
    assert settings.sqlite_path is not None
    assert settings.token_ttl_seconds == 3600


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAVIGN_SERVER_PORT", "9000")
    monkeypatch.setenv("NAVIGN_SERVER_DATABASE_URL", "mongodb://db.internal:27017/navign")
    settings = ServerSettings()
    assert settings.port == 9000
    assert settings.sqlite_path is None


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NAVIGN_SERVER_DATABASE_URL": "postgres://x/y"}, "sqlite:///, mongodb://"),
        ({"NAVIGN_SERVER_PUBLIC_URL": "http://navign.example.com"}, "https in production"),
        (
            {"NAVIGN_SERVER_DATABASE_URL": "mongodb://navign:changeme@db:27017/navign"},
            "placeholder password",
        ),
        ({"NAVIGN_SERVER_TOKEN_TTL_SECONDS": "604800"}, "less than or equal"),
        ({"NAVIGN_SERVER_PORT": "http"}, "valid integer"),
    ],
)
def test_invalid_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=fragment):
        ServerSettings()


def test_development_allows_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAVIGN_SERVER_ENVIRONMENT", "development")
    monkeypatch.setenv("NAVIGN_SERVER_PUBLIC_URL", "http://navign.lab:8000")
    assert ServerSettings().public_url == "http://navign.lab:8000"


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_SERVER_")}
    return subprocess.run(
        [sys.executable, "-m", "navign_server.cli", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **env},
    )


def test_cli_config_hides_passwords() -> None:
    result = run_cli({"NAVIGN_SERVER_DATABASE_URL": "mongodb://navign:s3cr3t-Pw@db:27017/navign"})
    assert result.returncode == 0, result.stderr
    assert "s3cr3t" not in result.stdout
    assert "mongodb://navign:***@db:27017/navign" in result.stdout


def test_cli_invalid_setting_one_line_exit_2() -> None:
    result = run_cli({"NAVIGN_SERVER_PORT": "0"})
    assert result.returncode == 2
    assert result.stderr.startswith("navign-server: invalid NAVIGN_SERVER_PORT:")
    assert result.stderr.count("\n") == 1
