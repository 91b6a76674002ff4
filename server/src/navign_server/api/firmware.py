"""Firmware for gateways (docs/protocol.md §3.8-3.10): the newest release's metadata, its signed
manifest, and its artifact with byte ranges.

Any active gateway may read any release: firmware is not mall-specific. Downloads stream from the
blob store in ``READ_CHUNK`` pieces; an artifact is never read into memory whole.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from navign_proto.byteranges import RangeNotSatisfiableError, parse_range
from navign_proto.mall import Chip
from navign_proto.wire import ErrorCode, FirmwareChannel, FirmwareInfo
from navign_server.auth.principals import Ctx, Gateway
from navign_server.blobs import READ_CHUNK, BlobNotFoundError
from navign_server.context import ServerContext
from navign_server.errors import ApiError
from navign_server.releases import FirmwareHosting, firmware_info, is_downloadable, newest
from navign_server.storage.base import NotFoundError, Release, ReleaseStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/firmware", tags=["firmware"])

IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
KEYWORD_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
#: A Range header longer than this is not one we would honour: it is ignored.


def hosting(request: Request) -> FirmwareHosting:
    value = getattr(request.app.state, "firmware", None)
    assert isinstance(value, FirmwareHosting), "create_app sets app.state.firmware"
    return value


Hosting = Annotated[FirmwareHosting, Depends(hosting)]


async def downloadable_release(ctx: ServerContext, firmware_id: str) -> Release:
    """The release if its artifact is uploaded and verified (withdrawn ones included)."""
    try:
        release = await ctx.store.get_release(firmware_id)
    except NotFoundError:
        release = None
    if release is None or not is_downloadable(release):
        raise ApiError(ErrorCode.FIRMWARE_NOT_FOUND, f"no release {firmware_id!r}")
    return release


@router.get("/latest", response_model=FirmwareInfo)
async def latest(
    ctx: Ctx,
    principal: Gateway,
    target: Annotated[Chip, Query()],
    device_type: Annotated[str, Query(min_length=1, max_length=64, pattern=KEYWORD_PATTERN)],
    channel: Annotated[FirmwareChannel, Query()],
) -> JSONResponse:
    """The newest available release (SemVer precedence) for the target, device type and
    channel. Withdrawn releases and releases still waiting for their artifact are not offered."""
    releases = await ctx.store.list_releases(
        target=target.value,
        device_type=device_type,
        channel=channel.value,
        status=ReleaseStatus.AVAILABLE,
    )
    release = newest(releases)
    if release is None:
        raise ApiError(
            ErrorCode.FIRMWARE_NOT_FOUND,
            f"no {channel.value} release for {device_type} on {target.value}",
        )
    info = firmware_info(release, ctx.settings.public_url)
    return JSONResponse(info.model_dump(mode="json", exclude_none=True))


@router.get("/{firmware_id}/manifest")
async def manifest(firmware_id: IdPath, ctx: Ctx, principal: Gateway) -> Response:
    """The DSSE envelope byte for byte as stored (its JCS form)."""
    release = await downloadable_release(ctx, firmware_id)
    return Response(
        release.envelope,
        media_type="application/json",
        headers={"ETag": f'"{release.manifest_sha256}"'},
    )


_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole artifact", "content": _BYTES},
    206: {"description": "The requested byte range (Content-Range)", "content": _BYTES},
}


# Two routes, so that GET and HEAD have distinct operation ids in the OpenAPI document.
@router.head(
    "/{firmware_id}/download",
    operation_id="download_head",
    response_class=Response,
    responses=ARTIFACT_RESPONSES,
)
@router.get("/{firmware_id}/download", response_class=Response, responses=ARTIFACT_RESPONSES)
async def download(
    firmware_id: IdPath, request: Request, ctx: Ctx, principal: Gateway, firmware: Hosting
) -> Response:
    release = await downloadable_release(ctx, firmware_id)
    sha256 = release.artifact_sha256
    assert sha256 is not None
    try:
        size = await firmware.blobs.size(sha256)
    except BlobNotFoundError:
        log.error("artifact %s of release %s is missing from the blob store", sha256, firmware_id)
        raise ApiError(ErrorCode.FIRMWARE_NOT_FOUND, f"no artifact for {firmware_id!r}") from None
    etag = f'"{sha256}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag}
    requested = request.headers.get("range")
    if_range = request.headers.get("if-range")
    # If-Range with anything but our strong ETag: the client's partial file is stale.
    honour = requested is not None and (if_range is None or if_range.strip() == etag)
    try:
        byte_range = parse_range(requested if honour else None, size)
    except RangeNotSatisfiableError:
        raise ApiError(
            ErrorCode.RANGE_NOT_SATISFIABLE,
            f"range {requested!r} lies outside the {size}-byte artifact",
            details={"size": size},
            headers={**headers, "Content-Range": f"bytes */{size}"},
        ) from None
    if byte_range is None:
        status, first, length = 200, 0, size
    else:
        status, first, length = 206, byte_range.first, byte_range.length
        headers["Content-Range"] = f"bytes {byte_range.first}-{byte_range.last}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    if first == 0:  # a download starts here; resumed pieces of it are not audited again
        await ctx.audit(
            principal.actor,
            "firmware.download",
            entity_id=principal.entity_id,
            release_id=firmware_id,
            range=requested if honour else None,
        )
    return StreamingResponse(
        firmware.blobs.read(sha256, first, first + length, READ_CHUNK),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )
