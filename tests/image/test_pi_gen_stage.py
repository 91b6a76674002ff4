"""The pi-gen stage (``image/pi-gen/stage-navign``) has the layout pi-gen runs (its scripts'
shellcheck is in tests/test_shell_scripts.py), and it installs the gateway the way
``image/build`` does: through ``image/install.sh``. It cannot be built here (no access to the
Raspberry Pi archive): this is all that is checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "image"
STAGE = IMAGE / "pi-gen" / "stage-navign"
INSTALL_STEP = STAGE / "01-navign" / "00-run.sh"
#: What pi-gen executes: prerun.sh and every sub-step's NN-run.sh (only when executable).
SCRIPTS = [STAGE / "prerun.sh", *sorted(STAGE.glob("[0-9][0-9]-*/[0-9][0-9]-run.sh"))]
#: The files pi-gen acts on inside a sub-step (its build.sh, run_sub_stage).
SUB_STEP_FILE = re.compile(r"\d\d-(packages|packages-nr|debconf|run\.sh|run-chroot\.sh)")


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _executable(path: Path) -> bool:
    # The mode bits, not os.access: as root (CI) os.access says yes to any file.
    return path.stat().st_mode & 0o111 == 0o111


def _sub_steps() -> list[Path]:
    return sorted(p for p in STAGE.iterdir() if p.is_dir())


def test_sub_steps_are_numbered_as_pi_gen_expects() -> None:
    names = [p.name for p in _sub_steps()]
    assert names, "the stage has no sub-steps"
    for name in names:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+", name), name
    for path in STAGE.rglob("*"):
        if path.is_file() and path.parent != STAGE:
            assert SUB_STEP_FILE.fullmatch(path.name), f"pi-gen ignores {path.relative_to(STAGE)}"


def test_prerun_copies_the_previous_stage() -> None:
    prerun = STAGE / "prerun.sh"
    assert _executable(prerun), "pi-gen runs prerun.sh only when it is executable"
    assert "copy_previous" in prerun.read_text()


@pytest.mark.parametrize("script", SCRIPTS[1:], ids=_id)
def test_run_scripts_are_executable(script: Path) -> None:
    assert _executable(script), "pi-gen runs NN-run.sh only when it is executable"


def test_the_stage_exports_an_image() -> None:
    export = STAGE / "EXPORT_IMAGE"
    assert export.is_file()
    assert re.search(r'^IMG_SUFFIX="[^"]+"$', export.read_text(), re.MULTILINE)


def test_the_packages_install_sh_relies_on_are_listed() -> None:
    listed: set[str] = set()
    for line in (STAGE / "00-packages" / "00-packages").read_text().splitlines():
        listed.update(line.split("#", 1)[0].split())
    # Units install.sh enables, the bluetooth group, the venv, SSH and Wi-Fi of image/files.
    needed = {"python3", "python3-venv", "bluez", "systemd-resolved", "systemd-timesyncd"}
    needed |= {"openssh-server", "wpasupplicant"}
    assert needed <= listed, sorted(needed - listed)


def test_the_install_step_calls_install_sh_on_the_stage_root() -> None:
    text = INSTALL_STEP.read_text()
    assert re.search(r'"\$repo/image/install\.sh" "\$root" "\$repo"', text), text
    assert re.search(r'^root="\$\{ROOTFS_DIR:\?', text, re.MULTILINE)


@pytest.mark.parametrize(
    "fragment",
    [
        "--without-pip /opt/navign/venv",
        "--package navign-gateway --no-dev",
        "--no-emit-workspace --no-hashes --format requirements-txt",
        "--python-platform aarch64-manylinux_2_28",
        "--only-binary :all: --no-compile",
        'rm -rf "${site:?}/bin"',
    ],
)
def test_the_install_step_installs_the_wheels_as_image_build_does(fragment: str) -> None:
    def squash(path: Path) -> str:
        return " ".join(path.read_text().replace("\\\n", " ").split())

    assert fragment in squash(IMAGE / "build"), f"image/build no longer has {fragment!r}"
    assert fragment in squash(INSTALL_STEP)
