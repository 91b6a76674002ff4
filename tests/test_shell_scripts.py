"""Every shell script of the repository passes shellcheck: what users run (`flash.sh`, `.ci/run`,
the demo, `image/build`), and what runs inside the image or under pi-gen."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "image" / "pi-gen" / "stage-navign"
SCRIPTS = [
    ROOT / "flash.sh",
    ROOT / ".ci" / "run",
    ROOT / "demo" / "run.sh",
    ROOT / "image" / "build",
    ROOT / "image" / "install.sh",
    *sorted((ROOT / "image" / "hooks").glob("*.sh")),
    ROOT / "image" / "files" / "usr" / "local" / "sbin" / "navign-firstboot",
    STAGE / "prerun.sh",
    *sorted(STAGE.glob("[0-9][0-9]-*/[0-9][0-9]-run.sh")),
    # No shebang: pi-gen's build.sh (bash) sources it.
    STAGE / "EXPORT_IMAGE",
]


@pytest.mark.requires("cmd:shellcheck")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_finds_nothing(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
