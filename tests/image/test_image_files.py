"""What the image is made of, checked without building it: its scripts are executable (their
shellcheck is in tests/test_shell_scripts.py), and the example configuration on the boot
partition is one the gateway accepts."""

from __future__ import annotations

from pathlib import Path

from navign_gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "image"
SCRIPTS = [
    IMAGE / "build",
    IMAGE / "install.sh",
    IMAGE / "hooks" / "essential.sh",
    IMAGE / "hooks" / "customize.sh",
    IMAGE / "files" / "usr" / "local" / "sbin" / "navign-firstboot",
    IMAGE / "files" / "usr" / "local" / "sbin" / "navign-growvar",
]


def test_the_example_configuration_is_valid() -> None:
    config = load_config(IMAGE / "boot" / "navign" / "gateway.toml.example", env={})
    assert config.orchestrator_id == "gw-riverside-1"


def test_the_python_script_compiles() -> None:
    source = (IMAGE / "files" / "usr" / "local" / "sbin" / "navign-growvar").read_text()
    compile(source, "navign-growvar", "exec")


def test_the_scripts_are_executable() -> None:
    for script in SCRIPTS:
        assert script.stat().st_mode & 0o111, script
