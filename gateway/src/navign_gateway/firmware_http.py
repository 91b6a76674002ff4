"""Verified firmware for the mall's beacons on the gateway's HTTP port.

Why: beacons update over Wi-Fi from the gateway, not from the server (protocol §8). They get
only releases the firmware cache verified (§6.5), with the same validators and ranges the
server's download offers (§3.10), so a beacon's OTA client resumes the same way against either.

    GET /firmware                       index of verified releases (JSON)
    GET|HEAD /firmware/{id}             the artifact: sendfile, Range, ETag = its SHA-256
    GET|HEAD /firmware/{id}/manifest    the DSSE envelope bytes as the server sent them

Unknown ids, and releases still downloading, get 404 ``FIRMWARE_NOT_FOUND`` in the protocol's
error envelope; a malformed id gets 422 ``VALIDATION_ERROR``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETag
from multidict import CIMultiDict

from navign_gateway.firmware import CachedRelease, FirmwareCache
from navign_proto.byteranges import ByteRange, RangeNotSatisfiableError, parse_range
from navign_proto.wire import HTTP_STATUS, ErrorCode, ErrorEnvelope

PREFIX: Final = "/firmware"
#: The header's usual spelling (aiohttp's hdrs.ETAG is "Etag"; both are the same header).
ETAG: Final = "ETag"
#: sendfile() hands the kernel this much per call when it falls back to reads.
SEND_CHUNK = 256 * 1024
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONDITIONALS = (
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
    hdrs.IF_RANGE,
    hdrs.RANGE,
)


# -- ranges (the rules of §3.10) ---------------------------------------------------------------


def etag_listed(header: str, value: str, *, weak: bool) -> bool:
    """Whether an If-None-Match / If-Match list names ``"value"`` (``*`` names anything);
    weak comparison also accepts ``W/"value"``."""
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return True
        if weak and tag.startswith("W/"):
            tag = tag[2:]
        if tag == f'"{value}"':
            return True
    return False


# -- responses ---------------------------------------------------------------------------------


class VerifiedFileResponse(web.FileResponse):
    """aiohttp's FileResponse (sendfile, HEAD, Content-Length, Last-Modified) with our strong
    validator as its ETag instead of aiohttp's mtime-size one, and with the conditional and
    range headers already decided by the handler: FileResponse sees only the normalised
    ``Range`` it is given (and If-Modified-Since when there was no If-None-Match)."""

    def __init__(
        self,
        path: Path,
        etag_value: str,
        *,
        byte_range: ByteRange | None,
        keep_if_modified_since: bool,
        headers: Mapping[str, str],
    ) -> None:
        self._fixed_etag = etag_value
        super().__init__(path, chunk_size=SEND_CHUNK, headers=headers)
        self._byte_range = byte_range
        self._keep_if_modified_since = keep_if_modified_since

    @property
    def etag(self) -> ETag | None:
        return ETag(value=self._fixed_etag)

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        # FileResponse sets its own validator while preparing; ours always wins.
        self.headers[ETAG] = f'"{self._fixed_etag}"'

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        headers = CIMultiDict(request.headers)
        modified_since = headers.get(hdrs.IF_MODIFIED_SINCE)
        for name in _CONDITIONALS:
            headers.popall(name, None)
        if self._byte_range is not None:
            headers[hdrs.RANGE] = f"bytes={self._byte_range.first}-{self._byte_range.last}"
        if modified_since is not None and self._keep_if_modified_since:
            headers[hdrs.IF_MODIFIED_SINCE] = modified_since
        return await super().prepare(request.clone(headers=headers))


def request_id(request: web.Request) -> str:
    """The client's X-Request-ID when well-formed (§1.6), else a new one."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex


