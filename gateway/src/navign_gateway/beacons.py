"""The beacon inventory: every beacon the gateway has heard from, over Wi-Fi (§8.2 reports) or
BLE (§8.4 advertisements, §8.5 info reads), with its versions, OTA state, RSSI and last seen.

Why it exists: the rollout engine needs to know which beacons run what and how to reach them,
the admin tower lists them (``navign.gateway.v1.BeaconService``), and the server receives them
(``/reports/beacons``). It lives in memory (a scanner hears each beacon several times a second)
and is written to SQLite (component ``beacons``) in batches: a record changed in memory is
flushed within :data:`FLUSH_SECONDS`, so a power cut loses at most that much of RSSI and
last-seen times, never a beacon.

BLE advertisements carry no beacon id (§8.4): an advertiser is identified by its address (known
from an earlier sighting, or the MAC in the mall copy), else by the iBeacon major/minor of a mall
beacon whose id hash matches, else by the id hash of a known beacon. One still unknown is
returned as unidentified, and the BLE side reads its info characteristic.

Public: :class:`BeaconInventory`, :class:`BeaconRecord`, :data:`COMPONENT`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from navign_gateway.ble.frames import IBeacon, StatusFrame, beacon_hash
from navign_gateway.db import Database

log = logging.getLogger(__name__)

COMPONENT: Final = "beacons"
FLUSH_SECONDS: Final = 5.0
#: A beacon heard within this long is online.
ONLINE_SECONDS: Final = 120.0
#: How long a Wi-Fi report makes Wi-Fi the way to reach a beacon (it reports every 30 s).
WIFI_FRESH_SECONDS: Final = 90.0

MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE beacon_inventory (
        beacon_id TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        last_seen REAL NOT NULL
    ) WITHOUT ROWID;
    """,
]

Listener = Callable[["BeaconRecord", "BeaconRecord | None"], None]


@dataclass(slots=True)
class BeaconRecord:
    beacon_id: str
    mac: str | None = None
    chip: str | None = None
    device_type: str = "beacon"
    firmware_version: str | None = None
    app_version: str | None = None
    secure_version: int | None = None
    #: As the beacon says (§8.2 / §8.4): idle, receiving, verifying, installing, trial, failed.
    ota_state: str = "idle"
    trial: str | None = None
    rssi: int | None = None
    last_seen: float = 0.0
    #: How the gateway last heard from it: "wifi" or "ble".
    transport: str = ""
    wifi_seen: float | None = None
    ble_seen: float | None = None
    ble_address: str | None = None
    flags: int | None = None
    #: The last §8.2 ``result`` it sent (or the info characteristic showed).
    result: dict[str, Any] | None = None
    config_errors: list[str] = field(default_factory=list)
    #: The rollout updating it now, set by the rollout engine ("" when none).
    rollout_id: str = ""
    #: The entry state in that rollout (pending ... rolled_back), "" when none.
    rollout_state: str = ""
    #: The advertised status frame's firmware and app cores, for confirmation (§8.4).
    adv_firmware: tuple[int, int, int] | None = None
    adv_app: tuple[int, int, int] | None = None

    def online(self, now: float) -> bool:
        return now - self.last_seen <= ONLINE_SECONDS

    def reachable_over_wifi(self, now: float) -> bool:
        return self.wifi_seen is not None and now - self.wifi_seen <= WIFI_FRESH_SECONDS

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__slots__}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BeaconRecord:
        known = {k: v for k, v in data.items() if k in cls.__slots__}
        for key in ("adv_firmware", "adv_app"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)


