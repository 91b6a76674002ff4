"""The gateway appliance image (image/build), built once per source state and booted in QEMU.

Building needs root, mmdebstrap, qemu-user-static, genimage and mtools; booting needs
qemu-system-aarch64. The image is reused while nothing it is built from changed: a stamp next to
it holds a hash of the build's inputs (image/, gateway/, proto/ and the lock), so CI's second
pass and a developer's reruns do not build again.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "image"
OUT = IMAGE_DIR / "out"
#: A cold build (every package configured under emulation) takes about 15 minutes here.
BUILD_TIMEOUT = 45 * 60
NEEDS = (
    "root",
    "cmd:mmdebstrap",
    "cmd:genimage",
    "cmd:mcopy",
    "cmd:mkfs.vfat",
    "cmd:qemu-aarch64-static",
    "cmd:qemu-system-aarch64",
    "cmd:ssh",
    "cmd:debugfs",
    "cmd:journalctl",
)


def _inputs_hash() -> str:
    """A hash of everything the image is built from, committed or not."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", "image", "gateway", "proto",
         "uv.lock", "pyproject.toml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    digest = hashlib.sha256()
    for name in sorted(listed):
        path = ROOT / name
        if path.is_file() and "/tests/" not in name and not name.startswith("image/pi-gen/"):
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version() -> str:
    for line in (ROOT / "gateway" / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in gateway/pyproject.toml")


@pytest.fixture(scope="session")
def built_image() -> Path:
    """The raw .img of this source state (built now unless the stamp says it already is)."""
    image = OUT / f"navign-gateway-{_version()}-arm64.img"
    stamp = image.with_suffix(".inputs")
    wanted = _inputs_hash()
    if not (image.exists() and stamp.exists() and stamp.read_text() == wanted):
        env = dict(os.environ)
        log = OUT.parent / "work" / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            done = subprocess.run(
                [str(IMAGE_DIR / "build"), "--no-compress"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"image/build failed:\n{log.read_text()[-4000:]}")
        stamp.write_text(wanted)
    return image
