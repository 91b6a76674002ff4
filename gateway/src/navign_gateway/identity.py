"""The gateway's own P-256 identity key, generated on first start and never replaced silently."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.errors import KeyFormatError


class IdentityError(Exception):
    """The identity key cannot be created or used."""


@dataclass(frozen=True, slots=True)
class Identity:
    path: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def public_pem(self) -> str:
        return keys.public_key_to_pem(self.key.public_key())

    @property
    def key_id(self) -> str:
        return keys.key_id(self.key.public_key())

    @property
    def fingerprint(self) -> str:
        return keys.fingerprint(self.key.public_key())


def load_identity(path: Path) -> Identity:
    """Load the key; refuse one that other users can read."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no identity key; run `navign-gateway keygen`") from None
    except OSError as exc:
        raise IdentityError(f"{path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise IdentityError(f"{path}: mode {mode:04o} lets others read the key; chmod 600 it")
    try:
        return Identity(path, keys.load_private_key_pem(data))
    except KeyFormatError as exc:
        raise IdentityError(f"{path}: {exc}") from None


def create_identity(path: Path) -> Identity:
    """Generate a new key at ``path`` (mode 0600); refuse to replace an existing one."""
    key = keys.generate_private_key()
    try:
        keys.write_private_key(path, key)
    except FileExistsError:
        raise IdentityError(
            f"{path}: an identity key already exists; the server pins it, so it is never replaced"
        ) from None
    except OSError as exc:
        raise IdentityError(f"{path}: {exc.strerror or exc}") from None
    return Identity(path, key)


def ensure_identity(path: Path) -> Identity:
    """The existing key, or a new one on first start."""
    if path.exists():
        return load_identity(path)
    return create_identity(path)
