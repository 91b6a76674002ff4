"""``navign.selftest`` on the real MicroPython interpreter (what ``flash.sh bench`` runs on a
board): a good config passes every check, a broken one fails ``config``, and a verifier that
accepts everything fails ``signature``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from navign_firmware import unix

from .conftest import beacon_config


def _selftest(tmp_path: Path, config: bytes, prelude: str = "") -> dict[str, Any]:
    path = tmp_path / "config.json"
    path.write_bytes(config)
    code = f"{prelude}\nimport navign.selftest as t\nt.run({str(path)!r})\n"
    out = unix.run(code, path=(unix.SRC,), heapsize="96K").stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_a_good_config_passes_every_check(tmp_path: Path) -> None:
    config = json.dumps(beacon_config()).encode()
    report = _selftest(tmp_path, config)
    assert report["checks"] == {"config": True, "adv": True, "signature": True}
    assert report["config_sha256"] == hashlib.sha256(config).hexdigest()
    assert report["config_errors"] == []
    assert report["beacon_id"] == beacon_config()["beacon_id"]
    assert report["app_version"]
    assert report["micropython"].count(".") == 2
    # Every module the test loaded is unloaded again before the heap is measured.
    assert 48 * 1024 < report["free_heap"] < 96 * 1024


def test_a_broken_config_fails_the_config_check_and_says_why(tmp_path: Path) -> None:
    report = _selftest(tmp_path, json.dumps(beacon_config(major="7")).encode())
    assert report["checks"]["config"] is False
    assert "major: wrong_type" in report["config_errors"]
    # The beacon still advertises (with the default major), so the frame check still holds.
    assert report["checks"]["adv"] is True


def test_a_verifier_that_accepts_everything_fails_the_signature_check(tmp_path: Path) -> None:
    prelude = "from navign import p256\np256.verify = lambda *a: True"
    report = _selftest(tmp_path, json.dumps(beacon_config()).encode(), prelude)
    assert report["checks"]["signature"] is False


def test_files_lists_every_file_with_its_size_and_hash(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_bytes(b"abc")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(bytes(1000))
    code = f"import navign.selftest as t\nt.files({str(tmp_path / 'd')!r})\n"
    lines = unix.run(code, path=(unix.SRC,)).stdout.strip().splitlines()
    root = str(tmp_path / "d")
    assert sorted(map(json.loads, lines), key=lambda d: d["file"]) == [
        {"file": root + "/a.txt", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()},
        {
            "file": root + "/sub/b.bin",
            "size": 1000,
            "sha256": hashlib.sha256(bytes(1000)).hexdigest(),
        },
    ]
