# The release manifest's schema on the beacon: docs/protocol.md §6.5 step 4 (every field of §6.2).
# Split from navign.release so that the beacon loads it after the JSON parser is unloaded.
# Raises navign.errors.Refused("invalid_format", ...).

from micropython import const

from navign import semver
from navign.errors import Refused

SCHEMA = "navign.release.v1"
MAX_FILES = const(256)
MAX_ARTIFACT_BYTES = const(16777216)
MAX_SECURE_VERSION = 0xFFFFFFFF
MAX_PATH_LENGTH = const(128)
TARGETS = ("esp32", "esp32c3", "esp32c6", "esp32s3")
KINDS = ("app", "image")

_FIELDS = (
    "schema",
    "name",
    "version",
    "secure_version",
    "target",
    "kind",
    "files",
    "image",
    "min_previous_version",
    "created_at",
    "expires_at",
)
_REQUIRED = ("schema", "name", "version", "secure_version", "target", "kind", "created_at")
_LOWER_HEX = "0123456789abcdef"
_NAME_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
_NAME_REST = _NAME_FIRST + "._-"
_PART_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
_PART_REST = _PART_FIRST + ".-"
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# ---- step 4: schema -----------------------------------------------------------------------


def _bad(detail):
    raise Refused("invalid_format", "manifest: " + detail)


def _is_int(v):
    return type(v) is int


def _is_sha256(v):
    return isinstance(v, str) and len(v) == 64 and all(c in _LOWER_HEX for c in v)


def _is_name(v):
    if not isinstance(v, str) or not 1 <= len(v) <= 64 or v[0] not in _NAME_FIRST:
        return False
    return all(c in _NAME_REST for c in v)


def _is_path(v):
    if not isinstance(v, str) or len(v) > MAX_PATH_LENGTH:
        return False
    for part in v.split("/"):
        if not 1 <= len(part) <= 64 or part[0] not in _PART_FIRST:
            return False
        for c in part:
            if c not in _PART_REST:
                return False
    return True


def _digits(s, i, j):
    v = 0
    for k in range(i, j):
        c = s[k]
        if c < "0" or c > "9":
            return -1
        v = v * 10 + ord(c) - 48
    return v


def _is_time(v):
    # YYYY-MM-DDTHH:MM:SSZ, a real date and time (years 0001-9999, seconds 00-59).
    if not isinstance(v, str) or len(v) != 20:
        return False
    if v[4] != "-" or v[7] != "-" or v[10] != "T" or v[13] != ":" or v[16] != ":" or v[19] != "Z":
        return False
    year = _digits(v, 0, 4)
    month = _digits(v, 5, 7)
    day = _digits(v, 8, 10)
    hour = _digits(v, 11, 13)
    minute = _digits(v, 14, 16)
    second = _digits(v, 17, 19)
    if year < 1 or not 1 <= month <= 12 or day < 1 or hour < 0 or minute < 0 or second < 0:
        return False
    days = _DAYS[month - 1]
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        days = 29
    return day <= days and hour <= 23 and minute <= 59 and second <= 59


def _is_version(v):
    if not isinstance(v, str):
        return False
    try:
        semver.parse(v)
    except ValueError:
        return False
    return True


def _is_size(v, low):
    return _is_int(v) and low <= v <= MAX_ARTIFACT_BYTES


def _schema(m):
    for k in m:
        if k not in _FIELDS:
            _bad("unknown field " + k)
    for k in _REQUIRED:
        if m.get(k) is None:
            _bad("missing field " + k)
    if m["schema"] != SCHEMA:
        _bad("schema must be " + SCHEMA)
    if not _is_name(m["name"]):
        _bad("name must be 1-64 of [a-z0-9._-], starting with a letter or digit")
    if not _is_version(m["version"]):
        _bad("version must be SemVer 2.0.0, at most 64 characters, no build metadata")
    sv = m["secure_version"]
    if not _is_int(sv) or not 0 <= sv <= MAX_SECURE_VERSION:
        _bad("secure_version must be an integer 0..2**32-1")
    if m["target"] not in TARGETS:
        _bad("target must be one of esp32, esp32c3, esp32c6, esp32s3")
    kind = m["kind"]
    if kind not in KINDS:
        _bad("kind must be app or image")
    mpv = m.get("min_previous_version")
    if mpv is not None and not _is_version(mpv):
        _bad("min_previous_version must be SemVer 2.0.0")
    if not _is_time(m["created_at"]):
        _bad("created_at must be YYYY-MM-DDTHH:MM:SSZ")
    exp = m.get("expires_at")
    if exp is not None:
        if not _is_time(exp):
            _bad("expires_at must be YYYY-MM-DDTHH:MM:SSZ")
        if exp <= m["created_at"]:
            _bad("expires_at must be after created_at")
    files = m.get("files")
    image = m.get("image")
    if files is not None:
        if not isinstance(files, list) or len(files) > MAX_FILES:
            _bad("files must be a list of at most 256 entries")
        paths = set()
        for f in files:
            if not isinstance(f, dict) or len(f) != 3:
                _bad("a file entry has exactly path, size, sha256")
            path = f.get("path")
            if not _is_path(path):
                _bad("file path must be relative, '/'-separated parts of [A-Za-z0-9._-]")
            if not _is_size(f.get("size"), 0):
                _bad("file size must be an integer 0..16 MiB")
            if not _is_sha256(f.get("sha256")):
                _bad("sha256 must be 64 lowercase hex digits")
            if path in paths:
                _bad("an app release lists a file path twice")
            paths.add(path)
    if image is not None:
        if not isinstance(image, dict) or len(image) != 2:
            _bad("image has exactly size, sha256")
        if not _is_size(image.get("size"), 1):
            _bad("image size must be an integer 1..16 MiB")
        if not _is_sha256(image.get("sha256")):
            _bad("sha256 must be 64 lowercase hex digits")
    if kind == "app":
        if not files or image is not None:
            _bad("an app release lists files and no image")
    elif image is None or files is not None:
        _bad("an image release has an image and no files")


check = _schema
