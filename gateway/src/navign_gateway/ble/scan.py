"""The BLE inventory: scanning the beacons' advertisements into :class:`BeaconInventory`.

A detection callback (bleak's ``BleakScanner``) decodes the iBeacon and Navign status frames of
each advertisement (§8.4) and records the beacon's versions, OTA state, flags and RSSI. An
advertiser the inventory cannot name yet (a beacon not in the mall copy, never heard over Wi-Fi)
gets one connection to read its info characteristic (the §8.2 report as JSON, with its id), within
the BLE connection limit, retried with backoff, at most :data:`MAX_PENDING_READS` queued.

The scanner restarts itself when the adapter goes away (BlueZ restarted, adapter reset), with
capped backoff; a gateway without Bluetooth logs it once and keeps everything else running.

Public: :class:`BeaconScanner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from navign_gateway.backoff import Backoff, FailureLog
from navign_gateway.beacon_http import BeaconReport
from navign_gateway.beacons import BeaconInventory
from navign_gateway.ble.frames import NAVIGN_SERVICE, parse_ibeacon, parse_status, version_core
from navign_gateway.ble.push import INFO, BleCentral, PushFailedError

log = logging.getLogger(__name__)

MAX_PENDING_READS: Final = 64
#: An advertiser is read (unnamed, or showing other versions than recorded) at most this often.
READ_RETRY_SECONDS: Final = 20.0
#: Rollout states in which a push may be connected to the beacon (a beacon serves one central).
PUSHING: Final = frozenset({"offered", "transferring", "verifying", "installing", "rebooting"})


class BeaconScanner:
    def __init__(self, central: BleCentral, inventory: BeaconInventory) -> None:
        self._central = central
        self._inventory = inventory
        self._reads: asyncio.Queue[str] = asyncio.Queue(maxsize=MAX_PENDING_READS)
        self._read_at: dict[str, float] = {}
        self._failures = FailureLog(log, "BLE scanner")
        self.detections = 0

    def detected(self, device: BLEDevice, adv: AdvertisementData) -> None:
        status = parse_status(adv.service_data)
        ibeacon = parse_ibeacon(adv.manufacturer_data)
        if status is None and NAVIGN_SERVICE not in adv.service_data and ibeacon is None:
            return  # not a Navign beacon
        self.detections += 1
        address = device.address.upper()
        beacon_id = self._inventory.identify(address, status, ibeacon)
        if beacon_id is None:
            self._read_later(address)
            return
        record = self._inventory.record_advertisement(beacon_id, address, status, adv.rssi)
        busy = record.rollout_state in PUSHING  # a push holds the beacon's one connection
        if status is not None and not busy and not record.reachable_over_wifi(time.time()):
            # The frame carries only version cores: a change (an update, a rollback) is read in
            # full from the beacon's info characteristic.
            app, firmware = (
                version_core(record.app_version or ""),
                version_core(record.firmware_version or ""),
            )
            if (app is None or app[0] != status.app) or (
                firmware is None or firmware[0] != status.firmware
            ):
                self._read_later(address)

    def _read_later(self, address: str) -> None:
        now = time.monotonic()
        if now - self._read_at.get(address, -READ_RETRY_SECONDS) >= READ_RETRY_SECONDS:
            self._read_at[address] = now
            with contextlib.suppress(asyncio.QueueFull):
                self._reads.put_nowait(address)

    async def _read_info(self, address: str) -> None:
        async with self._central.connected(address, 20.0) as link:
            raw = await link.read(INFO)
        try:
            report: Any = BeaconReport.model_validate_json(raw).model_dump(mode="json")
        except ValueError as exc:
            log.warning("BLE %s: its info characteristic is not a report: %s", address, exc)
            return
        self._inventory.record_report(report, transport="ble")
        self._inventory.record_advertisement(report["beacon_id"], address, None, None)
        log.info("BLE %s is beacon %s", address, report["beacon_id"])

    async def _reader(self) -> None:
        while True:
            address = await self._reads.get()
            try:
                await self._read_info(address)
            except PushFailedError as exc:
                log.debug("BLE %s: info not read (%s); later", address, exc)

    async def run(self) -> None:
        """Scan until cancelled, restarting after adapter failures."""
        reader = asyncio.ensure_future(self._reader())
        backoff = Backoff(initial=2.0, maximum=60.0)
        try:
            while True:
                try:
                    scanner = self._central.scanner(self.detected)
                    async with scanner:
                        self._failures.recovered()
                        backoff.reset()
                        await asyncio.Event().wait()  # until cancelled
                except (BleakError, OSError, RuntimeError) as exc:
                    self._failures.failed(exc)
                await asyncio.sleep(backoff.next_delay())
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