class BeaconInventory:
    """The inventory; reads are from memory, writes are flushed in batches."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._records: dict[str, BeaconRecord] = {}
        self._by_address: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._listeners: list[Listener] = []
        #: Mall copy beacons: id -> (chip, mac, major, minor), refreshed by the daemon.
        self._mall: dict[str, tuple[str, str, int, int]] = {}
        self._mall_by_mac: dict[str, str] = {}
        #: ``major << 16 | minor`` -> id (an int key: no tuple per beacon).
        self._mall_by_numbers: dict[int, str] = {}

    async def open(self) -> None:
        await self._db.migrate(COMPONENT, MIGRATIONS)
        async with self._db.reader.execute("SELECT record FROM beacon_inventory") as cursor:
            rows = await cursor.fetchall()
        for (text,) in rows:
            try:
                record = BeaconRecord.from_json(json.loads(text))
            except (ValueError, TypeError) as exc:
                log.warning("inventory: a stored record is unreadable (%s); skipped", exc)
                continue
            self._records[record.beacon_id] = record
            if record.ble_address:
                self._by_address[record.ble_address] = record.beacon_id

    # -- reads --------------------------------------------------------------------------------

    def get(self, beacon_id: str) -> BeaconRecord | None:
        record = self._records.get(beacon_id)
        return None if record is None else replace(record)

    def all(self) -> list[BeaconRecord]:
        return [replace(r) for _, r in sorted(self._records.items())]

    def mall_beacons(self) -> dict[str, tuple[str, str, int, int]]:
        return dict(self._mall)

    def __len__(self) -> int:
        return len(self._records)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """``listener(record, before)`` after every change (``before`` None: a new beacon)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- mall copy ------------------------------------------------------------------------------

    def set_mall_beacons(self, beacons: Iterable[tuple[str, str, str, int, int]]) -> None:
        """The mall copy's beacons as ``(id, chip, mac, major, minor)``
        (:meth:`MallCopy.beacon_identities`). Kept compact: a mall of 30,000 beacons holds
        about 12 MB here (docs/benchmarks.md, the gateway's idle memory)."""
        mall: dict[str, tuple[str, str, int, int]] = {}
        for beacon_id, chip, mac, major, minor in beacons:
            mall[beacon_id] = (sys.intern(chip), mac.upper(), major, minor)
        self._mall = mall
        self._mall_by_mac = {mac: bid for bid, (_, mac, _, _) in mall.items()}
        self._mall_by_numbers = {ma << 16 | mi: bid for bid, (_, _, ma, mi) in mall.items()}

    # -- writes ---------------------------------------------------------------------------------

    def _change(self, beacon_id: str, update: Callable[[BeaconRecord], None]) -> BeaconRecord:
        current = self._records.get(beacon_id)
        before = None if current is None else replace(current)
        record = current if current is not None else BeaconRecord(beacon_id)
        if current is None:
            mall = self._mall.get(beacon_id)
            if mall is not None:
                record.chip, record.mac = mall[0], mall[1]
        update(record)
        self._records[beacon_id] = record
        if record.ble_address:
            self._by_address[record.ble_address] = beacon_id
        self._dirty.add(beacon_id)
        snapshot = replace(record)
        for listener in list(self._listeners):
            try:
                listener(snapshot, before)
            except Exception:  # a listener's bug must not stop the inventory
                log.exception("inventory listener failed")
        return snapshot

    def record_report(self, report: dict[str, Any], *, transport: str = "wifi") -> BeaconRecord:
        """A §8.2 report (already validated), received over Wi-Fi or read over BLE (info)."""
        now = self._clock()

        def update(r: BeaconRecord) -> None:
            r.chip = report.get("chip") or r.chip
            r.app_version = report.get("app_version") or r.app_version
            r.firmware_version = report.get("firmware_version") or r.firmware_version
            if report.get("secure_version") is not None:
                r.secure_version = int(report["secure_version"])
            r.ota_state = report.get("ota_state") or "idle"
            r.trial = report.get("trial")
            r.result = report.get("result")
            r.config_errors = list(report.get("config_errors") or [])
            r.last_seen = now
            r.transport = transport
            if transport == "wifi":
                r.wifi_seen = now

        return self._change(str(report["beacon_id"]), update)

    def identify(
        self, address: str, status: StatusFrame | None, ibeacon: IBeacon | None
    ) -> str | None:
        """The beacon id behind a BLE advertiser, or None when it cannot be told yet."""
        address = address.upper()
        known = self._by_address.get(address) or self._mall_by_mac.get(address)
        if known is not None:
            return known
        if status is None:
            return None
        if ibeacon is not None:
            numbered = self._mall_by_numbers.get(ibeacon.major << 16 | ibeacon.minor)
            if numbered is not None and beacon_hash(numbered) == status.id_hash:
                return numbered
        matches = [
            bid for bid in {*self._records, *self._mall} if beacon_hash(bid) == status.id_hash
        ]
        return matches[0] if len(matches) == 1 else None

    def record_advertisement(
        self, beacon_id: str, address: str, status: StatusFrame | None, rssi: int | None
    ) -> BeaconRecord:
        now = self._clock()

        def update(r: BeaconRecord) -> None:
            r.ble_address = address.upper()
            r.mac = r.mac or address.upper()
            r.rssi = rssi
            r.last_seen = now
            r.ble_seen = now
            if not r.reachable_over_wifi(now):
                r.transport = "ble"
            if status is not None:
                r.flags = status.flags
                r.adv_firmware, r.adv_app = status.firmware, status.app
                if status.ota_state != "unknown":
                    r.ota_state = status.ota_state
                r.trial = r.trial if status.trial else None

        return self._change(beacon_id, update)

    def set_rollout(self, beacon_id: str, rollout_id: str, state: str) -> None:
        if beacon_id not in self._records and beacon_id not in self._mall:
            return

        def update(r: BeaconRecord) -> None:
            r.rollout_id, r.rollout_state = rollout_id, state

        current = self._records.get(beacon_id)
        if current is not None and (current.rollout_id, current.rollout_state) == (
            rollout_id,
            state,
        ):
            return
        self._change(beacon_id, update)

    async def flush(self) -> int:
        """Write the changed records; returns how many."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        rows = [
            (bid, json.dumps(self._records[bid].to_json()), self._records[bid].last_seen)
            for bid in sorted(dirty)
            if bid in self._records
        ]
        try:
            async with self._db.transaction() as conn:
                await conn.executemany(
                    "INSERT INTO beacon_inventory (beacon_id, record, last_seen) VALUES (?, ?, ?)"
                    " ON CONFLICT (beacon_id) DO UPDATE SET record = excluded.record,"
                    " last_seen = excluded.last_seen",
                    rows,
                )
        except BaseException:
            self._dirty |= dirty  # written next time
            raise
        return len(rows)

    async def run_flusher(self) -> None:
        """Flush every :data:`FLUSH_SECONDS` until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                try:
                    await self.flush()
                except Exception as exc:  # noqa: BLE001 - a full disk: keep it, retry later
                    log.warning("inventory: flush failed: %s", exc)
        finally:
            await asyncio.shield(self.flush())
