"""What ``flash.sh sd`` puts into the FAT partition of a gateway card, and putting it there.

:func:`validate_gateway_config` checks ``gateway.toml`` with the gateway's own model;
:func:`card_files` gathers it (as ``navign/gateway.toml``) with ``navign/wifi.conf``, ``ssh``,
``navign/authorized_keys`` and ``navign/tls/`` (the gRPC port's certificate) when asked.
:func:`provision` copies them into partition 1 with mtools (the partition is never mounted) and
reads them back.

Public: :class:`CardFile`, :func:`validate_gateway_config`, :func:`card_files`,
:func:`provision`, and the constants :data:`PROVISION_DIR` and :data:`MTOOLS`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from navign_firmware.flashing import sdimage

MAX_INPUT: Final = 64 * 1024
PROVISION_DIR: Final = "navign"
MTOOLS: Final = ("mdir", "mmd", "mcopy", "mtype")
MTOOLS_TIMEOUT: Final = 60.0
SSH_KEY_TYPES: Final = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")
TLS_KEYS: Final = ("tls_cert", "tls_key", "tls_client_ca")
_INLINE_KEY = re.compile(r"[0-9a-fA-F]{130}")


@dataclass(frozen=True, slots=True)
class CardFile:
    """A file for the FAT partition: its path there and its bytes."""

    name: str
    data: bytes


def _read_input(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_INPUT + 1)
    except OSError as exc:
        raise sdimage.InputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT:
        raise sdimage.InputError(f"{path}: the {what} is larger than {MAX_INPUT // 1024} KiB")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise sdimage.InputError(f"{path}: the {what} is not UTF-8 text") from None
    return data


def _without_gateway_paths(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``data`` with the paths that name files on the gateway (``ca_bundle``, release keys given
    as files) replaced by host-independent stand-ins: this host cannot check the gateway's disk."""
    probe = dict(data)
    notes: list[str] = []
    if isinstance(probe.get("ca_bundle"), str) and probe["ca_bundle"]:
        notes.append(f"ca_bundle {probe['ca_bundle']} (on the gateway) not checked here")
        probe["ca_bundle"] = None
    grpc = probe.get("grpc")
    if isinstance(grpc, dict):
        named = [k for k in TLS_KEYS if isinstance(grpc.get(k), str) and grpc[k]]
        if named:
            listed = ", ".join(f"{k} {grpc[k]}" for k in named)
            notes.append(f"grpc {listed} (on the gateway) not checked here")
            probe["grpc"] = {k: v for k, v in grpc.items() if k not in named}
    firmware = probe.get("firmware")
    keys = firmware.get("release_public_keys") if isinstance(firmware, dict) else None
    if isinstance(firmware, dict) and isinstance(keys, list):
        files = [k for k in keys if isinstance(k, str) and not _inline_key(k)]
        if files:
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            point = ec.generate_private_key(ec.SECP256R1()).public_key()
            stand_in = point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint).hex()
            notes.append(f"release key files {', '.join(files)} (on the gateway) not checked here")
            swapped = [stand_in if k in files else k for k in keys]
            probe["firmware"] = {**firmware, "release_public_keys": swapped}
    return probe, notes


def _inline_key(value: str) -> bool:
    text = value.strip()
    return text.startswith("-----BEGIN") or bool(_INLINE_KEY.fullmatch(text))


def validate_gateway_config(path: Path) -> tuple[bytes, str]:
    """The bytes of ``gateway.toml`` and a one-line summary, after validating them with the
    gateway's own model (no environment overrides: the file is what the gateway gets). Raises
    :class:`sdimage.InputError` with the gateway's message."""
    import tomllib

    from pydantic import ValidationError

    try:
        from navign_gateway.config import GatewayConfig
    except ImportError:
        raise sdimage.InputError("navign-gateway is not installed here: run make env") from None
    data = _read_input(path, "gateway config")
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise sdimage.InputError(f"{path}: not valid TOML: {exc}") from None
    probe, notes = _without_gateway_paths(parsed)
    try:
        config = GatewayConfig.model_validate(probe)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "config"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown key"
        raise sdimage.InputError(f"{path}: {where}: {message}; nothing written") from None
    summary = (
        f"valid (entity {config.entity_id}, orchestrator {config.orchestrator_id}, "
        f"server {config.server_url}"
        + (", with an enrollment token" if config.enrollment_token else "")
        + "".join(f"; {note}" for note in notes)
        + ")"
    )
    return data, summary


def _authorized_keys(path: Path) -> bytes:
    data = _read_input(path, "SSH authorized keys")
    lines = [ln.strip() for ln in data.decode().splitlines() if ln.strip()]
    keys = [ln for ln in lines if not ln.startswith("#")]
    for number, line in enumerate(keys, 1):
        if not any(word.startswith(SSH_KEY_TYPES) for word in line.split()):
            raise sdimage.InputError(f"{path}: key {number} is not an OpenSSH public key line")
    if not keys:
        raise sdimage.InputError(f"{path}: holds no SSH public key")
    return data


