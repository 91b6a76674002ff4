"""Gateway configuration: a TOML file (``/etc/navign/gateway.toml``) plus environment overrides.

Every key can be overridden by ``NAVIGN_GATEWAY_<KEY>``; keys of a table by
``NAVIGN_GATEWAY_<TABLE>__<KEY>`` (``NAVIGN_GATEWAY_LISTEN__GRPC=0.0.0.0:50051``). Values from the
environment are parsed as TOML values when they parse (numbers, booleans, arrays), else as
strings. Invalid configuration raises :class:`ConfigError` with one readable line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from navign_gateway.grpc_tls import TlsError, TlsFiles, build_context
from navign_proto import keys
from navign_proto.errors import KeyFormatError

DEFAULT_PATH = Path("/etc/navign/gateway.toml")
ENV_PREFIX = "NAVIGN_GATEWAY_"
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HOSTPORT_RE = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


def _check_id(value: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise ValueError("must be 1-64 characters of letters, digits and ._:-")
    return value


def _check_listen(value: str) -> str:
    match = _HOSTPORT_RE.fullmatch(value)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError("must be host:port, e.g. 0.0.0.0:50051 or [::]:50051")
    return value


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Table):
    grpc: str = "0.0.0.0:50051"
    http: str = "0.0.0.0:8080"

    @field_validator("grpc", "http")
    @classmethod
    def _addresses(cls, value: str) -> str:
        return _check_listen(value)


class FirmwareConfig(_Table):
    #: Disk the firmware cache may use; the oldest unused releases are evicted beyond it.
    cache_budget_mb: int = Field(512, ge=16, le=64 * 1024)
    #: Release public keys (PEM files or 130-hex-digit points) that signed releases must match.
    release_public_keys: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("release_public_keys")
    @classmethod
    def _keys_load(cls, values: list[str]) -> list[str]:
        for value in values:
            _load_release_key(value)
        return values

    def release_keys(self) -> list[ec.EllipticCurvePublicKey]:
        """The keys themselves (validated when the configuration was loaded)."""
        return [_load_release_key(value) for value in self.release_public_keys]


def _load_release_key(value: str) -> ec.EllipticCurvePublicKey:
    """A key given inline (PEM text or the 130-hex-digit point) or as a PEM file's path."""
    text = value.strip()
    try:
        if text.startswith("-----BEGIN") or re.fullmatch(r"[0-9a-fA-F]{130}", text):
            return keys.load_public_key(text)
        try:
            data = Path(text).read_bytes()
        except OSError as exc:
            raise ValueError(f"{text}: cannot read the key file: {exc.strerror or exc}") from None
        return keys.load_public_key(data)
    except KeyFormatError as exc:
        raise ValueError(f"{text[:40]}: {exc}") from None


class BleConfig(_Table):
    enabled: bool = True
    max_connections: int = Field(3, ge=1, le=16)
    adapter: str = "hci0"
    #: "bluez" (the Pi), or a Python module offering bleak backends ``client_backend`` and
    #: ``scanner_backend`` (the tests' simulated radio: ``navign_firmware.bleak_backend``).
    backend: str = Field("bluez", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    #: Advertise the latest release per target through BlueZ (§8.7).
    advertise: bool = True


class MdnsConfig(_Table):
    enabled: bool = True
    #: IPv4 addresses of this host to announce and bind mDNS to; empty: every interface.
    interfaces: list[str] = Field(default_factory=list, max_length=16)
    #: The DNS-SD instance name (protocol §8.3); default: the orchestrator id.
    instance: str | None = None

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                address = ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IPv4 address (beacons resolve A records only)"
                ) from None
            if address.is_unspecified or address.is_multicast or address.is_reserved:
                raise ValueError(f"{value} cannot be an interface address (use [] for all)")
        if len(set(values)) != len(values):
            raise ValueError("lists an address twice")
        return values

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not 0 < len(value.encode()) <= 63 or value.strip() != value:
            raise ValueError("must be 1-63 bytes of UTF-8, without leading or trailing spaces")
        if "." in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain dots or control characters")
        return value


