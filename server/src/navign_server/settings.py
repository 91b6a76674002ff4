"""Server settings: environment variables ``NAVIGN_SERVER_*``, validated once in ``main()``."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from navign_proto import keys
from navign_proto.errors import KeyFormatError


def _load_release_key(entry: str) -> ec.EllipticCurvePublicKey:
    """A release public key from PEM text, a 130-hex point, or the path of a PEM file."""
    text = entry.strip()
    if text.startswith("-----BEGIN") or re.fullmatch(r"[0-9a-fA-F]{130}", text):
        return keys.load_public_key(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise KeyFormatError(
            f"{text[:80]!r} is neither a PEM public key, a 130-hex P-256 point, nor a file"
        )
    return keys.load_public_key(path.read_bytes())


_PLACEHOLDERS = ("changeme", "change-me", "password", "example", "secret", "xxx")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    """Everything the server reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="NAVIGN_SERVER_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "production"] = "production"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: The URL gateways use to reach this server; sync_endpoints in RegisterResponse derive from it.
    public_url: str = "http://127.0.0.1:8000"
    #: ``sqlite:///<path>`` (embedded default; relative to the working directory) or
    #: ``mongodb://...`` / ``mongodb+srv://...``.
    database_url: str = "sqlite:///data/navign.db"
    #: Firmware blobs in SQLite mode.
    data_dir: Path = Path("data")
    #: The ``iss`` of access tokens.
    token_issuer: str = "navign-server"  # noqa: S105 - an issuer name, not a secret
    signing_key_rotation_days: int = Field(30, ge=1, le=365)
    #: Bulk imports of a whole mall may be larger than ordinary requests.
    max_import_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    #: Origins allowed by CORS; none by default (the admin API is for tools, not browsers).
    cors_origins: list[str] = Field(default_factory=list)
    token_ttl_seconds: int = Field(3600, ge=60, le=86_400)
    enrollment_token_max_ttl_seconds: int = Field(86_400, ge=60, le=86_400)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    sse_ping_seconds: float = Field(15.0, gt=0, le=300)
    #: Events and change-log rows older than this are pruned (checked hourly).
    event_retention_days: int = Field(7, ge=1, le=365)
    signature_max_skew_seconds: int = Field(300, ge=30, le=900)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Release public keys whose signatures make an uploaded firmware release acceptable: each a
    #: PEM string, the path of a PEM file, or the 130-hex uncompressed point. Loaded and checked
    #: at start; held as PEM. None configured: every release upload is refused.
    #: Environment: ``NAVIGN_SERVER_RELEASE_PUBLIC_KEYS='["/etc/navign/release.pub"]'``.
    release_public_keys: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("sqlite", "mongodb", "mongodb+srv"):
            raise ValueError("must start with sqlite:///, mongodb:// or mongodb+srv://")
        if scheme == "sqlite" and not value.startswith("sqlite:///"):
            raise ValueError("SQLite URLs look like sqlite:///relative/path or sqlite:////abs/path")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("release_public_keys")
    @classmethod
    def _release_public_keys(cls, value: list[str]) -> list[str]:
        pems: dict[str, str] = {}
        for index, entry in enumerate(value):
            try:
                key = _load_release_key(entry)
            except (KeyFormatError, OSError) as exc:
                raise ValueError(f"entry {index}: {exc}") from None
            pems.setdefault(keys.key_id(key), keys.public_key_to_pem(key))
        return list(pems.values())

    @model_validator(mode="after")
    def _production_rules(self) -> Self:
        if self.environment != "production":
            return self
        parts = urlsplit(self.public_url)
        if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
            raise ValueError("public_url must be https in production (gateways send tokens)")
        password = urlsplit(self.database_url).password or ""
        if any(word in password.lower() for word in _PLACEHOLDERS):
            raise ValueError("database_url carries a placeholder password; set a real one")
        return self

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for MongoDB."""
        if not self.database_url.startswith("sqlite:///"):
            return None
        return Path(self.database_url.removeprefix("sqlite:///"))
