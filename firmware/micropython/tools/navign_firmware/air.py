"""The simulated radio between processes: what simulated beacons advertise, where a scanner in
another process (the gateway daemon in end-to-end tests) can see it.

Simulated beacons run under a test harness (:mod:`navign_firmware.fleet`); the gateway that scans
for them is a separate process using bleak with :mod:`navign_firmware.bleak_backend`. The "air"
between them is a directory (``NAVIGN_SIM_AIR``, or given explicitly) holding one small JSON file
per advertising beacon, named after its BLE address::

    {"address": "A4:CF:12:00:00:01", "adv": "<hex>", "resp": "<hex>" | null,
     "interval_us": 200000, "connectable": true, "gatt_port": 40123, "rssi": -60,
     "owner_pid": 4242}

``adv`` and ``resp`` are the advertising data and scan response exactly as the board passed them
to ``gap_advertise`` (at most 31 bytes each), ``gatt_port`` the loopback port of its GATT server
(``host/bluetooth.py``), ``owner_pid`` the harness process: a record whose owner died (a harness
killed with SIGKILL) is not on the air any more. A file is replaced atomically (temporary file,
then rename), so a reader sees the old record or the new one, never half of one; a beacon that
stops advertising or loses power has its file removed.

Public: :class:`Air`, :class:`Advertisement`, :class:`AirError`, :func:`address_from_uid`,
:func:`normalize_address`, :data:`AIR_ENV`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

AIR_ENV: Final = "NAVIGN_SIM_AIR"
#: Legacy advertising carries at most 31 bytes of advertising data and of scan response.
MAX_PAYLOAD: Final = 31
#: BLE advertising intervals: 20 ms to 10.24 s.
MIN_INTERVAL_US: Final = 20_000
MAX_INTERVAL_US: Final = 10_240_000
DEFAULT_RSSI: Final = -60

_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_UID = re.compile(r"^[0-9a-fA-F]{12}$")
_SUFFIX: Final = ".json"


class AirError(ValueError):
    """A bad advertisement, address or air directory."""


def address_from_uid(uid: str) -> str:
    """A simulated board's BLE address from its uid (``machine.unique_id()`` in hex, 12 digits):
    ``a4cf12000001`` → ``A4:CF:12:00:00:01``."""
    if not _UID.match(uid):
        raise AirError(f"a board uid is 12 hex digits, not {uid!r}")
    up = uid.upper()
    return ":".join(up[i : i + 2] for i in range(0, 12, 2))


def normalize_address(address: str) -> str:
    """``AA:BB:CC:DD:EE:FF`` in upper case; raises :class:`AirError` for anything else."""
    if not isinstance(address, str) or not _ADDRESS.match(address.upper()):
        raise AirError(f"a BLE address is AA:BB:CC:DD:EE:FF, not {address!r}")
    return address.upper()


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One beacon on the air."""

    address: str
    adv: bytes
    resp: bytes | None
    interval_us: int
    connectable: bool
    gatt_port: int | None
    rssi: int
    owner_pid: int

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "adv": self.adv.hex(),
            "resp": None if self.resp is None else self.resp.hex(),
            "interval_us": self.interval_us,
            "connectable": self.connectable,
            "gatt_port": self.gatt_port,
            "rssi": self.rssi,
            "owner_pid": self.owner_pid,
        }

    @classmethod
    def from_json(cls, doc: object) -> Advertisement:
        """Parse and validate a record; raises :class:`AirError`."""
        if not isinstance(doc, dict):
            raise AirError("an air record is a JSON object")
        try:
            resp = doc["resp"]
            record = cls(
                address=normalize_address(doc["address"]),
                adv=bytes.fromhex(doc["adv"]),
                resp=None if resp is None else bytes.fromhex(resp),
                interval_us=doc["interval_us"],
                connectable=doc["connectable"],
                gatt_port=doc["gatt_port"],
                rssi=doc["rssi"],
                owner_pid=doc["owner_pid"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AirError(f"bad air record: {exc}") from None
        record.validate()
        return record

    def validate(self) -> None:
        """Raise :class:`AirError` unless every field is in range."""
        for name, data in (("adv", self.adv), ("resp", self.resp)):
            if data is not None and len(data) > MAX_PAYLOAD:
                raise AirError(f"{name}: {len(data)} bytes, legacy advertising carries 31")
        if not _is_int(self.interval_us) or not (
            MIN_INTERVAL_US <= self.interval_us <= MAX_INTERVAL_US
        ):
            raise AirError(f"interval_us {self.interval_us!r} is not 20 ms to 10.24 s")
        if not isinstance(self.connectable, bool):
            raise AirError("connectable must be true or false")
        if self.gatt_port is not None and (
            not _is_int(self.gatt_port) or not 1 <= self.gatt_port <= 65535
        ):
            raise AirError(f"gatt_port {self.gatt_port!r} is not a TCP port")
        if not _is_int(self.rssi) or not -127 <= self.rssi <= 20:
            raise AirError(f"rssi {self.rssi!r} is not -127..20 dBm")
        if not _is_int(self.owner_pid) or self.owner_pid <= 0:
            raise AirError(f"owner_pid {self.owner_pid!r} is not a process id")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Air:
    """The air directory ``path`` (default: ``$NAVIGN_SIM_AIR``); created when missing."""

    def __init__(self, path: Path | str | None = None) -> None:
        if path is None:
            env = os.environ.get(AIR_ENV, "")
            if not env:
                raise AirError(f"no air directory: pass one or set {AIR_ENV}")
            path = env
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # file name -> ((inode, mtime_ns, size), record): a snapshot re-reads changed files only.
        self._cache: dict[str, tuple[tuple[int, int, int], Advertisement | None]] = {}
        self._lock = threading.Lock()  # a scanner and clients may look from worker threads

    def __repr__(self) -> str:
        return f"Air({str(self.path)!r})"

    def _file(self, address: str) -> Path:
        return self.path / (normalize_address(address).replace(":", "").lower() + _SUFFIX)

    def publish(
        self,
        address: str,
        *,
        adv: bytes,
        resp: bytes | None = None,
        interval_us: int,
        connectable: bool = True,
        gatt_port: int | None = None,
        rssi: int = DEFAULT_RSSI,
    ) -> Advertisement:
        """Put (or replace) ``address``'s advertising on the air; raises :class:`AirError` for
        a bad field, and then changes nothing."""
        record = Advertisement(
            address=normalize_address(address),
            adv=bytes(adv),
            resp=None if resp is None else bytes(resp),
            interval_us=interval_us,
            connectable=connectable,
            gatt_port=gatt_port,
            rssi=rssi,
            owner_pid=os.getpid(),
        )
        record.validate()
        target = self._file(record.address)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(record.to_json(), out)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return record

    def withdraw(self, address: str) -> bool:
        """Take ``address`` off the air; False when it was not on it."""
        try:
            self._file(address).unlink()
        except FileNotFoundError:
            return False
        return True

    def get(self, address: str) -> Advertisement | None:
        """``address``'s current advertising, or None."""
        return self.snapshot().get(normalize_address(address))

    def snapshot(self) -> dict[str, Advertisement]:
        """Everything on the air now: address → record. Records of a dead owner and files that
        do not parse are skipped (the latter cannot come from :meth:`publish`)."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Advertisement]:
        found: dict[str, Advertisement] = {}
        seen: set[str] = set()
        with os.scandir(self.path) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.endswith(_SUFFIX):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                seen.add(name)
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._cache.get(name)
                if cached is not None and cached[0] == key:
                    record = cached[1]
                else:
                    record = self._read(Path(entry.path))
                    self._cache[name] = (key, record)
                if record is not None and _alive(record.owner_pid):
                    found[record.address] = record
        for name in set(self._cache) - seen:
            del self._cache[name]
        return found

    @staticmethod
    def _read(path: Path) -> Advertisement | None:
        try:
            return Advertisement.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            return None

    def clear_stale(self) -> list[str]:
        """Remove the records whose owner process is gone; returns their addresses."""
        removed: list[str] = []
        for entry in self.path.glob("*" + _SUFFIX):
            record = self._read(entry)
            if record is not None and not _alive(record.owner_pid):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                removed.append(record.address)
        return removed