def _grpc_tls(directory: Path) -> list[CardFile]:
    """``grpc.crt``, ``grpc.key`` and ``clients.pem`` (optional) from ``directory`` (the gateway's
    TLS folder layout), checked as the gateway will load them (the key matches, the CA bundle
    parses)."""
    try:
        from navign_gateway.grpc_tls import FOLDER_FILES, TlsError, TlsFiles, build_context
    except ImportError:
        raise sdimage.InputError("navign-gateway is not installed here: run make env") from None
    cert, key, clients = (directory / name for name in FOLDER_FILES)
    for needed in (cert, key):
        if not needed.is_file():
            raise sdimage.InputError(
                f"{needed}: no such file (--grpc-tls needs grpc.crt and grpc.key)"
            )
    files = TlsFiles(cert, key, clients if clients.is_file() else None)
    data = [_read_input(path, "TLS file") for path in files.paths()]
    try:
        build_context(files)
    except TlsError as exc:
        raise sdimage.InputError(f"--grpc-tls: {exc}; nothing written") from None
    return [
        CardFile(f"{PROVISION_DIR}/tls/{p.name}", d)
        for p, d in zip(files.paths(), data, strict=True)
    ]


def card_files(args: argparse.Namespace, config: bytes) -> tuple[CardFile, ...]:
    """What goes onto the card: ``config`` (a validated gateway.toml), and the ``--wifi``,
    ``--ssh-authorized-keys`` and ``--grpc-tls`` files of ``args`` when given. Raises
    :class:`sdimage.InputError`."""
    files = [CardFile(f"{PROVISION_DIR}/gateway.toml", config)]
    if args.wifi is not None:
        wifi = _read_input(Path(args.wifi), "Wi-Fi file")
        if not wifi.strip():
            raise sdimage.InputError(f"{args.wifi}: the Wi-Fi file is empty")
        files.append(CardFile(f"{PROVISION_DIR}/wifi.conf", wifi))
    if args.ssh_authorized_keys is not None:
        keys = _authorized_keys(Path(args.ssh_authorized_keys))
        files += [CardFile("ssh", b""), CardFile(f"{PROVISION_DIR}/authorized_keys", keys)]
    if getattr(args, "grpc_tls", None) is not None:
        files += _grpc_tls(Path(args.grpc_tls))
    return tuple(files)


def _mtools(argv: Sequence[str], env: dict[str, str]) -> bytes:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, env=env, timeout=MTOOLS_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise sdimage.ProvisionError(f"`{argv[0]}` is not installed (apt install mtools)") from None
    except subprocess.TimeoutExpired:
        raise sdimage.ProvisionError(
            f"`{argv[0]}` did not finish in {MTOOLS_TIMEOUT:.0f} s"
        ) from None
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise sdimage.ProvisionError(f"`{' '.join(argv)}` failed: {lines[-1]}")
    return result.stdout


def provision(
    device: str, boot: sdimage.MbrPartition, files: Sequence[CardFile], sync: Callable[[], None]
) -> None:
    """Copy ``files`` into the FAT partition with mtools (never mounted), ``sync()`` the device
    (what mtools wrote reaches the card, and reading back reads the card), then read them back."""
    with tempfile.TemporaryDirectory(prefix="navign-sd-") as tmp:
        home = Path(tmp)
        rc = home / "mtoolsrc"
        rc.write_bytes(b"")
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": tmp,  # no ~/.mtoolsrc
            "MTOOLSRC": str(rc),
            "MTOOLS_SKIP_CHECK": "1",
            "MTOOLS_LOWER_CASE": "0",
            "MTOOLS_NO_VFAT": "0",
            "LC_ALL": "C",
        }
        target = f"{device}@@{boot.start}"
        listing = _mtools(["mdir", "-b", "-i", target, "::/"], env).decode(errors="replace")
        entries = {line.strip().lower() for line in listing.splitlines()}
        if f"::/{PROVISION_DIR}/" not in entries:
            if f"::/{PROVISION_DIR}" in entries:
                raise sdimage.ProvisionError(
                    f"{device}: a file named {PROVISION_DIR} is in the way"
                )
            _mtools(["mmd", "-D", "s", "-i", target, f"::/{PROVISION_DIR}"], env)
        subdirs = sorted({str(Path(f.name).parent) for f in files} - {".", PROVISION_DIR})
        if subdirs:
            names = _mtools(["mdir", "-b", "-i", target, f"::/{PROVISION_DIR}/"], env)
            inside = {line.strip().lower() for line in names.decode(errors="replace").splitlines()}
            for subdir in subdirs:  # navign/tls
                if f"::/{subdir}/" in inside:
                    continue
                if f"::/{subdir}" in inside:
                    raise sdimage.ProvisionError(f"{device}: a file named {subdir} is in the way")
                _mtools(["mmd", "-D", "s", "-i", target, f"::/{subdir}"], env)
        for number, file in enumerate(files):
            host = home / f"file{number}"
            host.write_bytes(file.data)
            _mtools(["mcopy", "-o", "-D", "o", "-i", target, str(host), f"::/{file.name}"], env)
        sync()
        for file in files:
            if _mtools(["mtype", "-i", target, f"::/{file.name}"], env) != file.data:
                raise sdimage.ProvisionError(f"{device}: {file.name} reads back differently")
