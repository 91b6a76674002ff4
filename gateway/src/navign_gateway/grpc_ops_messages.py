"""The gateway's records as ``navign.gateway.v1`` messages, and the opaque page tokens of its
``List*`` calls (protocol §7.2).

- a beacon's ``ota_state`` is its rollout entry's state while a rollout drives it; otherwise
  what the beacon itself reports while it installs something no rollout of this gateway drives
  (``receiving`` → TRANSFERRING, ``verifying``, ``installing``, ``trial`` → REBOOTING), and IDLE
  for everything else (``idle``, ``failed``: no update in progress);
- a rollout entry's ``failure_reason`` is shown only when the entry is FAILED or ROLLED_BACK
  (a retried attempt's reason stays in the gateway's log and its reports to the server);
- a page token is base64url of a small JSON document naming the listing, a hash of its
  filters and the sort key of the last item returned (keyset paging: an item added or removed
  between two pages neither repeats nor hides another). Clients must treat it as opaque.

Public: :func:`beacon_message`, :func:`beacon_ota_state`, :func:`rollout_beacon_message`,
:func:`rollout_message`, :func:`status_message`, :class:`ReleaseCatalog`, :class:`Page`,
:func:`page_of`, :func:`page_size`, :class:`PageTokenError`, :data:`DEFAULT_PAGE_SIZE`,
:data:`MAX_PAGE_SIZE`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from navign_gateway.beacons import BeaconRecord
from navign_gateway.firmware import CachedRelease, FirmwareCache
from navign_gateway.rollout import Entry, EntryState, Rollout, RolloutState
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

#: A beacon's own OTA states (§8.2, §8.4) that mean an update is under way.
_BEACON_OTA: Final = {
    "receiving": pb.OTA_STATE_TRANSFERRING,
    "verifying": pb.OTA_STATE_VERIFYING,
    "installing": pb.OTA_STATE_INSTALLING,
    "trial": pb.OTA_STATE_REBOOTING,
}
_ENTRY_OTA: Final = {
    EntryState.PENDING: pb.OTA_STATE_PENDING,
    EntryState.OFFERED: pb.OTA_STATE_OFFERED,
    EntryState.TRANSFERRING: pb.OTA_STATE_TRANSFERRING,
    EntryState.VERIFYING: pb.OTA_STATE_VERIFYING,
    EntryState.INSTALLING: pb.OTA_STATE_INSTALLING,
    EntryState.REBOOTING: pb.OTA_STATE_REBOOTING,
    EntryState.CONFIRMED: pb.OTA_STATE_CONFIRMED,
    EntryState.FAILED: pb.OTA_STATE_FAILED,
    EntryState.ROLLED_BACK: pb.OTA_STATE_ROLLED_BACK,
}
_ROLLOUT_STATES: Final = {
    RolloutState.PENDING: pb.ROLLOUT_STATE_PENDING,
    RolloutState.RUNNING: pb.ROLLOUT_STATE_RUNNING,
    RolloutState.HOLDING: pb.ROLLOUT_STATE_HOLDING,
    RolloutState.PAUSED: pb.ROLLOUT_STATE_PAUSED,
    RolloutState.HALTED: pb.ROLLOUT_STATE_HALTED,
    RolloutState.ABORTED: pb.ROLLOUT_STATE_ABORTED,
    RolloutState.COMPLETED: pb.ROLLOUT_STATE_COMPLETED,
}
#: Uplink states as :class:`navign_gateway.uplink.UplinkState` names them.
_UPLINK_STATES: Final = {
    "CONNECTED": pb.UPLINK_STATE_CONNECTED,
    "CONNECTING": pb.UPLINK_STATE_CONNECTING,
    "OFFLINE": pb.UPLINK_STATE_OFFLINE,
    "PENDING_APPROVAL": pb.UPLINK_STATE_PENDING_APPROVAL,
    "REFUSED": pb.UPLINK_STATE_REFUSED,
}
_TRANSPORTS: Final = {"wifi": pb.TRANSPORT_WIFI, "ble": pb.TRANSPORT_BLE}
_KINDS: Final = {"app": pb.FIRMWARE_KIND_APP, "image": pb.FIRMWARE_KIND_IMAGE}
_SHOWN_REASON: Final = frozenset({EntryState.FAILED, EntryState.ROLLED_BACK})


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def entry_ota_state(state: EntryState | str) -> pb.OtaState:
    return _ENTRY_OTA[EntryState(state)]


def rollout_state(state: RolloutState) -> pb.RolloutState:
    return _ROLLOUT_STATES[state]


def firmware_kind(kind: str) -> pb.FirmwareKind:
    return _KINDS.get(kind, pb.FIRMWARE_KIND_UNSPECIFIED)


def cache_usage_message(cache: FirmwareCache) -> pb.FirmwareCacheUsage:
    used, budget = cache.usage()
    return pb.FirmwareCacheUsage(
        used_bytes=used, capacity_bytes=budget, release_count=len(cache.list())
    )


def beacon_ota_state(record: BeaconRecord) -> pb.OtaState:
    """See the module's docstring."""
    if record.rollout_state:
        try:
            return entry_ota_state(record.rollout_state)
        except ValueError:
            return pb.OTA_STATE_UNSPECIFIED
    return _BEACON_OTA.get(record.ota_state, pb.OTA_STATE_IDLE)


