"""Admin API for firmware releases (docs/protocol.md §3.14, §6.7): upload in two steps, list,
withdraw, and assign a release to an entity with a rollout policy (emits ``firmware_update``).

1. ``POST /api/admin/releases``: the DSSE envelope and hosting metadata. The envelope is verified
   against the trusted release keys; the release is stored as ``pending_upload``.
2. ``PUT /api/admin/releases/{id}/artifact``: the artifact as ``application/octet-stream``,
   streamed to a temporary blob and checked against the manifest as it arrives; only a verified
   artifact becomes visible, and the release becomes ``available``.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from navign_proto.canonical import canonical_json, parse_json
from navign_proto.errors import ArtifactMismatchError, CanonicalJSONError, ManifestError
from navign_proto.mall import Chip, Identifier
from navign_proto.manifest import ReleaseManifest, envelope_bytes, open_envelope
from navign_proto.wire import (
    ErrorCode,
    FirmwareChannel,
    FirmwareUpdateEvent,
    Priority,
)
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_proto.wire._types import Keyword
from navign_proto.wire.firmware import ChangelogLine, HardwareName
from navign_server.api.bodies import json_body, read_json
from navign_server.api.firmware import KEYWORD_PATTERN, Hosting
from navign_server.api.rollout import RolloutPolicyInput
from navign_server.auth.principals import Admin, AdminPrincipal, Ctx
from navign_server.context import ServerContext
from navign_server.errors import ApiError
from navign_server.releases import (
    ArtifactCheck,
    ArtifactTooLargeError,
    firmware_info,
    release_id,
)
from navign_server.storage.base import (
    ConflictError,
    NotFoundError,
    Release,
    ReleaseAssignment,
    ReleaseStatus,
)

router = APIRouter(prefix="/api/admin", tags=["admin", "firmware"])

IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
ARTIFACT_MEDIA_TYPE = "application/octet-stream"
ARTIFACT_BODY = {
    "requestBody": {
        "required": True,
        "content": {ARTIFACT_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseCreate(_Body):
    #: The DSSE envelope: a JSON object, or its text (verified over the bytes given).
    envelope: dict[str, Any] | str
    channel: FirmwareChannel
    device_type: Keyword = "beacon"
    changelog: list[ChangelogLine] = Field(default_factory=list, max_length=200)
    compatible_hardware: list[HardwareName] = Field(default_factory=list, max_length=64)


class AssignmentCreate(_Body):
    release_id: Identifier
    policy: RolloutPolicyInput = Field(default_factory=RolloutPolicyInput)
    priority: Priority = Priority.NORMAL


async def _audit(
    ctx: ServerContext,
    who: AdminPrincipal,
    action: str,
    outcome: str = "ok",
    entity_id: str | None = None,
    **details: Any,
) -> None:
    await ctx.audit(who.actor, action, outcome=outcome, entity_id=entity_id, **details)


def _release_json(release: Release) -> dict[str, Any]:
    path = f"/api/admin/releases/{release.release_id}"
    body: dict[str, Any] = {
        "release_id": release.release_id,
        "name": release.name,
        "version": release.version,
        "target": release.target,
        "kind": release.kind,
        "secure_version": release.secure_version,
        "min_previous_version": release.min_previous_version,
        "manifest_sha256": release.manifest_sha256,
        "device_type": release.device_type,
        "channel": release.channel,
        "changelog": list(release.changelog),
        "compatible_hardware": list(release.compatible_hardware),
        "status": release.status.value,
        "size_bytes": release.artifact_size,
        "checksum": f"sha256:{release.artifact_sha256}" if release.artifact_sha256 else None,
        "created_at": rfc3339(release.created_at),
        "created_by": release.created_by,
        "uploaded_at": rfc3339(release.uploaded_at) if release.uploaded_at else None,
        "withdrawn_at": rfc3339(release.withdrawn_at) if release.withdrawn_at else None,
        "upload_url": f"{path}/artifact"
        if release.status is ReleaseStatus.PENDING_UPLOAD
        else None,
    }
    return body


async def _release(ctx: ServerContext, release_id_: str) -> Release:
    try:
        return await ctx.store.get_release(release_id_)
    except NotFoundError:
        raise ApiError(ErrorCode.FIRMWARE_NOT_FOUND, f"no release {release_id_!r}") from None


def _stored_manifest(release: Release) -> ReleaseManifest:
    """The manifest inside a stored envelope (verified when it was uploaded)."""
    envelope = parse_json(release.envelope)
    return ReleaseManifest.model_validate(parse_json(base64.b64decode(envelope["payload"])))


# -- releases ---------------------------------------------------------------------------------


@router.post("/releases", status_code=201, openapi_extra=json_body(ReleaseCreate))
async def create_release(request: Request, ctx: Ctx, who: Admin, firmware: Hosting) -> Any:
    body, _ = await read_json(request, ReleaseCreate)

    async def refuse(message: str) -> ApiError:
        await _audit(ctx, who, "release.create", ErrorCode.FIRMWARE_SIGNATURE_INVALID)
        return ApiError(ErrorCode.FIRMWARE_SIGNATURE_INVALID, message)

    if not firmware.trusted_keys:
        raise await refuse(
            "no release public keys are configured on this server, so no release can be "
            "verified; set NAVIGN_SERVER_RELEASE_PUBLIC_KEYS"
        )
    try:
        raw = (
            body.envelope.encode("utf-8")
            if isinstance(body.envelope, str)
            else canonical_json(body.envelope)
        )
        verified = open_envelope(raw, firmware.trusted_keys)
        stored = envelope_bytes(parse_json(raw))
    except (ManifestError, CanonicalJSONError, RecursionError) as exc:
        raise await refuse(f"release refused: {exc}") from None
    manifest = verified.manifest
    if manifest.total_size == 0:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "an app release of 0 bytes cannot be hosted")
    release = Release(
        release_id=release_id(manifest, verified.manifest_sha256),
        name=manifest.name,
        version=manifest.version,
        target=manifest.target.value,
        kind=manifest.kind,
        secure_version=manifest.secure_version,
        min_previous_version=manifest.min_previous_version,
        manifest_sha256=verified.manifest_sha256,
        envelope=stored,
        artifact_size=manifest.total_size,
        device_type=body.device_type,
        channel=body.channel.value,
        changelog=tuple(body.changelog),
        compatible_hardware=tuple(body.compatible_hardware),
        status=ReleaseStatus.PENDING_UPLOAD,
        created_at=ctx.clock(),
        created_by=who.name,
    )
    try:
        await ctx.store.create_release(release)
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, f"release already exists: {exc}") from None
    await _audit(
        ctx,
        who,
        "release.create",
        release_id=release.release_id,
        manifest_sha256=release.manifest_sha256,
        signed_by=list(verified.signed_by),
    )
    return _release_json(release)


@router.put("/releases/{release_id}/artifact", openapi_extra=ARTIFACT_BODY)
async def upload_artifact(
    release_id: IdPath, request: Request, ctx: Ctx, who: Admin, firmware: Hosting
) -> Any:
    release = await _release(ctx, release_id)
    if release.status is not ReleaseStatus.PENDING_UPLOAD:
        raise ApiError(
            ErrorCode.CONFLICT, f"release {release_id!r} is {release.status.value}, not pending"
        )
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != ARTIFACT_MEDIA_TYPE:
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be {ARTIFACT_MEDIA_TYPE}"
        )
    too_large = ApiError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the manifest declares a {release.artifact_size}-byte artifact",
        details={"size": release.artifact_size},
    )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > release.artifact_size:
        raise too_large  # refused before a byte of the body is read
    check = ArtifactCheck(_stored_manifest(release))

    async def verified_chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                check.feed(chunk)
                yield chunk
        check.finish()

    try:
        blob = await firmware.blobs.put(verified_chunks())
    except ArtifactTooLargeError:
        raise too_large from None
    except ArtifactMismatchError as exc:
        await _audit(
            ctx, who, "release.upload", ErrorCode.FIRMWARE_SIGNATURE_INVALID, release_id=release_id
        )
        raise ApiError(
            ErrorCode.FIRMWARE_SIGNATURE_INVALID,
            f"artifact does not match the signed manifest: {exc}",
            details={"part": exc.path},
        ) from None
    except ClientDisconnect:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "the upload was interrupted") from None
    try:
        updated = await ctx.store.mark_release_uploaded(release_id, blob.sha256, ctx.clock())
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, f"release is no longer pending: {exc}") from None
    await _audit(ctx, who, "release.upload", release_id=release_id, sha256=blob.sha256)
    return _release_json(updated)


@router.get("/releases")
async def list_releases(
    ctx: Ctx,
    who: Admin,
    target: Annotated[Chip | None, Query()] = None,
    channel: Annotated[FirmwareChannel | None, Query()] = None,
    status: Annotated[ReleaseStatus | None, Query()] = None,
    device_type: Annotated[str | None, Query(max_length=64, pattern=KEYWORD_PATTERN)] = None,
) -> Any:
    releases = await ctx.store.list_releases(
        target=None if target is None else target.value,
        device_type=device_type,
        channel=None if channel is None else channel.value,
        status=status,
    )
    return {"releases": [_release_json(r) for r in releases]}


@router.get("/releases/{release_id}")
async def get_release(release_id: IdPath, ctx: Ctx, who: Admin) -> Any:
    return _release_json(await _release(ctx, release_id))


@router.post("/releases/{release_id}/withdraw")
async def withdraw_release(release_id: IdPath, ctx: Ctx, who: Admin) -> Any:
    try:
        release = await ctx.store.withdraw_release(release_id, ctx.clock())
    except NotFoundError:
        raise ApiError(ErrorCode.FIRMWARE_NOT_FOUND, f"no release {release_id!r}") from None
    await _audit(ctx, who, "release.withdraw", release_id=release_id)
    return _release_json(release)


# -- assignments ------------------------------------------------------------------------------


def _assignment_json(a: ReleaseAssignment) -> dict[str, Any]:
    return {
        "assignment_id": a.assignment_id,
        "entity_id": a.entity_id,
        "release_id": a.release_id,
        "priority": a.priority,
        "policy": a.policy,
        "seq": a.seq,
        "created_at": rfc3339(a.created_at),
        "created_by": a.created_by,
    }


def _check_targets(policy: RolloutPolicyInput, release: Release) -> None:
    targets = policy.targets
    if targets is None:
        return
    if targets.chips and release.target not in targets.chips:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"policy.targets.chips leaves out the release's target {release.target}",
        )
    if targets.device_types and release.device_type not in targets.device_types:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"policy.targets.device_types leaves out the release's {release.device_type}",
        )


@router.post(
    "/entities/{entity_id}/firmware-assignments",
    status_code=201,
    openapi_extra=json_body(AssignmentCreate),
)
async def assign_release(entity_id: IdPath, request: Request, ctx: Ctx, who: Admin) -> Any:
    body, _ = await read_json(request, AssignmentCreate)
    try:
        await ctx.store.get_entity(entity_id)
    except NotFoundError:
        raise ApiError(ErrorCode.ENTITY_NOT_FOUND, f"entity {entity_id!r} does not exist") from None
    release = await _release(ctx, body.release_id)
    if release.status is not ReleaseStatus.AVAILABLE:
        raise ApiError(
            ErrorCode.CONFLICT, f"release {release.release_id!r} is {release.status.value}"
        )
    _check_targets(body.policy, release)
    policy = body.policy.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    info = firmware_info(release, ctx.settings.public_url).model_dump(mode="json")
    assignment_id = f"fwa-{secrets.token_hex(8)}"
    event = FirmwareUpdateEvent.model_validate(
        {
            **info,
            "priority": body.priority.value,
            "rollout_strategy": policy,
            "assignment_id": assignment_id,
        }
    )
    now = ctx.clock()
    assignment = ReleaseAssignment(
        entity_id=entity_id,
        assignment_id=assignment_id,
        release_id=release.release_id,
        policy=policy,
        priority=body.priority.value,
        created_at=now,
        created_by=who.name,
    )
    try:
        stored = await ctx.store.assign_release(
            assignment, event.model_dump(mode="json", exclude_unset=True, exclude_none=True), now
        )
    except NotFoundError as exc:
        code = ErrorCode.ENTITY_NOT_FOUND if exc.kind == "entity" else ErrorCode.FIRMWARE_NOT_FOUND
        raise ApiError(code, str(exc)) from None
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
    await _audit(
        ctx,
        who,
        "firmware.assign",
        entity_id=entity_id,
        release_id=release.release_id,
        assignment_id=assignment.assignment_id,
        seq=stored.seq,
    )
    return _assignment_json(dataclasses.replace(assignment, seq=stored.seq))


@router.get("/entities/{entity_id}/firmware-assignments")
async def list_assignments(entity_id: IdPath, ctx: Ctx, who: Admin) -> Any:
    try:
        assignments = await ctx.store.list_assignments(entity_id)
    except NotFoundError:
        raise ApiError(ErrorCode.ENTITY_NOT_FOUND, f"entity {entity_id!r} does not exist") from None
    return {"assignments": [_assignment_json(a) for a in assignments]}
