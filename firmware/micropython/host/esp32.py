# TEST-ONLY shim of MicroPython's `esp32` module for the unix port: never copied to a device.
#
# The simulated ESP32's flash is one host file (NAVIGN_SIM_FLASH) laid out as on a real board: the
# partition table at 0x8000 in ESP-IDF's binary format, `otadata` with ESP-IDF's two
# esp_ota_select_entry_t sectors, two OTA app partitions holding ESP images, and the `vfs`
# partition that MicroPython mounts as littlefs. Semantics follow ESP-IDF and MicroPython's
# esp32.Partition:
# - 4 KiB erase blocks; `writeblocks(n, buf)` erases the covered blocks first, as MicroPython
#   does; `writeblocks(n, buf, offset)` (littlefs's extended interface) writes only, and writing
#   over bytes that are not erased (0xFF) raises OSError(EIO): erase-before-write is enforced.
# - `set_boot()` verifies the ESP image first (magic, chip id, segment checksum, appended SHA-256)
#   and raises OSError on a bad image, then writes a new otadata entry in state NEW.
# - the bootloader (`bootloader_select`, run by host/poweron.py at each power-on) boots the valid
#   entry with the highest sequence: NEW becomes PENDING_VERIFY; an entry still PENDING_VERIFY at
#   the next boot was never confirmed, so it becomes ABORTED and the other slot boots (rollback).
# - `mark_app_valid_cancel_rollback()` turns the running entry's PENDING_VERIFY into VALID.
# Every flash write reaches the host file before the call returns, so killing the process (a
# power cut) keeps exactly the writes that completed.

import binascii
import hashlib
import os
import struct

from micropython import const

BLOCK = const(4096)
_TYPE_APP = const(0)
_TYPE_DATA = const(1)
_BOOT = const(0)
_RUNNING = const(1)
HEAP_DATA = const(4)
HEAP_EXEC = const(1)

_TABLE_OFFSET = const(0x8000)
_TABLE_MAGIC = const(0x50AA)  # bytes AA 50 read little-endian
_MD5_MAGIC = const(0xEBEB)
_SUBTYPE_OTA_DATA = const(0x00)
_SUBTYPE_OTA_0 = const(0x10)

OTA_NEW = const(0)
OTA_PENDING_VERIFY = const(1)
OTA_VALID = const(2)
OTA_INVALID = const(3)
OTA_ABORTED = const(4)
OTA_UNDEFINED = const(0xFFFFFFFF)

_IMAGE_MAGIC = const(0xE9)
_APP_DESC_MAGIC = const(0xABCD5432)
CHIP_IDS = {"esp32": 0x0000, "esp32s2": 0x0002, "esp32c3": 0x0005, "esp32s3": 0x0009}

_flash = None  # the open host file
_chip = "esp32"
_running = None  # label of the partition the bootloader started


def _open_flash():
    global _flash, _chip
    if _flash is None:
        path = os.getenv("NAVIGN_SIM_FLASH")
        if not path:
            raise OSError(19)  # ENODEV: no simulated flash configured
        _flash = open(path, "r+b")
        _chip = os.getenv("NAVIGN_SIM_CHIP") or "esp32"
    return _flash


def _read(addr, buf):
    f = _open_flash()
    f.seek(addr)
    got = f.readinto(buf)
    if got != len(buf):
        raise OSError(5)


_CHECK = bytearray(256)


def _write(addr, buf):
    f = _open_flash()
    check = _CHECK
    done = 0
    while done < len(buf):
        n = min(len(check), len(buf) - done)
        view = memoryview(check)[:n]
        _read(addr + done, view)
        for b in view:
            if b != 0xFF:
                raise OSError(5)  # EIO: NOR flash must be erased before it is written
        done += n
    f.seek(addr)
    f.write(buf)
    f.flush()


_ERASED = b"\xff" * BLOCK  # allocated with the shim, not on the firmware's heap


def _erase(addr, length):
    if addr % BLOCK or length % BLOCK:
        raise OSError(22)
    f = _open_flash()
    for a in range(addr, addr + length, BLOCK):
        f.seek(a)
        f.write(_ERASED)
    f.flush()


_table = None