def beacon_message(record: BeaconRecord, now: float) -> pb.Beacon:
    beacon = pb.Beacon(
        beacon_id=record.beacon_id,
        mac=(record.mac or "").upper(),
        chip_target=record.chip or "",
        firmware_version=record.firmware_version or "",
        app_version=record.app_version or "",
        ota_state=beacon_ota_state(record),
        rollout_id=record.rollout_id,
        transport=_TRANSPORTS.get(record.transport, pb.TRANSPORT_UNSPECIFIED),
        online=record.online(now),
    )
    if record.rssi is not None:
        beacon.rssi_dbm = record.rssi
    if record.last_seen:
        beacon.last_seen.CopyFrom(timestamp(record.last_seen))
    return beacon


def rollout_beacon_message(entry: Entry) -> pb.RolloutBeacon:
    return pb.RolloutBeacon(
        beacon_id=entry.beacon_id,
        wave=entry.wave,
        state=entry_ota_state(entry.state),
        attempts=entry.attempts,
        failure_reason=entry.failure_reason if entry.state in _SHOWN_REASON else "",
        bytes_transferred=entry.bytes_transferred,
        from_version=entry.from_version,
        updated_at=timestamp(entry.updated_at) if entry.updated_at else None,
    )


def rollout_message(
    rollout: Rollout,
    release: pb.Release | None,
    states: Iterable[EntryState],
    *,
    max_concurrent: int,
    entries: Iterable[Entry] = (),
) -> pb.Rollout:
    """The rollout, its counts from ``states`` (one per entry) and the given ``entries``."""
    counts = pb.RolloutCounts()
    for state in states:
        setattr(counts, state.value, getattr(counts, state.value) + 1)
        counts.total += 1
    policy = rollout.policy
    return pb.Rollout(
        rollout_id=rollout.rollout_id,
        release=release,
        policy=pb.RolloutPolicy(
            wave_count=rollout.wave_count,
            max_concurrent=max_concurrent,
            max_failure_ratio=policy.failure_threshold,
            manual_approval=policy.manual_approval,
            max_attempts=policy.max_attempts,
            summary=policy.summary(),
        ),
        state=rollout_state(rollout.state),
        current_wave=rollout.current_wave,
        counts=counts,
        beacons=[rollout_beacon_message(e) for e in sorted(entries, key=lambda e: e.beacon_id)],
        state_reason=rollout.state_reason,
        created_at=timestamp(rollout.created_at) if rollout.created_at else None,
        updated_at=timestamp(rollout.updated_at) if rollout.updated_at else None,
    )


def status_message(status: Mapping[str, Any], cache: FirmwareCache) -> pb.GatewayStatus:
    """The gateway's status from the mapping :meth:`navign_gateway.daemon.Gateway.status`
    returns (``gateway``, ``entity``, ``version``, ``uptime_seconds``, ``uplink``,
    ``refused``, ``sync: {seq, last_success}``, ``checksum``, and optionally ``checksums``:
    collection name → checksum); the firmware cache's usage is read from ``cache``."""
    sync = status.get("sync") or {}
    uplink = str(status.get("uplink") or "")
    message = pb.GatewayStatus(
        gateway_id=str(status.get("gateway") or ""),
        entity_id=str(status.get("entity") or ""),
        version=str(status.get("version") or ""),
        uptime=Duration(seconds=int(status.get("uptime_seconds") or 0)),
        uplink_state=_UPLINK_STATES.get(uplink, pb.UPLINK_STATE_UNSPECIFIED),
        uplink_detail=str(status.get("refused") or ""),
        last_sync_sequence=int(sync.get("seq") or 0),
        checksums=pb.DataChecksums(
            global_checksum=str(status.get("checksum") or ""),
            collections={str(k): str(v) for k, v in (status.get("checksums") or {}).items()},
        ),
        firmware_cache=cache_usage_message(cache),
    )
    if sync.get("last_success") is not None:
        message.last_sync_time.CopyFrom(timestamp(float(sync["last_success"])))
    return message


