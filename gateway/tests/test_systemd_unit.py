"""The shipped unit file: systemd's own verifier accepts it, and it keeps the properties the
appliance relies on (notify + watchdog, restart, a dedicated user, a read-only system)."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "navign-gateway.service"


def parse() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_has_what_the_appliance_needs() -> None:
    service = parse()["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "always"
    assert service["User"] == "navign"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert "/var/lib/navign" in service["ReadWritePaths"]
    assert service["ExecStart"].endswith(" run")


@pytest.mark.requires("cmd:systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The same unit with the binary pointed at one that exists on this machine.
    unit = tmp_path / "navign-gateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/navign/venv/bin/navign-gateway", "/bin/true"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "navign-gateway.service" in line
    ]
    assert done.returncode == 0, done.stdout + done.stderr
    assert problems == []