class GrpcConfig(_Table):
    """Who may call ``navign.gateway.v1`` (protocol §7.2): the SHA-256 (hex) of each accepted
    bearer token, never the token itself. No digest at all: every call is refused."""

    #: Tokens that may read and operate rollouts (pause, resume, abort, approve).
    operator_token_sha256: list[str] = Field(default_factory=list, max_length=64)
    #: Tokens that may only read.
    reader_token_sha256: list[str] = Field(default_factory=list, max_length=64)
    #: TLS on the port (PEM certificate chain and its key); both or neither. Re-read on change.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: With TLS: every caller must present a certificate issued by a CA in this PEM bundle.
    tls_client_ca: Path | None = None

    @field_validator("operator_token_sha256", "reader_token_sha256")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        digests = [value.strip().lower() for value in values]
        for digest in digests:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(
                    f"{digest[:16]!r}... is not a SHA-256 in hex (64 digits); "
                    "`navign-gateway token-hash` prints one"
                )
            if digest == _EMPTY_SHA256:
                raise ValueError("lists the SHA-256 of an empty token")
        if len(set(digests)) != len(digests):
            raise ValueError("lists a digest twice")
        return digests

    @model_validator(mode="after")
    def _one_role_each(self) -> Self:
        if set(self.operator_token_sha256) & set(self.reader_token_sha256):
            raise ValueError("a digest is listed as both operator and reader token")
        return self

    @model_validator(mode="after")
    def _tls(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        files = self.tls_files
        if files is not None:
            try:
                build_context(files)  # the key matches, the CA bundle parses: fail at start
            except TlsError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def tls_files(self) -> TlsFiles | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_client_ca)


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class GatewayConfig(_Table):
    """A validated gateway configuration."""

    server_url: str
    entity_id: str
    orchestrator_id: str
    #: Single-use; wiped from the file after the first successful registration.
    enrollment_token: str | None = Field(None, min_length=8, max_length=256)
    data_dir: Path = Path("/var/lib/navign")
    ca_bundle: Path | None = None
    heartbeat_interval: int = Field(60, ge=10, le=3600)
    #: Plain http to a non-loopback server only when explicitly allowed (lab setups).
    allow_insecure_http: bool = False
    listen: ListenConfig = Field(default_factory=ListenConfig)
    firmware: FirmwareConfig = Field(default_factory=FirmwareConfig)
    ble: BleConfig = Field(default_factory=BleConfig)
    mdns: MdnsConfig = Field(default_factory=MdnsConfig)
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)

    @field_validator("entity_id", "orchestrator_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host, e.g. https://navign.example.com")
        if parts.query or parts.fragment or parts.username:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secure_transport(self) -> Self:
        parts = urlsplit(self.server_url)
        host = parts.hostname or ""
        if parts.scheme == "http" and not self.allow_insecure_http and not is_loopback(host):
            raise ValueError(
                "server_url: plain http to a non-loopback server sends tokens in the clear; "
                "use https or set allow_insecure_http = true"
            )
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ValueError(f"ca_bundle: {self.ca_bundle} is not a file")
        return self

    @property
    def identity_key_path(self) -> Path:
        return self.data_dir / "identity.pem"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``data`` with ``NAVIGN_GATEWAY_*`` overrides applied."""
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1:
            result[path[0]] = _env_value(raw)
        elif len(path) == 2:
            table = result.setdefault(path[0], {})
            if not isinstance(table, dict):
                raise ConfigError(f"{name}: {path[0]} is not a table")
            table[path[1]] = _env_value(raw)
        else:
            raise ConfigError(f"{name}: nesting deeper than TABLE__KEY is not supported")
    return result


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "config"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    return f"{where}: {message}"


def load_config(path: Path = DEFAULT_PATH, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, override and validate the configuration; raise :class:`ConfigError` on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data = apply_env(data, os.environ if env is None else env)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
