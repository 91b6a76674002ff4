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
        self.block = bytearray(BLOCK)
        self.fill = 0  # bytes in self.block
        self.blocks = 0  # blocks written
        self.hash = hashlib.sha256()
        self.offset = 0
        if (
            current.get("download") == manifest_sha256
            and current.get("partition") == self.label
            and 0 < current.get("offset", 0) <= self.size
            and current["offset"] % BLOCK == 0
        ):
            # Resume: re-hash what the partition holds up to the recorded offset.
            done = current["offset"]
            for i in range(done // BLOCK):
                self.part.readblocks(i, self.block)
                self.hash.update(self.block)
            self.blocks = done // BLOCK
            self.offset = done
        else:
            fs.makedirs("/ota")
            fs.write_json(
                STATE, {"download": manifest_sha256, "partition": self.label, "offset": 0}
            )

    def resume_offset(self):
        return self.offset

    def write(self, data):
        view = memoryview(data)
        if self.offset + len(view) > self.size:
            raise Refused("artifact_mismatch", "longer than the manifest says")
        while len(view):
            n = min(len(view), BLOCK - self.fill)
            self.block[self.fill : self.fill + n] = view[:n]
            self.fill += n
            self.offset += n
            view = view[n:]
            if self.fill == BLOCK:
                self._flush_block()

    def _flush_block(self):
        data = self.block if self.fill == BLOCK else memoryview(self.block)[: self.fill]
        self.hash.update(data)
        if self.fill < BLOCK:
            # The last, partial block: pad with 0xFF (erased flash) to a whole block.
            for i in range(self.fill, BLOCK):
                self.block[i] = 0xFF
        self.part.writeblocks(self.blocks, self.block)  # erases this block, then writes it
        self.blocks += 1
        self.fill = 0
        if self.blocks % RECORD_EVERY == 0:
            fs.write_json(
                STATE,
                {
                    "download": self.manifest_sha256,
                    "partition": self.label,
                    "offset": self.blocks * BLOCK,
                },
            )

    def abort(self):
        pass

    def finish(self, previous_version=""):
        if self.offset != self.size:
            raise Refused("artifact_mismatch", "incomplete")
        if self.fill:
            self._flush_block()
        if binascii.hexlify(self.hash.digest()).decode() != self.manifest["image"]["sha256"]:
            fs.write_json(STATE, {})
            raise Refused("artifact_mismatch", "image SHA-256")
        # Read back what the flash holds.
        h = hashlib.sha256()
        left = self.size
        i = 0
        while left:
            self.part.readblocks(i, self.block)
            n = min(left, BLOCK)
            h.update(self.block if n == BLOCK else memoryview(self.block)[:n])
            left -= n
            i += 1
        if binascii.hexlify(h.digest()).decode() != self.manifest["image"]["sha256"]:
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
