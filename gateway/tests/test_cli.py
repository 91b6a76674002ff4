"""The navign-gateway command, run as a real process."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

CONFIG = """
server_url = "https://navign.example.com"
entity_id = "mall-demo"
orchestrator_id = "gw-1"
enrollment_token = "enr_0123456789"
data_dir = "{data_dir}"
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "navign_gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_check_config_keygen_show_key(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "state"))

    result = run("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    assert "gateway gw-1 of entity mall-demo" in result.stdout

    result = run("--config", str(config), "keygen")
    assert result.returncode == 0, result.stderr
    key = tmp_path / "state" / "identity.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    original = key.read_bytes()

    result = run("--config", str(config), "keygen")
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert key.read_bytes() == original

    result = run("--config", str(config), "show-key")
    assert result.returncode == 0, result.stderr
    assert "-----BEGIN PUBLIC KEY-----" in result.stdout
    assert "fingerprint SHA256:" in result.stdout


def test_invalid_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('server_url = "https://x.example"\nentity_id = "m"\n')
    result = run("--config", str(config), "check-config")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "orchestrator_id: required key is missing" in result.stderr


def test_show_key_refuses_world_readable_key(tmp_path: Path) -> None:
    key = tmp_path / "identity.pem"
    assert run("keygen", "--key", str(key)).returncode == 0
    key.chmod(0o644)
    result = run("show-key", "--key", str(key))
    assert result.returncode == 1
    assert "chmod 600" in result.stderr
