"""Per-beacon configuration from a template, checked by the firmware's own validator, and the
record of each flashed beacon.

A template is a beacon ``config.json`` (docs/protocol.md §8.6) for one batch of boards. Its
``beacon_id`` may name ``{mac}`` (the board's MAC, 12 hex digits), ``{mac_suffix}`` (the last 6),
``{index}`` (the board's position on the command line, from 0), ``{major}`` and ``{minor}``
(Python format specs allowed: ``riverside-{minor:04d}``). ``--minor-start N`` gives board *i*
minor N + *i*; ``--major`` and ``--entity-uuid`` override the template's. Release public keys
(PEM files) are added to ``release_keys``. Two boards of one batch never get the same id or the
same major/minor.

The configs are checked by ``navign.config`` itself, on the MicroPython unix port, before any
board is touched: a field that would fall back to its default is an error here.

Public: :class:`ProvisionError`, :class:`BeaconIdentity`, :class:`Template`,
:func:`load_template`, :func:`public_key_hex`, :func:`validate`, :func:`record_csv`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import string
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from navign_firmware import unix

PLACEHOLDERS: Final = ("mac", "mac_suffix", "index", "major", "minor")
#: The most boards one command flashes (a USB hub's worth, twice).
MAX_BOARDS: Final = 32
IBEACON_MAX: Final = 0xFFFF
CSV_FIELDS: Final = (
    "time",
    "port",
    "chip",
    "mac",
    "beacon_id",
    "entity_uuid",
    "major",
    "minor",
    "app_version",
    "config_sha256",
    "result",
)


class ProvisionError(ValueError):
    """A template, key or generated config is not usable (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class BeaconIdentity:
    index: int
    beacon_id: str
    major: int
    minor: int
    entity_uuid: str
    config: bytes

    @property
    def config_sha256(self) -> str:
        return hashlib.sha256(self.config).hexdigest()


def public_key_hex(path: Path) -> str:
    """A release public key (PEM, P-256) as the config's 65-byte uncompressed point in hex."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"release key {path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ProvisionError(f"release key {path}: not a P-256 public key")
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return raw.hex()


def _fields(text: str) -> set[str]:
    out: set[str] = set()
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None:
            out.add(name)
    return out


@dataclass(frozen=True, slots=True)
class Template:
    doc: dict[str, Any]
    chip: str
    minor_start: int | None = None
    major: int | None = None
    entity_uuid: str | None = None
    release_keys: tuple[str, ...] = field(default_factory=tuple)

    def check_batch(self, count: int) -> None:
        """Refuse a batch whose boards would share an identity."""
        if count > MAX_BOARDS:
            raise ProvisionError(f"at most {MAX_BOARDS} boards at once (got {count})")
        beacon_id = str(self.doc.get("beacon_id", ""))
        if count > 1 and self.minor_start is None:
            raise ProvisionError(
                f"{count} boards would share major/minor: give --minor-start N "
                "(board i gets minor N+i)"
            )
        if count > 1 and not _fields(beacon_id) & {"mac", "mac_suffix", "index", "minor"}:
            raise ProvisionError(
                f"{count} boards would share beacon_id {beacon_id!r}: put {{mac}}, {{index}} "
                "or {minor} in the template's beacon_id"
            )
        if self.minor_start is not None and self.minor_start + count - 1 > IBEACON_MAX:
            raise ProvisionError(f"--minor-start {self.minor_start} + {count} boards > 65535")

    def render(self, index: int, mac: bytes) -> BeaconIdentity:
        """The config of board ``index`` whose MAC is ``mac`` (6 bytes)."""
        doc = json.loads(json.dumps(self.doc))
        doc["chip"] = self.chip
        if self.major is not None:
            doc["major"] = self.major
        if self.minor_start is not None:
            doc["minor"] = self.minor_start + index
        if self.entity_uuid is not None:
            doc["entity_uuid"] = self.entity_uuid
        if self.release_keys:
            keys = [k for k in doc.get("release_keys") or [] if isinstance(k, str)]
            doc["release_keys"] = keys + [k for k in self.release_keys if k not in keys]
        values = {
            "mac": mac.hex(),
            "mac_suffix": mac.hex()[-6:],
            "index": index,
            "major": doc.get("major"),
            "minor": doc.get("minor"),
        }
        template_id = doc.get("beacon_id")
        if isinstance(template_id, str):
            try:
                doc["beacon_id"] = template_id.format(**values)
            except (KeyError, IndexError, ValueError) as exc:
                raise ProvisionError(
                    f"beacon_id {template_id!r}: bad placeholder ({exc}); "
                    f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                ) from None
        config = (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode()
        return BeaconIdentity(
            index=index,
            beacon_id=str(doc.get("beacon_id")),
            major=int(doc.get("major", 0)) if isinstance(doc.get("major"), int) else 0,
            minor=int(doc.get("minor", 0)) if isinstance(doc.get("minor"), int) else 0,
            entity_uuid=str(doc.get("entity_uuid")),
            config=config,
        )


def load_template(
    path: Path,
    *,
    chip: str,
    minor_start: int | None = None,
    major: int | None = None,
    entity_uuid: str | None = None,
    release_keys: Sequence[Path] = (),
) -> Template:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProvisionError(f"config {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProvisionError(f"config {path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ProvisionError(f"config {path}: must be a JSON object")
    template_chip = doc.get("chip")
    if template_chip is not None and template_chip != chip:
        raise ProvisionError(f"config {path} is for chip {template_chip!r}, not --chip {chip}")
    for name in ("major", "minor_start"):
        value = major if name == "major" else minor_start
        if value is not None and not 0 <= value <= IBEACON_MAX:
            raise ProvisionError(f"--{name.replace('_', '-')} {value} is not in 0..65535")
    keys = tuple(public_key_hex(p) for p in release_keys)
    return Template(doc, chip, minor_start, major, entity_uuid, keys)


_VALIDATE = """
import json
from navign import config
for p in {paths!r}:
    c = config.load(p, b"\\x00\\x00\\x00\\x00\\x00\\x00")
    print(json.dumps([e[0] + ": " + e[1] for e in c.errors]))
"""


def validate(configs: Sequence[bytes]) -> list[list[str]]:
    """The firmware's own verdict on each config: a list of ``field: reason`` per config (empty
    when every field is accepted as given)."""
    if not configs:
        return []
    with tempfile.TemporaryDirectory(prefix="navign-config-") as tmp:
        paths = []
        for i, data in enumerate(configs):
            p = Path(tmp) / f"{i}.json"
            p.write_bytes(data)
            paths.append(str(p))
        try:
            proc = unix.run(_VALIDATE.format(paths=paths), path=(unix.SRC,), timeout=60)
        except (unix.MicroPythonError, OSError) as exc:
            raise ProvisionError(f"could not run the firmware's config validator: {exc}") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    if len(lines) != len(configs):
        raise ProvisionError("the firmware's config validator gave no verdict")
    return [list(json.loads(line)) for line in lines]


def record_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    """Append ``rows`` (keys :data:`CSV_FIELDS`) to a CSV file, writing the header first when
    the file is new; one write and fsync, so a crash never leaves half a row."""
    new = not path.exists() or path.stat().st_size == 0
    with tempfile.SpooledTemporaryFile(mode="w+", newline="") as buf:
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for row in rows:
            writer.writerow({"time": now, **row})
        buf.seek(0)
        text = buf.read()
    with path.open("a", newline="") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
