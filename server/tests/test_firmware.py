"""Firmware hosting through a real server: signed upload in two steps, latest, manifest,
resumable download, withdraw, and every refusal with its exact status and code."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.manifest import envelope_bytes, open_envelope, sign_manifest
from navign_proto.wire import FirmwareInfo

from .conftest import RunningServer, TestGateway
from .firmware_helpers import (
    ENTITY,
    Releases,
    app_manifest,
    firmware_server,
    image_manifest,
    payload,
    stray_files,
)
from .test_registration import assert_error

Setup = tuple[RunningServer, Releases, TestGateway]
IMAGE = payload(200_000, "image")  # more than three 64 KiB chunks


@pytest.fixture(scope="module")
def release_key() -> ec.EllipticCurvePrivateKey:
    return keys.generate_private_key()


@pytest.fixture
async def setup(tmp_path: Path, release_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[Setup]:
    async with firmware_server(tmp_path, release_key) as running:
        yield running


async def latest(gateway: TestGateway, **params: str) -> httpx.Response:
    query = {"target": "esp32", "device_type": "beacon", "channel": "stable", **params}
    async with gateway.client() as client:
        return await client.get("/api/firmware/latest", params=query)


async def get(gateway: TestGateway, path: str, **headers: str) -> httpx.Response:
    async with gateway.client() as client:
        return await client.get(path, headers=headers)


async def assert_nothing_stored(server: RunningServer) -> None:
    async with server.admin() as admin:
        assert (await admin.get("/api/admin/releases")).json() == {"releases": []}
    assert stray_files(server) == []


# -- round trips ------------------------------------------------------------------------------


async def test_image_upload_and_download_round_trip(setup: Setup) -> None:
    server, releases, gateway = setup
    manifest = image_manifest(IMAGE, version="1.2.0")
    envelope = releases.envelope(manifest)
    created = await releases.create(
        envelope, changelog=["Faster advertising"], compatible_hardware=["esp32-devkitc"]
    )
    assert created.status_code == 201, created.text
    release = created.json()
    release_id = release["release_id"]
    assert release_id.startswith("fw-esp32-1.2.0-")
    assert (release["status"], release["size_bytes"], release["checksum"]) == (
        "pending_upload",
        len(IMAGE),
        None,
    )
    assert release["upload_url"] == f"/api/admin/releases/{release_id}/artifact"
    # Not offered nor served before its artifact is verified.
    assert_error(await latest(gateway), 404, "FIRMWARE_NOT_FOUND")
    assert_error(
        await get(gateway, f"/api/firmware/{release_id}/download"), 404, "FIRMWARE_NOT_FOUND"
    )

    uploaded = await releases.put_artifact(release_id, IMAGE)
    assert uploaded.status_code == 200, uploaded.text
    digest = hashlib.sha256(IMAGE).hexdigest()
    assert uploaded.json()["status"] == "available"
    assert uploaded.json()["checksum"] == f"sha256:{digest}"
    assert uploaded.json()["upload_url"] is None

    info_response = await latest(gateway)
    assert info_response.status_code == 200, info_response.text
    info = FirmwareInfo.model_validate(info_response.json())
    base = f"{server.ctx.settings.public_url}/api/firmware/{release_id}"
    assert info.model_dump(mode="json", exclude_none=True) == {
        "firmware_id": release_id,
        "version": "1.2.0",
        "target": "esp32",
        "device_type": "beacon",
        "channel": "stable",
        "size_bytes": len(IMAGE),
        "checksum": f"sha256:{digest}",
        "download_url": f"{base}/download",
        "manifest_url": f"{base}/manifest",
        "changelog": ["Faster advertising"],
        "compatible_hardware": ["esp32-devkitc"],
        "secure_version": 1,
        "kind": "image",
    }

    served = await get(gateway, f"/api/firmware/{release_id}/manifest")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.content == envelope_bytes(envelope)
    verified = open_envelope(served.content, [releases.key.public_key()])
    assert served.headers["etag"] == f'"{verified.manifest_sha256}"'
    assert verified.manifest == manifest

    download = await get(gateway, f"/api/firmware/{release_id}/download")
    assert download.status_code == 200
    assert download.content == IMAGE
    assert download.headers["etag"] == f'"{digest}"'
    assert download.headers["accept-ranges"] == "bytes"
    assert download.headers["content-length"] == str(len(IMAGE))
    assert download.headers["content-type"] == "application/octet-stream"
    assert [p.name for p in stray_files(server)] == [digest]


async def test_app_bundle_round_trip_slices_into_the_manifest_files(setup: Setup) -> None:
    _, releases, gateway = setup
    files = {
        "main.mpy": payload(70_000, "main"),
        "lib/empty.mpy": b"",
        "lib/ble.mpy": payload(1_234, "ble"),
        "boot.py": b"import main\n",
    }
    manifest = app_manifest(files, version="0.9.1")
    # The envelope may also be given as text: it is verified over those bytes.
    text = canonical_json(releases.envelope(manifest)).decode()
    created = await releases.create(text, channel="beta")
    assert created.status_code == 201, created.text
    release_id = created.json()["release_id"]
    artifact = b"".join(files.values())
    assert (await releases.put_artifact(release_id, artifact)).status_code == 200

    info = (await latest(gateway, target="esp32c3", channel="beta")).json()
    assert (info["kind"], info["size_bytes"], info["min_previous_version"]) == (
        "app",
        len(artifact),
        "0.9.0",
    )
    assert info["checksum"] == f"sha256:{hashlib.sha256(artifact).hexdigest()}"
    download = await get(gateway, f"/api/firmware/{release_id}/download")
    envelope = (await get(gateway, f"/api/firmware/{release_id}/manifest")).content
    verified = open_envelope(envelope, [releases.key.public_key()])
    offset = 0
    assert verified.manifest.files is not None
    for entry in verified.manifest.files:
        piece = download.content[offset : offset + entry.size]
        assert hashlib.sha256(piece).hexdigest() == entry.sha256, entry.path
        offset += entry.size
    assert offset == len(download.content)


# -- latest -----------------------------------------------------------------------------------


async def test_latest_picks_the_highest_semver_per_target_and_channel(setup: Setup) -> None:
    server, releases, gateway = setup
    ids: dict[str, str] = {}
    for version, target, channel in [
        ("1.10.0", "esp32", "stable"),
        ("2.0.0-rc.1", "esp32", "stable"),
        ("1.2.0", "esp32", "stable"),
        ("3.0.0", "esp32", "beta"),
        ("5.0.0", "esp32s3", "stable"),
    ]:
        image = payload(1000, version + target)
        manifest = image_manifest(image, version=version, target=target)
        ids[version] = (await releases.publish(manifest, image, channel))["release_id"]
    # Created but never uploaded: never offered, whatever its version.
    pending = await releases.create(releases.envelope(image_manifest(IMAGE, version="9.0.0")))
    assert pending.status_code == 201

    async def newest(**params: str) -> str:
        response = await latest(gateway, **params)
        assert response.status_code == 200, response.text
        version: str = response.json()["version"]
        return version

    assert await newest() == "2.0.0-rc.1"  # 2.0.0-rc.1 > 1.10.0 > 1.2.0
    assert await newest(channel="beta") == "3.0.0"
    assert await newest(target="esp32s3") == "5.0.0"
    assert_error(await latest(gateway, channel="canary"), 404, "FIRMWARE_NOT_FOUND")
    assert_error(await latest(gateway, device_type="tag"), 404, "FIRMWARE_NOT_FOUND")

    async with server.admin() as admin:
        withdrawn = await admin.post(f"/api/admin/releases/{ids['2.0.0-rc.1']}/withdraw")
        assert withdrawn.status_code == 200
        assert withdrawn.json()["status"] == "withdrawn"
        listed = (await admin.get("/api/admin/releases", params={"status": "withdrawn"})).json()
        assert [r["release_id"] for r in listed["releases"]] == [ids["2.0.0-rc.1"]]
        beta = (await admin.get("/api/admin/releases", params={"channel": "beta"})).json()
        assert [r["version"] for r in beta["releases"]] == ["3.0.0"]
    assert await newest() == "1.10.0"
    # A withdrawn release is still served to gateways that were assigned it.
    download = await get(gateway, f"/api/firmware/{ids['2.0.0-rc.1']}/download")
    assert download.status_code == 200
    assert download.content == payload(1000, "2.0.0-rc.1esp32")


@pytest.mark.parametrize(
    "params",
    [
        {"target": "esp8266"},
        {"channel": "nightly"},
        {"device_type": "Beacon!"},
        {"device_type": ""},
    ],
)
async def test_latest_refuses_bad_parameters(setup: Setup, params: dict[str, str]) -> None:
    _, _, gateway = setup
    assert_error(await latest(gateway, **params), 422, "VALIDATION_ERROR")


async def test_latest_without_a_parameter_or_credentials(setup: Setup) -> None:
    server, _, gateway = setup
    async with gateway.client() as client:
        missing = await client.get("/api/firmware/latest", params={"target": "esp32"})
    assert_error(missing, 422, "VALIDATION_ERROR")
    async with server.anonymous() as anonymous:
        assert_error(await anonymous.get("/api/firmware/latest"), 401, "AUTH_MISSING")
        assert_error(await anonymous.get("/api/firmware/x/download"), 401, "AUTH_MISSING")
    async with gateway.client() as client:
        # A gateway token is not an admin token.
        assert_error(await client.get("/api/admin/releases"), 401, "AUTH_INVALID_TOKEN")


# -- ranges -----------------------------------------------------------------------------------


@pytest.fixture
async def published(setup: Setup) -> tuple[Setup, str, str]:
    _, releases, _ = setup
    release = await releases.publish(image_manifest(IMAGE), IMAGE)
    return setup, release["release_id"], hashlib.sha256(IMAGE).hexdigest()


def partial_cases(size: int) -> Iterator[tuple[str, int, int]]:
    """(Range header, first byte, last byte) of ranges served with 206."""
    yield "bytes=0-99", 0, 99
    yield "bytes=65530-65545", 65530, 65545  # across a 64 KiB chunk boundary
    yield "bytes=150000-", 150000, size - 1
    yield "bytes=-500", size - 500, size - 1
    yield f"bytes=-{size + 10}", 0, size - 1  # a suffix longer than the artifact: all of it
    yield f"bytes={size - 10}-{size + 1000}", size - 10, size - 1  # the end is clamped
    yield f"bytes={size - 1}-{size - 1}", size - 1, size - 1
    yield "BYTES = 7-7", 7, 7


async def test_single_ranges_get_206(published: Any) -> None:
    (_, _, gateway), release_id, digest = published
    size = len(IMAGE)
    path = f"/api/firmware/{release_id}/download"
    for header, first, last in partial_cases(size):
        response = await get(gateway, path, Range=header)
        assert response.status_code == 206, header
        assert response.content == IMAGE[first : last + 1], header
        assert response.headers["content-range"] == f"bytes {first}-{last}/{size}", header
        assert response.headers["content-length"] == str(last - first + 1), header
        assert response.headers["etag"] == f'"{digest}"'
        assert response.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,5-6", "bytes=abc", "items=0-5", "bytes=5-1", "bytes=-", "bytes=1-2-3", "0-5"],
)
async def test_ignored_ranges_get_the_whole_artifact(published: Any, header: str) -> None:
    (_, _, gateway), release_id, _ = published
    response = await get(gateway, f"/api/firmware/{release_id}/download", Range=header)
    assert response.status_code == 200
    assert response.content == IMAGE
    assert "content-range" not in response.headers


async def test_unsatisfiable_ranges_get_416(published: Any) -> None:
    (_, _, gateway), release_id, _ = published
    size = len(IMAGE)
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        response = await get(gateway, f"/api/firmware/{release_id}/download", Range=header)
        assert_error(response, 416, "RANGE_NOT_SATISFIABLE")
        assert response.headers["content-range"] == f"bytes */{size}"


async def test_if_range(published: Any) -> None:
    (_, _, gateway), release_id, digest = published
    path = f"/api/firmware/{release_id}/download"
    match = await get(gateway, path, Range="bytes=100-199", **{"If-Range": f'"{digest}"'})
    assert match.status_code == 206
    assert match.content == IMAGE[100:200]
    for stale in (f'"{"0" * 64}"', f'W/"{digest}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        response = await get(gateway, path, Range="bytes=100-199", **{"If-Range": stale})
        assert response.status_code == 200, stale
        assert response.content == IMAGE
    # If-Range does not make an unsatisfiable range acceptable, nor a mismatch an error.
    beyond = f"bytes={len(IMAGE)}-"
    assert (await get(gateway, path, Range=beyond, **{"If-Range": '"x"'})).status_code == 200


async def test_head(published: Any) -> None:
    (_, _, gateway), release_id, digest = published
    async with gateway.client() as client:
        whole = await client.head(f"/api/firmware/{release_id}/download")
        part = await client.head(
            f"/api/firmware/{release_id}/download", headers={"Range": "bytes=10-19"}
        )
        missing = await client.head("/api/firmware/fw-none/download")
    assert whole.status_code == 200
    assert whole.content == b""
    assert whole.headers["content-length"] == str(len(IMAGE))
    assert whole.headers["etag"] == f'"{digest}"'
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-19/{len(IMAGE)}"
    assert part.headers["content-length"] == "10"
    assert missing.status_code == 404


async def test_only_the_start_of_a_download_is_audited(published: Any) -> None:
    (server, _, gateway), release_id, _ = published
    path = f"/api/firmware/{release_id}/download"
    await get(gateway, path)
    await get(gateway, path, Range="bytes=1000-")
    await get(gateway, path, Range="bytes=0-999")
    async with gateway.client() as client:
        await client.head(path)
    records = await server.ctx.store.list_audit(entity_id=ENTITY, limit=100)
    downloads = [r for r in records if r.action == "firmware.download"]
    assert [r.details["range"] for r in downloads] == ["bytes=0-999", None]
    assert downloads[0].actor == f"orchestrator:{ENTITY}/gw-1"


# -- refusals ---------------------------------------------------------------------------------


async def test_untrusted_key_is_refused(setup: Setup) -> None:
    server, releases, _ = setup
    stranger = keys.generate_private_key()
    envelope = sign_manifest(image_manifest(IMAGE), [stranger])
    response = await releases.create(envelope)
    assert_error(response, 422, "FIRMWARE_SIGNATURE_INVALID")
    assert "0 valid signature" in response.json()["error"]["message"]
    await assert_nothing_stored(server)


def tampered_envelopes(envelope: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    payload_bytes = base64.b64decode(envelope["payload"])
    flipped = payload_bytes.replace(b'"version":"1.0.0"', b'"version":"9.0.0"')
    assert flipped != payload_bytes
    yield "payload edited", {**envelope, "payload": base64.b64encode(flipped).decode()}
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[10] ^= 1
    signature = {**envelope["signatures"][0], "sig": base64.b64encode(bytes(sig)).decode()}
    yield "signature bit flipped", {**envelope, "signatures": [signature]}
    yield "no signatures", {**envelope, "signatures": []}
    yield "extra member", {**envelope, "note": "hi"}
    yield "bad base64", {**envelope, "payload": "%%%"}
    yield "not JSON text", "{not json"
    yield "wrong payload type", {**envelope, "payloadType": "application/json"}


async def test_tampered_envelopes_are_refused(setup: Setup) -> None:
    server, releases, _ = setup
    envelope = releases.envelope(image_manifest(IMAGE))
    for name, tampered in tampered_envelopes(envelope):
        response = await releases.create(tampered)
        assert_error(response, 422, "FIRMWARE_SIGNATURE_INVALID")
        assert response.json()["error"]["message"].startswith("release refused"), name
    await assert_nothing_stored(server)
    refusals = [
        r for r in await server.ctx.store.list_audit(limit=100) if r.action == "release.create"
    ]
    assert {r.outcome for r in refusals} == {"FIRMWARE_SIGNATURE_INVALID"}


async def test_bad_request_bodies(setup: Setup) -> None:
    server, releases, _ = setup
    envelope = releases.envelope(image_manifest(IMAGE))
    assert_error(await releases.create(envelope, channel="nightly"), 422, "VALIDATION_ERROR")
    assert_error(await releases.create(envelope, surprise=1), 422, "VALIDATION_ERROR")
    assert_error(await releases.create(envelope, device_type="Beacon"), 422, "VALIDATION_ERROR")
    async with server.admin() as admin:
        wrong_type = await admin.post(
            "/api/admin/releases", content=b"{}", headers={"Content-Type": "text/plain"}
        )
    assert_error(wrong_type, 415, "UNSUPPORTED_MEDIA_TYPE")
    await assert_nothing_stored(server)


async def test_without_configured_keys_uploads_are_refused(server: RunningServer) -> None:
    releases = Releases(server, keys.generate_private_key())
    response = await releases.create(releases.envelope(image_manifest(IMAGE)))
    assert_error(response, 422, "FIRMWARE_SIGNATURE_INVALID")
    assert "NAVIGN_SERVER_RELEASE_PUBLIC_KEYS" in response.json()["error"]["message"]
    await assert_nothing_stored(server)


async def test_duplicate_release_is_a_conflict(setup: Setup) -> None:
    server, releases, _ = setup
    manifest = image_manifest(IMAGE)
    assert (await releases.create(releases.envelope(manifest))).status_code == 201
    assert_error(await releases.create(releases.envelope(manifest)), 409, "CONFLICT")
    # Same name, version and target, other bytes (another created_at): still a duplicate.
    again = image_manifest(IMAGE, created_at="2026-12-01T00:00:00Z")
    assert_error(await releases.create(releases.envelope(again), "beta"), 409, "CONFLICT")
    async with server.admin() as admin:
        assert len((await admin.get("/api/admin/releases")).json()["releases"]) == 1


async def pending_release(releases: Releases, artifact: bytes = IMAGE) -> str:
    created = await releases.create(releases.envelope(image_manifest(artifact)))
    assert created.status_code == 201, created.text
    release_id: str = created.json()["release_id"]
    return release_id


async def assert_still_pending(server: RunningServer, release_id: str) -> None:
    async with server.admin() as admin:
        release = (await admin.get(f"/api/admin/releases/{release_id}")).json()
    assert release["status"] == "pending_upload"
    assert release["checksum"] is None
    assert stray_files(server) == []


async def test_wrong_artifacts_are_refused_and_leave_nothing(setup: Setup) -> None:
    server, releases, _ = setup
    release_id = await pending_release(releases)
    wrong = bytearray(IMAGE)
    wrong[-1] ^= 0xFF
    for artifact, what in [(bytes(wrong), "SHA-256"), (IMAGE[:-1], "size 199999")]:
        response = await releases.put_artifact(release_id, artifact)
        assert_error(response, 422, "FIRMWARE_SIGNATURE_INVALID")
        assert what in response.json()["error"]["message"]
        await assert_still_pending(server, release_id)
    # The right bytes are still accepted afterwards.
    assert (await releases.put_artifact(release_id, IMAGE)).status_code == 200


async def test_a_wrong_file_in_an_app_bundle_is_named(setup: Setup) -> None:
    server, releases, _ = setup
    files = {"a.mpy": b"aaaa", "b.mpy": b"bbbb", "c.mpy": b"cccc"}
    created = await releases.create(releases.envelope(app_manifest(files)))
    release_id = created.json()["release_id"]
    # Same total size; the bytes of b.mpy and c.mpy swapped.
    response = await releases.put_artifact(release_id, b"aaaaccccbbbb")
    assert_error(response, 422, "FIRMWARE_SIGNATURE_INVALID")
    assert response.json()["error"]["details"] == {"part": "b.mpy"}
    await assert_still_pending(server, release_id)


async def test_oversized_artifacts_get_413_and_leave_nothing(setup: Setup) -> None:
    server, releases, _ = setup
    release_id = await pending_release(releases, IMAGE[:1000])
    declared = await releases.put_artifact(release_id, IMAGE[:1001])
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
    await assert_still_pending(server, release_id)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        for start in range(0, 1500, 500):
            yield IMAGE[start : start + 500]

    async with server.admin() as admin:
        streamed = await admin.put(
            f"/api/admin/releases/{release_id}/artifact",
            content=chunked(),
            headers={"Content-Type": "application/octet-stream"},
        )
    assert "content-length" not in streamed.request.headers
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    await assert_still_pending(server, release_id)


async def test_artifact_upload_refusals(setup: Setup) -> None:
    server, releases, _ = setup
    release_id = await pending_release(releases)
    response = await releases.put_artifact(release_id, IMAGE, **{"Content-Type": "text/plain"})
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_error(await releases.put_artifact("fw-none", IMAGE), 404, "FIRMWARE_NOT_FOUND")
    await assert_still_pending(server, release_id)
    assert (await releases.put_artifact(release_id, IMAGE)).status_code == 200
    assert_error(await releases.put_artifact(release_id, IMAGE), 409, "CONFLICT")
    async with server.admin() as admin:
        await admin.post(f"/api/admin/releases/{release_id}/withdraw")
    assert_error(await releases.put_artifact(release_id, IMAGE), 409, "CONFLICT")


@pytest.mark.parametrize(
    "path",
    [
        "/api/firmware/..%2F..%2Fetc%2Fpasswd/download",
        "/api/firmware/%2e%2e/download",
        "/api/firmware/..%2Fsha256/manifest",
        "/api/firmware/a%00b/download",
        "/api/firmware/" + "x" * 65 + "/download",
    ],
)
async def test_ids_with_traversal_never_reach_the_filesystem(setup: Setup, path: str) -> None:
    server, releases, gateway = setup
    await releases.publish(image_manifest(IMAGE), IMAGE)
    before = stray_files(server)
    async with gateway.client() as client:
        response = await client.get(httpx.URL(server.base_url + path))
    assert response.status_code in (404, 422), response.text
    code = response.json()["error"]["code"]
    assert code in ("NOT_FOUND", "FIRMWARE_NOT_FOUND", "VALIDATION_ERROR")
    admin_path = path.replace("/api/firmware/", "/api/admin/releases/")
    admin_path = admin_path.replace("/download", "/artifact").replace("/manifest", "/artifact")
    async with server.admin() as admin:
        upload = await admin.put(
            httpx.URL(server.base_url + admin_path),
            content=b"x",
            headers={"Content-Type": "application/octet-stream"},
        )
    assert upload.status_code in (404, 422), upload.text
    assert stray_files(server) == before