def _partitions():
    # [(type, subtype, addr, size, label, flags)] from the binary partition table at 0x8000.
    global _table
    if _table is not None:
        return _table
    entries = []
    buf = bytearray(32)
    md5 = hashlib.md5()
    for i in range(96):
        _read(_TABLE_OFFSET + 32 * i, buf)
        magic = buf[0] | buf[1] << 8
        if magic == _TABLE_MAGIC:
            md5.update(buf)
            ptype, subtype, addr, size = struct.unpack_from("<BBII", buf, 2)
            label = bytes(buf[12:28]).split(b"\x00")[0].decode()
            flags = struct.unpack_from("<I", buf, 28)[0]
            entries.append((ptype, subtype, addr, size, label, flags))
        elif magic == _MD5_MAGIC:
            if bytes(buf[16:32]) != md5.digest():
                raise OSError(5)  # a corrupt partition table: the ROM would refuse to boot
            break
        else:
            break
    if not entries:
        raise OSError(5)
    _table = entries
    return entries


def _ota_apps():
    apps = [p for p in _partitions() if p[0] == _TYPE_APP and 0x10 <= p[1] < 0x20]
    apps.sort(key=lambda p: p[1])
    return apps


def _otadata():
    for p in _partitions():
        if p[0] == _TYPE_DATA and p[1] == _SUBTYPE_OTA_DATA:
            return p
    raise OSError(2)


def _entry_crc(seq):
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def _read_entries():
    # The two otadata sectors as [(seq, state, crc_ok)].
    base = _otadata()[2]
    out = []
    buf = bytearray(32)
    for i in range(2):
        _read(base + i * BLOCK, buf)
        (seq,) = struct.unpack_from("<I", buf, 0)
        state, crc = struct.unpack_from("<II", buf, 24)
        out.append((seq, state, seq != 0xFFFFFFFF and crc == _entry_crc(seq)))
    return out


def _write_entry(sector, seq, state):
    base = _otadata()[2] + sector * BLOCK
    _erase(base, BLOCK)
    buf = bytearray(b"\xff" * 32)
    struct.pack_into("<I", buf, 0, seq)
    struct.pack_into("<II", buf, 24, state, _entry_crc(seq))
    _write(base, buf)


def _valid(entry):
    return entry[2] and entry[1] not in (OTA_INVALID, OTA_ABORTED)


def _active_sector(entries):
    best = None
    for i in range(2):
        if _valid(entries[i]) and (best is None or entries[i][0] > entries[best][0]):
            best = i
    return best


def _slot_of(seq):
    return (seq - 1) % len(_ota_apps())


def verify_image(addr, size, chip=None):
    # An ESP-IDF app image at `addr` (at most `size` bytes): header magic and chip id, segments,
    # the XOR checksum, the appended SHA-256. Returns the image length; raises OSError(EINVAL).
    hdr = bytearray(24)
    _read(addr, hdr)
    if hdr[0] != _IMAGE_MAGIC or hdr[1] == 0 or hdr[1] > 16:
        raise OSError(22)
    chip_id = struct.unpack_from("<H", hdr, 12)[0]
    if chip_id != CHIP_IDS.get(chip or _chip, -1):
        raise OSError(22)
    hash_appended = hdr[23] == 1
    sha = hashlib.sha256(hdr)
    pos = 24
    checksum = 0xEF
    seg = bytearray(8)
    chunk = _CHECK
    for _ in range(hdr[1]):
        if pos + 8 > size:
            raise OSError(22)
        _read(addr + pos, seg)
        sha.update(seg)
        length = struct.unpack_from("<I", seg, 4)[0]
        pos += 8
        if length > size - pos:
            raise OSError(22)
        left = length
        while left:
            n = min(left, len(chunk))
            view = memoryview(chunk)[:n]
            _read(addr + pos, view)
            sha.update(view)
            for b in view:
                checksum ^= b
            pos += n
            left -= n
    pad = 15 - (pos % 16)
    tail = bytearray(pad + 1)
    if pos + len(tail) > size:
        raise OSError(22)
    _read(addr + pos, tail)
    sha.update(tail)
    if tail[-1] != checksum:
        raise OSError(22)
    pos += len(tail)
    if hash_appended:
        digest = bytearray(32)
        if pos + 32 > size:
            raise OSError(22)
        _read(addr + pos, digest)
        if bytes(digest) != sha.digest():
            raise OSError(22)
        pos += 32
    return pos


