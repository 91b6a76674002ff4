"""The shell scripts a user runs (`flash.sh`, `.ci/run`, the demo) pass shellcheck."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "flash.sh", ROOT / ".ci" / "run", ROOT / "demo" / "run.sh"]


@pytest.mark.requires("cmd:shellcheck")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
