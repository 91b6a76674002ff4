"""The build: the app compiled with mpy-cross per chip, the file list, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from navign_firmware import cli, unix


@pytest.mark.parametrize("target", ["esp32", "esp32c3", "esp32s3"])
def test_build_writes_the_app_and_a_true_file_list(tmp_path: Path, target: str) -> None:
    assert (
        cli.main(["build", "--target", target, "--version", "1.4.0", "--out", str(tmp_path)]) == 0
    )
    root = tmp_path / target
    listing = json.loads((root / "files.json").read_text())
    paths = {entry["path"] for entry in listing}
    assert {"boot.py", "main.py", "app/navign/__init__.mpy", "app/navign/app.mpy"} <= paths
    assert not any(p.endswith(".py") and p.startswith("app/") for p in paths)
    for entry in listing:
        data = (root / entry["path"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    header = (root / "app/navign/app.mpy").read_bytes()[:2]
    assert header == b"M\x06"  # .mpy version 6, what MicroPython 1.2x loads


def test_the_built_app_runs_on_micropython_with_its_version(tmp_path: Path) -> None:
    assert cli.main(["build", "--version", "2.3.4", "--out", str(tmp_path)]) == 0
    app = tmp_path / "esp32" / "app"
    out = unix.run("import navign, navign.ota; print(navign.APP_VERSION)", path=(app, unix.HOST))
    assert out.stdout.strip() == "2.3.4"


@pytest.mark.parametrize(
    "argv",
    [["build", "--version", "1.2"], ["build", "--version", "1.2.3+build.5"]],
)
def test_a_bad_version_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("navign-firmware: --version:")
    assert err.count("\n") == 1
    assert not (tmp_path / "esp32").exists()


def test_an_unknown_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["build", "--target", "esp8266", "--out", str(tmp_path)])
    assert exit_.value.code == 2
