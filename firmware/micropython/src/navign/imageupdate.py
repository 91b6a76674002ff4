# Full MicroPython image updates: written block by block to the inactive OTA partition, each 4 KiB
# block erased just before it is written (never one long erase that would starve the watchdog),
# hashed as it goes, read back and checked, then `set_boot()` (which makes ESP-IDF verify the image
# too) and a reset. The bootloader boots the new image once in PENDING_VERIFY; the app calls
# `mark_app_valid_cancel_rollback()` only after its health check, otherwise the next reset goes
# back to the old image.
#
# /ota/image.json records a download in progress (partition, manifest, durable offset) so that a
# power cut resumes from the last recorded block (the partition's prefix is re-hashed), and then
# the image on trial (`pending`) so the app knows, after the reboot, whether it is the new image on
# trial or the old one after a rollback.
import binascii
import hashlib

import esp32

from navign import fs
from navign.errors import Refused
from navign.ota import IMAGE_STATE as STATE
from navign.ota import firmware_version, image_state

BLOCK = 4096
RECORD_EVERY = 16  # blocks between progress records (64 KiB)


class ImageSink:
    kind = "image"

    def __init__(self, manifest, manifest_sha256, buf=None):
        current = image_state()
        if current.get("pending"):
            raise Refused("busy", "an image is on trial")
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.size = manifest["image"]["size"]
        self.part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
        self.label = self.part.info()[4]
        if self.size > self.part.info()[3]:
            raise Refused("too_large", "the image does not fit the OTA partition")
        self.total = self.size
        # Only for re-reading the flash (resume, read-back): writes go straight from the
        # caller's data, each block erased just before its first byte is written.
        self.buf = buf or bytearray(1024)
        self.hash = hashlib.sha256()
        self.offset = 0
        if (
            current.get("download") == manifest_sha256
            and current.get("partition") == self.label
            and 0 < current.get("offset", 0) <= self.size
            and current["offset"] % BLOCK == 0
        ):
            # Resume: re-hash what the partition holds up to the recorded offset.
            self._rehash(current["offset"], self.hash)
            self.offset = current["offset"]
        else:
            fs.makedirs("/ota")
            fs.write_json(
                STATE, {"download": manifest_sha256, "partition": self.label, "offset": 0}
            )

    def _rehash(self, length, h):
        buf = self.buf
        pos = 0
        while pos < length:
            n = min(len(buf), length - pos)
            view = memoryview(buf)[:n]
            self.part.readblocks(pos // BLOCK, view, pos % BLOCK)
            h.update(view)
            pos += n

    def resume_offset(self):
        return self.offset

    def write(self, data):
        view = memoryview(data)
        if self.offset + len(view) > self.size:
            raise Refused("artifact_mismatch", "longer than the manifest says")
        while len(view):
            block, within = self.offset // BLOCK, self.offset % BLOCK
            if within == 0:
                self.part.ioctl(6, block)  # erase this block only, just before writing it
            n = min(len(view), BLOCK - within)
            self.part.writeblocks(block, view[:n], within)
            self.hash.update(view[:n])
            self.offset += n
            view = view[n:]
            if self.offset % (RECORD_EVERY * BLOCK) == 0:
                fs.write_json(
                    STATE,
                    {
                        "download": self.manifest_sha256,
                        "partition": self.label,
                        "offset": self.offset,
                    },
                )

    def abort(self):
        pass

    def finish(self, previous_version=""):
        if self.offset != self.size:
            raise Refused("artifact_mismatch", "incomplete")
        expected = self.manifest["image"]["sha256"]
        if binascii.hexlify(self.hash.digest()).decode() != expected:
            fs.write_json(STATE, {})
            raise Refused("artifact_mismatch", "image SHA-256")
        h = hashlib.sha256()
        self._rehash(self.size, h)  # what the flash holds
        if binascii.hexlify(h.digest()).decode() != expected:
            fs.write_json(STATE, {})
            raise Refused("artifact_mismatch", "image read back")
        if firmware_version(self.part) != self.manifest["version"]:
            fs.write_json(STATE, {})
            raise Refused("artifact_mismatch", "the image's own version differs from the manifest")
        fs.write_json(
            STATE,
            {
                "pending": self.label,
                "version": self.manifest["version"],
                "manifest_sha256": self.manifest_sha256,
                "secure_version": self.manifest["secure_version"],
                "previous_version": previous_version,
            },
        )
        try:
            self.part.set_boot()  # ESP-IDF verifies the image again before switching
        except OSError:
            fs.write_json(STATE, {})
            raise Refused("artifact_mismatch", "the bootloader refuses the image")
