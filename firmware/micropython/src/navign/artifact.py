# Artifact checks (docs/protocol.md §6.5 step 6): a file or a stream against the size and
# SHA-256 its manifest declares. See navign.release for the rules.

import binascii
import hashlib

from micropython import const

from navign.errors import Refused

CHUNK = const(4096)
_buf = None


# ---- step 6: artifacts --------------------------------------------------------------------


class Sha256Stream:
    def __init__(self, size, sha256_hex, name=""):
        self.size = size
        self.sha256 = sha256_hex
        self.name = name
        self.count = 0
        self._h = hashlib.sha256()

    def update(self, chunk):
        self.count += len(chunk)
        if self.count > self.size:
            raise Refused(
                "artifact_mismatch",
                "%s: longer than the manifest's %d bytes" % (self.name, self.size),
            )
        self._h.update(chunk)

    def finish(self):
        if self.count != self.size:
            raise Refused(
                "artifact_mismatch",
                "%s: size %d, manifest says %d" % (self.name, self.count, self.size),
            )
        if binascii.hexlify(self._h.digest()).decode() != self.sha256:
            raise Refused("artifact_mismatch", self.name + ": SHA-256 does not match the manifest")


def verify_file(path, size, sha256_hex, buf=None):
    global _buf
    if buf is None:
        if _buf is None:
            _buf = bytearray(CHUNK)
        buf = _buf
    view = memoryview(buf)
    if len(view) > CHUNK:
        view = view[:CHUNK]
    stream = Sha256Stream(size, sha256_hex, path)
    try:
        f = open(path, "rb")
    except OSError:
        raise Refused("artifact_mismatch", path + ": missing") from None
    try:
        while True:
            n = f.readinto(view)
            if not n:
                break
            stream.update(view[:n])
    finally:
        f.close()
    stream.finish()


def app_file_spans(manifest):
    files = manifest.get("files")
    if manifest.get("kind") != "app" or not files:
        raise ValueError("not an app release")
    spans = []
    offset = 0
    for f in files:
        spans.append((f["path"], offset, f["size"], f["sha256"]))
        offset += f["size"]
    return spans
