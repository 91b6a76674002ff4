"""``POST /beacons/{beacon_id}/report`` on the gateway's HTTP port (protocol §8.2).

Why: a beacon with Wi-Fi checks in here every 30 s and after every update step. Its report goes
into the inventory, its update progress and results into the rollout engine, and the answer
carries its assignment (the release it should install, if any) and the acknowledgement of the
result it sent. The report is also the beacon's health check-in (§8.6): a 200 answer is what
lets a beacon on trial commit, so an answer is sent only after the report was applied.

No auth, like the firmware endpoints (§8.1): the mall network only. A body over 4 KiB, not JSON,
or not a report gets 413/422 in the error envelope and changes nothing.

Public: :class:`BeaconReport`, :func:`add_beacon_routes`, :data:`MAX_REPORT_BYTES`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from navign_gateway.beacons import BeaconInventory
from navign_gateway.firmware_http import error_response, request_id
from navign_proto.wire import ErrorCode

log = logging.getLogger(__name__)

MAX_REPORT_BYTES: Final = 4096
_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class UpdateResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["app", "image"]
    version: Short
    manifest_sha256: Sha256Hex
    outcome: Literal["installed", "committed", "rolled_back", "refused", "failed"]
    reason: Annotated[str, StringConstraints(max_length=128)] | None = None


class BeaconReport(BaseModel):
    """A beacon's check-in (§8.2). Unknown fields are ignored (newer firmware may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    beacon_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
    chip: Short
    app_version: Short | None = None
    firmware_version: Short | None = None
    secure_version: int | None = Field(None, ge=0, le=2**31)
    ota_state: Literal["idle", "receiving", "verifying", "installing", "trial", "failed"] = "idle"
    trial: Literal["app", "image"] | None = None
    result: UpdateResult | None = None
    uptime_s: int | None = Field(None, ge=0)
    free_heap: int | None = Field(None, ge=0)
    config_errors: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=32
    )


Assign = Callable[[dict[str, Any]], Awaitable[dict[str, str] | None]]


def add_beacon_routes(app: web.Application, inventory: BeaconInventory, assign: Assign) -> None:
    """``assign(report)`` applies a report to the rollouts and returns the assignment."""

    async def report(request: web.Request) -> web.Response:
        rid = request_id(request)
        beacon_id = request.match_info["beacon_id"]
        if not _ID_RE.fullmatch(beacon_id):
            return error_response(ErrorCode.VALIDATION_ERROR, "malformed beacon id", rid)
        if request.content_length is not None and request.content_length > MAX_REPORT_BYTES:
            return error_response(
                ErrorCode.PAYLOAD_TOO_LARGE, f"a report is at most {MAX_REPORT_BYTES} bytes", rid
            )
        body = b""
        while len(body) <= MAX_REPORT_BYTES:
            chunk = await request.content.read(MAX_REPORT_BYTES + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_REPORT_BYTES:
            return error_response(
                ErrorCode.PAYLOAD_TOO_LARGE, f"a report is at most {MAX_REPORT_BYTES} bytes", rid
            )
        try:
            parsed = BeaconReport.model_validate_json(body)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "body"
            message = "not JSON" if problem["type"] == "json_invalid" else problem["msg"]
            return error_response(ErrorCode.VALIDATION_ERROR, f"{where}: {message}", rid)
        if parsed.beacon_id != beacon_id:
            return error_response(
                ErrorCode.VALIDATION_ERROR, "beacon_id differs from the one in the path", rid
            )
        data = parsed.model_dump(mode="json")
        inventory.record_report(data, transport="wifi")
        assignment = await assign(data)
        answer = {
            "assignment": assignment,
            "ack": parsed.result.manifest_sha256 if parsed.result is not None else None,
        }
        return web.Response(
            body=json.dumps(answer, separators=(",", ":")).encode(),
            content_type="application/json",
            headers={"X-Request-ID": rid},
        )

    app.router.add_post("/beacons/{beacon_id}/report", report)
