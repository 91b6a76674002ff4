# App-bundle updates: stage a verified release in the inactive slot, switch atomically, confirm
# after the health check (boot.py rolls back an app that never confirms).
#
# Slots: the app runs from /app/<active>; a release is written to /app/<other>.new/ as it
# downloads (the artifact is the files' bytes concatenated in manifest order), each file checked
# against its SHA-256 as its last byte arrives, all of them read back and checked again at the
# end, then the folder is renamed to /app/<other> and /ota/boot.json is replaced (the commit
# point) with the new slot on trial. A power cut at any moment leaves boot.json naming a complete,
# verified app: the old one until the rename of boot.json, the new one (on trial) after it.
# A download resumes where the flash says it stopped: complete files are re-hashed, the last
# partial file is hashed up to its durable size and appended to.
import binascii
import hashlib
import os

from navign import fs
from navign.errors import Refused
from navign.ota import BOOT_STATE, boot_state

APPS = "/app/"
MARKER = "/.release"
SYNC_EVERY = 16384  # bytes between littlefs syncs (what a resume can lose at most, per file)


def other(slot):
    return "b" if slot == "a" else "a"


def _hash_file(path, limit, buf):
    # SHA-256 object over the first `limit` bytes of `path`.
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left:
            n = f.readinto(buf) if left >= len(buf) else f.readinto(memoryview(buf)[:left])
            if not n:
                raise Refused("artifact_mismatch", path + ": shorter than expected")
            h.update(memoryview(buf)[:n])
            left -= n
    return h


class AppSink:
    # Receives an app release's artifact in order (write), then finish() switches to it.
    kind = "app"

    def __init__(self, manifest, manifest_sha256, buf=None, max_tries=3):
        state = boot_state()
        if not state.get("committed", True):
            raise Refused("busy", "the running app is on trial")
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.state = state
        self.max_tries = max_tries
        self.slot = other(state["active"])
        self.stage = APPS + self.slot + ".new"
        self.files = manifest["files"]
        self.total = 0
        for entry in self.files:
            self.total += entry["size"]
        self.buf = buf or bytearray(1024)
        self.offset = 0
        self._index = 0
        self._file = None
        self._hash = None
        self._done = 0  # bytes of the current file written
        self._unsynced = 0
        self._prepare()

    def _path(self, entry):
        return self.stage + "/" + entry["path"]

    def _prepare(self):
        marker = fs.read_json(self.stage + MARKER, {})
        if marker.get("manifest_sha256") != self.manifest_sha256:
            fs.makedirs("/ota")
            if self.state.get("previous") == self.slot:
                # The slot about to be overwritten is no fallback any more.
                self.state["previous"] = None
                fs.write_json(BOOT_STATE, self.state)
            fs.rmtree(self.stage)
            fs.makedirs(self.stage)
            fs.write_json(self.stage + MARKER, {"manifest_sha256": self.manifest_sha256})
            self._open_next()
            return
        # Resume the same release: re-hash what the flash holds.
        for entry in self.files:
            path = self._path(entry)
            have = fs.size(path)
            if have == entry["size"]:
                if self._digest(_hash_file(path, have, self.buf)) == entry["sha256"]:
                    self.offset += have
                    self._index += 1
                    continue
                have = -1
            if 0 < have < entry["size"]:
                self._hash = _hash_file(path, have, self.buf)
                self._file = open(path, "ab")
                self._done = have
                self.offset += have
                return
            fs.rmtree(path)
            break
        self._open_next()

    @staticmethod
    def _digest(h):
        return binascii.hexlify(h.digest()).decode()

    def _open_next(self):
        # Open the next file to write; files of size 0 are completed on the spot.
        while self._index < len(self.files):
            entry = self.files[self._index]
            path = self._path(entry)
            fs.makedirs(path[: path.rfind("/")])
            self._file = open(path, "wb")
            self._hash = hashlib.sha256()
            self._done = 0
            if entry["size"]:
                return
            self._close_file(entry)

    def _close_file(self, entry):
        self._file.close()
        self._file = None
        if self._digest(self._hash) != entry["sha256"]:
            fs.rmtree(self._path(entry))
            raise Refused("artifact_mismatch", entry["path"])
        self._index += 1

    def resume_offset(self):
        return self.offset

    def write(self, data):
        # Append `data` (the artifact's bytes at resume_offset()); raises Refused on too many
        # bytes or a file whose SHA-256 does not match its manifest entry.
        view = memoryview(data)
        while len(view):
            if self._index >= len(self.files):
                raise Refused("artifact_mismatch", "longer than the manifest says")
            entry = self.files[self._index]
            n = min(len(view), entry["size"] - self._done)
            part = view[:n]
            self._file.write(part)
            self._hash.update(part)
            self._done += n
            self.offset += n
            self._unsynced += n
            view = view[n:]
            if self._done == entry["size"]:
                self._unsynced = 0
                self._close_file(entry)
                self._open_next()
            elif self._unsynced >= SYNC_EVERY:
                self._file.flush()
                self._unsynced = 0

    def abort(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self):
        # Check every staged file again as the flash holds it, then switch (the commit point);
        # the caller resets the board afterwards.
        if self.offset != self.total or self._index != len(self.files):
            raise Refused("artifact_mismatch", "incomplete")
        from navign.artifact import verify_file

        for entry in self.files:
            verify_file(self._path(entry), entry["size"], entry["sha256"], self.buf)
        os.remove(self.stage + MARKER)
        target = APPS + self.slot
        fs.rmtree(target)
        os.rename(self.stage, target)
        state = self.state
        m = self.manifest
        fs.write_json(
            BOOT_STATE,
            {
                "active": self.slot,
                "previous": state["active"],
                "committed": False,
                "tries": 0,
                "max_tries": self.max_tries,
                "version": m["version"],
                "manifest_sha256": self.manifest_sha256,
                "secure_version": m["secure_version"],
                "previous_version": state.get("version"),
                "previous_manifest_sha256": state.get("manifest_sha256"),
                "previous_secure_version": state.get("secure_version", 0),
            },
        )