class ReleaseCatalog:
    """``Release`` messages of the cache's releases. The manifest's ``min_previous_version``
    is not in the cache's record: it is read from the release's envelope on disk, once per
    release, in a worker thread (:meth:`load`), and remembered."""

    def __init__(self, cache: FirmwareCache) -> None:
        self._cache = cache
        self._min_previous: dict[tuple[str, str], str] = {}

    async def load(self, releases: Iterable[CachedRelease | None]) -> None:
        """Read what is not known yet of ``releases``; forget releases the cache dropped."""
        missing = [
            r
            for r in releases
            if r is not None and (r.firmware_id, r.manifest_sha256) not in self._min_previous
        ]
        if missing:
            found = await asyncio.to_thread(lambda: [_min_previous(r) for r in missing])
            for release, value in zip(missing, found, strict=True):
                self._min_previous[(release.firmware_id, release.manifest_sha256)] = value
        if len(self._min_previous) > 2 * len(self._cache.list()) + 16:
            kept = {(r.firmware_id, r.manifest_sha256) for r in self._cache.list()}
            self._min_previous = {k: v for k, v in self._min_previous.items() if k in kept}

    def message(self, release: CachedRelease) -> pb.Release:
        return pb.Release(
            release_id=release.firmware_id,
            name=release.name,
            version=release.version,
            secure_version=release.secure_version,
            target=release.target,
            kind=firmware_kind(release.kind),
            size_bytes=release.size,
            manifest_sha256=release.manifest_sha256,
            verified=True,  # the cache holds nothing else (§6.5)
            cached_at=timestamp(release.cached_at.timestamp()),
            min_previous_version=self._min_previous.get(
                (release.firmware_id, release.manifest_sha256), ""
            ),
        )

    def of_rollout(self, rollout: Rollout) -> pb.Release:
        """The rollout's release: the cached one, or what the rollout knows of a release the
        cache does not hold (yet, or any more), marked unverified."""
        cached = self._cache.get(rollout.firmware_id)
        if cached is not None:
            return self.message(cached)
        return pb.Release(
            release_id=rollout.firmware_id,
            version=rollout.version,
            target=rollout.target,
            kind=firmware_kind(rollout.kind),
            manifest_sha256=rollout.manifest_sha256,
            verified=False,
        )


def _min_previous(release: CachedRelease) -> str:
    """``min_previous_version`` of the manifest in the release's envelope ("" if none). The
    cache verified the envelope before keeping it; this only reads it."""
    try:
        envelope = json.loads(release.envelope_path.read_bytes())
        manifest = json.loads(base64.b64decode(envelope["payload"], validate=True))
        return str(manifest.get("min_previous_version") or "")
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        log.debug("release %s: min_previous_version unreadable: %s", release.firmware_id, exc)
        return ""


# -- paging ------------------------------------------------------------------------------------


class PageTokenError(ValueError):
    """A page token that is not one of this listing's, or was issued for other filters."""


T = TypeVar("T")
SortKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str
    #: Items matching the filters over all pages.
    total: int


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is capped (§7.2)."""
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def _filter_hash(listing: str, filters: object) -> str:
    text = json.dumps([listing, filters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode(listing: str, filters: object, after: SortKey) -> str:
    document = {"l": listing, "f": _filter_hash(listing, filters), "a": list(after)}
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(token: str, listing: str, filters: object) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
        found_listing, found_filters, after = document["l"], document["f"], document["a"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise PageTokenError("page_token: not a page token of this gateway") from None
    if found_listing != listing or not isinstance(after, list):
        raise PageTokenError(f"page_token: not a page token of {listing}")
    if found_filters != _filter_hash(listing, filters):
        raise PageTokenError(
            "page_token: was issued for other filters; repeat the first call with these"
        )
    return tuple(after)


def page_of(
    items: Sequence[T],
    key: Callable[[T], SortKey],
    *,
    listing: str,
    filters: object,
    requested_size: int,
    token: str,
) -> Page[T]:
    """One page of ``items`` (already filtered) in ``key`` order. ``filters`` is any
    JSON-able value naming the filters (normalised: the same filters give the same value);
    a token issued under other filters raises :class:`PageTokenError`. Sort keys must be
    JSON-able and compare equal after a round trip through JSON (str, int, float)."""
    ordered = sorted(items, key=key)
    if token:
        after = _decode(token, listing, filters)
        try:
            ordered = [item for item in ordered if key(item) > after]
        except TypeError:  # a key of another shape than this listing's
            raise PageTokenError(f"page_token: not a page token of {listing}") from None
    size = page_size(requested_size)
    chosen = ordered[:size]
    more = len(ordered) > size
    next_token = _encode(listing, filters, key(chosen[-1])) if more else ""
    return Page(chosen, next_token, len(items))
