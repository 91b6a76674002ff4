"""Test support for the beacon firmware: signed releases of the real app, and a small HTTP server
speaking the gateway's beacon endpoints (docs/protocol.md §8.1, §8.2) with fault injection.

The server is a stand-in for the gateway's HTTP port in the firmware's own tests (the rollout
issue tests the firmware against the real gateway). It serves ``/firmware/{id}`` with Range as
§3.10 says, ``/firmware/{id}/manifest``, and ``POST /beacons/{id}/report``, which records each
report and answers with the beacon's assignment.

Public: :class:`Release`, :func:`app_release`, :func:`image_release`, :func:`release_key`,
:class:`BeaconGateway`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from navign_firmware import build, flash
from navign_proto import keys, manifest

VECTORS: Final = Path(__file__).resolve().parents[4] / "proto" / "vectors"
CREATED_AT: Final = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def release_key(name: str = "release-1") -> ec.EllipticCurvePrivateKey:
    """A test release key of ``proto/vectors/keys.json`` (its private scalar is public)."""
    data = json.loads((VECTORS / "keys.json").read_text())
    for entry in data["keys"]:
        if entry["name"] == name:
            return keys.private_key_from_scalar(int(entry["private_scalar_hex"], 16))
    raise KeyError(name)


def public_point_hex(key: ec.EllipticCurvePrivateKey) -> str:
    return keys.public_key_to_point(key.public_key()).hex()


@dataclass(frozen=True)
class Release:
    """A signed release: the DSSE envelope bytes and the artifact bytes."""

    firmware_id: str
    manifest: manifest.ReleaseManifest
    envelope: bytes
    artifact: bytes

    @property
    def manifest_sha256(self) -> str:
        payload = json.loads(self.envelope)["payload"]
        return hashlib.sha256(base64.b64decode(payload)).hexdigest()


def _sign(
    firmware_id: str,
    built: manifest.ReleaseBuild,
    signers: list[ec.EllipticCurvePrivateKey] | None,
) -> Release:
    envelope = manifest.sign_manifest(built.manifest, signers or [release_key()])
    return Release(firmware_id, built.manifest, manifest.envelope_bytes(envelope), built.artifact)


def app_release(
    version: str,
    *,
    target: str = "esp32",
    secure_version: int = 0,
    app_dir: Path | None = None,
    patch: Mapping[str, bytes] | None = None,
    signers: list[ec.EllipticCurvePrivateKey] | None = None,
    firmware_id: str | None = None,
    **fields: Any,
) -> Release:
    """The real app (``src/navign`` compiled with mpy-cross, ``APP_VERSION`` set to ``version``)
    as a signed app release; ``patch`` replaces or adds files (e.g. a broken ``navign/app.py``)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "app"
        if app_dir is None:
            build.build_app(root, version=version, target=target)
        else:
            import shutil

            shutil.copytree(app_dir, root)
        for name, data in (patch or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        built = manifest.build_release(
            name="navign-beacon-app",
            version=version,
            target=target,
            secure_version=secure_version,
            created_at=fields.pop("created_at", CREATED_AT),
            app_dir=root,
            **fields,
        )
    return _sign(firmware_id or f"app-{target}-{version}", built, signers)


def image_release(
    version: str,
    *,
    target: str = "esp32",
    secure_version: int = 0,
    size: int = 96 * 1024,
    signers: list[ec.EllipticCurvePrivateKey] | None = None,
    firmware_id: str | None = None,
    **fields: Any,
) -> Release:
    """A simulated MicroPython image (:func:`navign_firmware.flash.make_image`) as a signed
    image release."""
    image = flash.make_image(version, target, size, secure_version=secure_version)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.bin"
        path.write_bytes(image)
        built = manifest.build_release(
            name="navign-beacon-fw",
            version=version,
            target=target,
            secure_version=secure_version,
            created_at=fields.pop("created_at", CREATED_AT),
            image=path,
            **fields,
        )
    return _sign(firmware_id or f"fw-{target}-{version}", built, signers)


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    """Faults the server injects: ``cut_after`` ends an artifact response after that many body
    bytes (then clears itself after ``cuts`` times), ``ignore_range`` answers 200 to a Range."""

    cut_after: int | None = None
    cuts: int = 0
    ignore_range: bool = False
    report_status: int = 200
    #: Artifact bytes per second (None: as fast as loopback goes), like a slow WiFi link.
    rate: float | None = None


@dataclass
class _State:
    releases: dict[str, Release] = field(default_factory=dict)
    assignments: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)


class BeaconGateway:
    """A small HTTP server on 127.0.0.1 playing the gateway's beacon-facing port."""

    def __init__(self) -> None:
        self.state = _State()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: bytes, headers: Mapping[str, str] = {}) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self) -> None:
                with state.lock:
                    state.requests.append(("GET", self.path, self.headers.get("Range")))
                parts = self.path.strip("/").split("/")
                if len(parts) >= 2 and parts[0] == "firmware" and parts[1] in state.releases:
                    rel = state.releases[parts[1]]
                    if parts[2:] == ["manifest"]:
                        self._send(200, rel.envelope, {"Content-Type": "application/json"})
                        return
                    if not parts[2:]:
                        self._artifact(rel)
                        return
                self._send(404, b'{"error":{"code":"FIRMWARE_NOT_FOUND"}}')

            def _artifact(self, rel: Release) -> None:
                data = rel.artifact
                start, status = 0, 200
                header = self.headers.get("Range")
                match = _RANGE.match(header or "")
                if match and not state.faults.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Connection", "close")
                self.end_headers()
                cut = None
                with state.lock:
                    if state.faults.cut_after is not None and state.faults.cuts > 0:
                        cut = state.faults.cut_after
                        state.faults.cuts -= 1
                self.close_connection = True
                if cut is not None:
                    body = body[:cut]
                rate = state.faults.rate
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    step = 4096
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        if rate:
                            time.sleep(step / rate)

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if 0 < length <= 65536 else b""
                with state.lock:
                    state.requests.append(("POST", self.path, None))
                if len(parts) == 3 and parts[0] == "beacons" and parts[2] == "report":
                    try:
                        report = json.loads(raw)
                    except ValueError:
                        self._send(400, b'{"error":{"code":"VALIDATION_ERROR"}}')
                        return
                    with state.lock:
                        state.reports.append(report)
                        assignment = state.assignments.get(parts[1])
                        status = state.faults.report_status
                    result = report.get("result") if isinstance(report, dict) else None
                    answer = {
                        "assignment": assignment,
                        "ack": result.get("manifest_sha256") if isinstance(result, dict) else None,
                    }
                    self._send(
                        status, json.dumps(answer).encode(), {"Content-Type": "application/json"}
                    )
                    return
                self._send(404, b'{"error":{"code":"NOT_FOUND"}}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BeaconGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def publish(self, release: Release) -> None:
        with self.state.lock:
            self.state.releases[release.firmware_id] = release

    def assign(self, beacon_id: str, release: Release | None) -> None:
        with self.state.lock:
            if release is None:
                self.state.assignments.pop(beacon_id, None)
            else:
                self.state.assignments[beacon_id] = {
                    "firmware_id": release.firmware_id,
                    "manifest_sha256": release.manifest_sha256,
                }

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def reports(self, beacon_id: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [r for r in self.state.reports if beacon_id in (None, r.get("beacon_id"))]