def bootloader_select():
    # What the second-stage bootloader does at power-on (ESP-IDF with app rollback enabled).
    # Returns the label of the partition to run, or None when no slot holds a valid image.
    global _running
    apps = _ota_apps()
    entries = _read_entries()
    order = []
    active = _active_sector(entries)
    if active is None:
        order = list(range(len(apps)))  # no otadata: ota_0 first (a freshly flashed board)
    else:
        seq, state, _ = entries[active]
        if state == OTA_PENDING_VERIFY:
            # Booted once in trial and never confirmed: roll back.
            _write_entry(active, seq, OTA_ABORTED)
            entries = _read_entries()
            other = _active_sector(entries)
            order = [_slot_of(entries[other][0])] if other is not None else []
            for i in range(len(apps)):
                if i not in order and i != _slot_of(seq):
                    order.append(i)
        else:
            if state == OTA_NEW:
                _write_entry(active, seq, OTA_PENDING_VERIFY)
            order = [_slot_of(seq)] + [i for i in range(len(apps)) if i != _slot_of(seq)]
    for i in order:
        p = apps[i]
        try:
            verify_image(p[2], p[3])
        except OSError:
            continue
        _running = p[4]
        return _running
    return None


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=BLOCK):
        if block_size != BLOCK:
            raise ValueError("block_size")
        if id == _RUNNING:
            id = _running
        elif id == _BOOT:
            id = _boot_label()
        for p in _partitions():
            if p[4] == id:
                self._p = p
                return
        raise OSError(2)  # ENOENT

    @staticmethod
    def find(type=_TYPE_APP, subtype=0xFF, label=None, block_size=BLOCK):
        out = []
        for p in _partitions():
            if p[0] == type and (subtype == 0xFF or p[1] == subtype) and label in (None, p[4]):
                out.append(Partition(p[4], block_size))
        return out

    def info(self):
        p = self._p
        return (p[0], p[1], p[2], p[3], p[4], False)

    def __repr__(self):
        p = self._p
        return "<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=0>" % (
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
        )

    def _range(self, block_num, length, offset):
        start = block_num * BLOCK + offset
        if start < 0 or start + length > self._p[3]:
            raise OSError(22)
        return self._p[2] + start

    def readblocks(self, block_num, buf, offset=0):
        _read(self._range(block_num, len(buf), offset), buf)

    def writeblocks(self, block_num, buf, offset=None):
        if offset is None:
            addr = self._range(block_num, len(buf), 0)
            _erase(addr, (len(buf) + BLOCK - 1) // BLOCK * BLOCK)
        else:
            addr = self._range(block_num, len(buf), offset)
        _write(addr, buf)

    def ioctl(self, cmd, arg):
        if cmd == 4:
            return self._p[3] // BLOCK
        if cmd == 5:
            return BLOCK
        if cmd == 6:
            _erase(self._range(arg, BLOCK, 0), BLOCK)
            return 0
        if cmd in (1, 2, 3):
            return 0
        return None

    def set_boot(self):
        p = self._p
        apps = _ota_apps()
        index = None
        for i in range(len(apps)):
            if apps[i][4] == p[4]:
                index = i
        if index is None:
            raise OSError(22)
        verify_image(p[2], p[3])
        entries = _read_entries()
        active = _active_sector(entries)
        if active is None:
            seq, sector = index + 1, 0
        else:
            seq = entries[active][0] + 1
            while _slot_of(seq) != index:
                seq += 1
            sector = (active + 1) % 2
        _write_entry(sector, seq, OTA_NEW)

    def get_next_update(self):
        apps = _ota_apps()
        for i in range(len(apps)):
            if apps[i][4] == self._p[4]:
                return Partition(apps[(i + 1) % len(apps)][4])
        raise OSError(2)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        entries = _read_entries()
        active = _active_sector(entries)
        if active is None:
            return
        seq, state, _ = entries[active]
        if _ota_apps()[_slot_of(seq)][4] != _running:
            raise OSError(22)
        if state == OTA_PENDING_VERIFY:
            _write_entry(active, seq, OTA_VALID)


def _boot_label():
    entries = _read_entries()
    active = _active_sector(entries)
    if active is None:
        return _ota_apps()[0][4]
    return _ota_apps()[_slot_of(entries[active][0])][4]


def ota_state():
    # Host-only helper for tests: (running label, active otadata state or None).
    entries = _read_entries()
    active = _active_sector(entries)
    return _running, (entries[active][1] if active is not None else None)


def idf_heap_info(capabilities):
    import gc

    free = gc.mem_free()
    return [(free + gc.mem_alloc(), free, free, free)]