def error_response(
    code: ErrorCode,
    message: str,
    request_id_: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The protocol's error envelope (§1.7), shaped as the server's."""
    envelope = ErrorEnvelope.of(code, message, request_id=request_id_)
    return web.Response(
        status=HTTP_STATUS[code],
        body=envelope.model_dump_json(exclude_none=True).encode(),
        content_type="application/json",
        headers={"X-Request-ID": request_id_, **(headers or {})},
    )


def index_entry(release: CachedRelease) -> dict[str, Any]:
    return {
        "firmware_id": release.firmware_id,
        "name": release.name,
        "version": release.version,
        "target": release.target,
        "kind": release.kind,
        "secure_version": release.secure_version,
        "size": release.size,
        "sha256": release.sha256,
        "manifest_sha256": release.manifest_sha256,
        "artifact_url": f"{PREFIX}/{release.firmware_id}",
        "manifest_url": f"{PREFIX}/{release.firmware_id}/manifest",
    }


# -- handlers ----------------------------------------------------------------------------------


class FirmwareRoutes:
    """The handlers, bound to one cache."""

    def __init__(self, cache: FirmwareCache) -> None:
        self.cache = cache

    def _release(self, request: web.Request, rid: str) -> CachedRelease | web.Response:
        firmware_id = request.match_info["firmware_id"]
        if not _ID_RE.fullmatch(firmware_id):
            return error_response(
                ErrorCode.VALIDATION_ERROR, "a firmware id is 1-64 of [A-Za-z0-9._:-]", rid
            )
        release = self.cache.get(firmware_id)
        if release is None:
            return error_response(
                ErrorCode.FIRMWARE_NOT_FOUND, f"no verified release {firmware_id!r}", rid
            )
        return release

    async def index(self, request: web.Request) -> web.Response:
        body = {"releases": [index_entry(r) for r in self.cache.list()]}
        return web.json_response(body, headers={"X-Request-ID": request_id(request)})

    async def artifact(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        release = self._release(request, rid)
        if isinstance(release, web.Response):
            return release
        etag = f'"{release.sha256}"'
        headers = {
            "X-Request-ID": rid,
            ETAG: etag,
            hdrs.ACCEPT_RANGES: "bytes",
            hdrs.CONTENT_TYPE: "application/octet-stream",
        }
        await self.cache.touch(release.firmware_id)
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if if_none_match is not None and etag_listed(if_none_match, release.sha256, weak=True):
            return web.Response(status=304, headers={"X-Request-ID": rid, ETAG: etag})
        requested = request.headers.get(hdrs.RANGE)
        if_range = request.headers.get(hdrs.IF_RANGE)
        # Only our strong ETag matches If-Range; anything else means "send it all".
        honour = requested is not None and (if_range is None or if_range.strip() == etag)
        try:
            byte_range = parse_range(requested if honour else None, release.size)
        except RangeNotSatisfiableError:
            return error_response(
                ErrorCode.RANGE_NOT_SATISFIABLE,
                f"range {requested!r} lies outside the {release.size}-byte artifact",
                rid,
                {hdrs.CONTENT_RANGE: f"bytes */{release.size}", ETAG: etag},
            )
        return VerifiedFileResponse(
            release.artifact_path,
            release.sha256,
            byte_range=byte_range,
            keep_if_modified_since=if_none_match is None,
            headers=headers,
        )

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        release = self._release(request, rid)
        if isinstance(release, web.Response):
            return release
        etag = f'"{release.manifest_sha256}"'
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if if_none_match is not None and etag_listed(
            if_none_match, release.manifest_sha256, weak=True
        ):
            return web.Response(status=304, headers={"X-Request-ID": rid, ETAG: etag})
        return VerifiedFileResponse(
            release.envelope_path,
            release.manifest_sha256,
            byte_range=None,
            keep_if_modified_since=if_none_match is None,
            headers={"X-Request-ID": rid, hdrs.CONTENT_TYPE: "application/json"},
        )


def add_firmware_routes(app: web.Application, cache: FirmwareCache) -> None:
    """Serve ``cache``'s verified releases under /firmware (GET routes answer HEAD too)."""
    routes = FirmwareRoutes(cache)
    app.router.add_get(PREFIX, routes.index)
    app.router.add_get(PREFIX + "/{firmware_id}", routes.artifact)
    app.router.add_get(PREFIX + "/{firmware_id}/manifest", routes.manifest)
