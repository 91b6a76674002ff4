# The beacon's configuration: a JSON object in a file on flash (DEFAULT_PATH).
#
# load() never raises: a broken file must never stop the beacon advertising. Every field is
# validated on its own; a bad field takes its default and is recorded in cfg.errors as
# (field, reason), the other fields are kept. cfg.fallback is bool(cfg.errors) (the beacon shows it
# in its scan response, see navign.adv).
#
# Reasons (short, machine-readable):
#   file-level (field "file"; all fields take their defaults):
#     "missing" (no such file), "unreadable", "too_large" (> MAX_BYTES), "bad_encoding" (not
#     UTF-8), "bad_json", "no_memory" (e.g. absurdly deep nesting), "not_an_object",
#     "internal" (a bug in this module; never expected)
#   per field:
#     "missing" (only for the identity fields beacon_id, entity_uuid, major, minor: a beacon
#     without them collides with every other unprovisioned beacon; the other fields are optional),
#     "wrong_type" (JSON true/false are never ints, 3.0 is not an int), "out_of_range" (numbers,
#     lengths), "bad_format" (characters, shape), "unsupported" (chip, or a tx_power level the chip
#     cannot set), "duplicate" (a release key given twice), "unknown" (a key this firmware does not
#     know: recorded so a typo is visible, nothing falls back).
# Nested fields are named "wifi.ssid", "gateway.port", "ota.trial_boots", ...
#
# Config attributes: beacon_id, entity_uuid, uuid_bytes, major, minor, measured_power, tx_power,
# adv_interval_ms, chip, wifi (None or {"ssid", "password"}), gateway (None or {"host", "port"}),
# release_keys (list of 65-byte bytes), release_threshold, secure_version, trial_boots,
# health_timeout_s, report_interval_s, errors, fallback, can_update.

import binascii
import errno
import hashlib
import json

from micropython import const

DEFAULT_PATH = "/config.json"
# The largest config file read (one 4 KiB block of flash; a provisioned config is < 1.5 KiB).
MAX_BYTES = const(4096)

# The entity UUID (iBeacon proximity UUID) of a beacon not yet provisioned to an entity.
UNPROVISIONED_UUID = "a12bf56f-887e-4f9d-8cc9-2a34449026de"
UNPROVISIONED_PREFIX = "unprovisioned-"

CHIPS = ("esp32", "esp32c3", "esp32s3")
# BLE TX power levels (dBm) each chip's controller can set (ESP-IDF esp_power_level_t).
CHIP_TX_LEVELS = {
    "esp32": (-12, -9, -6, -3, 0, 3, 6, 9),
    "esp32c3": (-24, -21, -18, -15, -12, -9, -6, -3, 0, 3, 6, 9, 12, 15, 18),
    "esp32s3": (-24, -21, -18, -15, -12, -9, -6, -3, 0, 3, 6, 9, 12, 15, 18),
}

DEFAULT_CHIP = "esp32"
# 0 dBm: valid on every chip, and conservative (battery, and a beacon heard from across the whole
# floor is worse for positioning, not better). Installers raise it per site.
DEFAULT_TX_POWER = const(0)
# RSSI at 1 m of a typical ESP32 module at 0 dBm; calibrated per site.
DEFAULT_MEASURED_POWER = const(-59)
# Apple's iBeacon guidance is ~100 ms; 200 ms halves the radio's duty cycle and still gives a
# phone scanning at 1 Hz about five packets per second per beacon.
DEFAULT_ADV_INTERVAL_MS = const(200)
DEFAULT_GATEWAY_PORT = const(8080)
DEFAULT_TRIAL_BOOTS = const(3)
DEFAULT_HEALTH_TIMEOUT_S = const(120)
DEFAULT_REPORT_INTERVAL_S = const(30)
MAX_RELEASE_KEYS = const(8)

_KEYS = (
    "beacon_id",
    "entity_uuid",
    "major",
    "minor",
    "measured_power",
    "tx_power",
    "adv_interval_ms",
    "chip",
    "wifi",
    "gateway",
    "release_keys",
    "release_threshold",
    "secure_version",
    "ota",
)
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
_HOST_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"
_HEX = "0123456789abcdefABCDEF"
_DIGITS = "0123456789"
_MISSING = object()


class Config:
    def __init__(self, unique_id=b""):
        suffix = ""
        if isinstance(unique_id, (bytes, bytearray)):
            suffix = binascii.hexlify(unique_id).decode()
        self.beacon_id = UNPROVISIONED_PREFIX + suffix
        self.entity_uuid = UNPROVISIONED_UUID
        self.uuid_bytes = _uuid_bytes(UNPROVISIONED_UUID)
        self.major = 0
        self.minor = 0
        self.measured_power = DEFAULT_MEASURED_POWER
        self.tx_power = DEFAULT_TX_POWER
        self.adv_interval_ms = DEFAULT_ADV_INTERVAL_MS
        self.chip = DEFAULT_CHIP
        self.wifi = None
        self.gateway = None
        self.release_keys = []
        self.release_threshold = 1
        self.secure_version = 0
        self.trial_boots = DEFAULT_TRIAL_BOOTS
        self.health_timeout_s = DEFAULT_HEALTH_TIMEOUT_S
        self.report_interval_s = DEFAULT_REPORT_INTERVAL_S
        self.errors = []

    @property
    def fallback(self):
        # True when any field fell back to its default (or a key was unknown).
        return bool(self.errors)

    @property
    def can_update(self):
        # Without release keys the beacon advertises but refuses every update.
        return bool(self.release_keys)

    def _err(self, field, reason):
        self.errors.append((field, reason))


def load(path=DEFAULT_PATH, unique_id=b""):
    # The configuration in `path`; never raises. unique_id is machine.unique_id() (the default
    # beacon_id is "unprovisioned-" + its hex).
    try:
        cfg = Config(unique_id)
        doc = _read(path, cfg)
        if doc is not None:
            _apply(cfg, doc)
        return cfg
    except Exception:  # a bug here must still leave a beacon that advertises
        cfg = Config(unique_id)
        cfg._err("file", "internal")
        return cfg


def _read(path, cfg):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # one byte more than allowed tells "too large"
    except OSError as e:
        cfg._err("file", "missing" if e.errno == errno.ENOENT else "unreadable")
        return None
    if len(data) > MAX_BYTES:
        cfg._err("file", "too_large")
        return None
    try:
        text = str(data, "utf-8")
    except UnicodeError:
        cfg._err("file", "bad_encoding")
        return None
    data = None
    try:
        doc = json.loads(text)
    except MemoryError:
        cfg._err("file", "no_memory")
        return None
    except ValueError:
        cfg._err("file", "bad_json")
        return None
    if type(doc) is not dict:
        cfg._err("file", "not_an_object")
        return None
    return doc


def _apply(cfg, doc):
    v = doc.get("beacon_id", _MISSING)
    r = "missing" if v is _MISSING else _check_beacon_id(v)
    if r:
        cfg._err("beacon_id", r)
    else:
        cfg.beacon_id = v

    v = doc.get("entity_uuid", _MISSING)
    r = "missing" if v is _MISSING else _check_uuid(v)
    if r:
        cfg._err("entity_uuid", r)
    else:
        cfg.entity_uuid = v.lower()
        cfg.uuid_bytes = _uuid_bytes(cfg.entity_uuid)

    for name in ("major", "minor"):
        v = doc.get(name, _MISSING)
        r = "missing" if v is _MISSING else _check_int(v, 0, 0xFFFF)
        if r:
            cfg._err(name, r)
        else:
            setattr(cfg, name, v)

    _int_field(cfg, doc, "measured_power", -127, -1)

    # chip before tx_power: the allowed levels depend on it.
    v = doc.get("chip", _MISSING)
    if v is not _MISSING:
        if type(v) is not str:
            cfg._err("chip", "wrong_type")
        elif v not in CHIP_TX_LEVELS:
            cfg._err("chip", "unsupported")
        else:
            cfg.chip = v

    v = doc.get("tx_power", _MISSING)
    if v is not _MISSING:
        if type(v) is not int:
            cfg._err("tx_power", "wrong_type")
        elif v not in CHIP_TX_LEVELS[cfg.chip]:
            cfg._err("tx_power", "unsupported")
        else:
            cfg.tx_power = v

    _int_field(cfg, doc, "adv_interval_ms", 100, 10240)

    v = doc.get("wifi")
    if v is not None:
        cfg.wifi = _wifi(cfg, v)

    v = doc.get("gateway")
    if v is not None:
        cfg.gateway = _gateway(cfg, v)

    v = doc.get("release_keys", _MISSING)
    if v is not _MISSING:
        keys, r = _release_keys(v)
        if r:
            cfg._err("release_keys", r)
        else:
            cfg.release_keys = keys

    # At most one per key; a bad threshold falls back to all keys (the strictest satisfiable
    # value), never to 1: a typo must not turn a 3-of-4 release policy into 1-of-4.
    most = len(cfg.release_keys) or 1
    v = doc.get("release_threshold", _MISSING)
    if v is not _MISSING:
        r = _check_int(v, 1, most)
        if r:
            cfg._err("release_threshold", r)
            cfg.release_threshold = most
        else:
            cfg.release_threshold = v

    _int_field(cfg, doc, "secure_version", 0, 0xFFFFFFFF)

    v = doc.get("ota")
    if v is not None:
        if type(v) is not dict:
            cfg._err("ota", "wrong_type")
        else:
            _int_field(cfg, v, "trial_boots", 1, 10, "ota.")
            _int_field(cfg, v, "health_timeout_s", 10, 3600, "ota.")
            _int_field(cfg, v, "report_interval_s", 5, 3600, "ota.")
            _unknown(cfg, v, ("trial_boots", "health_timeout_s", "report_interval_s"), "ota.")

    _unknown(cfg, doc, _KEYS, "")


def _unknown(cfg, obj, known, prefix):
    for k in sorted(obj):
        if k not in known:
            cfg._err(prefix + k, "unknown")


def _int_field(cfg, obj, name, lo, hi, prefix=""):
    # An optional int field: absent keeps the default.
    v = obj.get(name, _MISSING)
    if v is _MISSING:
        return
    r = _check_int(v, lo, hi)
    if r:
        cfg._err(prefix + name, r)
    else:
        setattr(cfg, name, v)


def _check_int(v, lo, hi):
    if type(v) is not int:  # bool is not int (type(True) is bool)
        return "wrong_type"
    if v < lo or v > hi:
        return "out_of_range"
    return None


def _only(s, chars):
    return all(c in chars for c in s)


def _check_beacon_id(v):
    if type(v) is not str:
        return "wrong_type"
    if not 1 <= len(v) <= 64:
        return "out_of_range"
    if not _only(v, _ID_CHARS):
        return "bad_format"
    return None


def _check_uuid(v):
    if type(v) is not str:
        return "wrong_type"
    if len(v) != 36:
        return "bad_format"
    for i in range(36):
        if i in (8, 13, 18, 23):
            if v[i] != "-":
                return "bad_format"
        elif v[i] not in _HEX:
            return "bad_format"
    return None


def _uuid_bytes(canonical):
    # 16 bytes, big-endian (RFC 4122 order), as iBeacon sends the proximity UUID.
    return binascii.unhexlify(canonical.replace("-", ""))


def _wifi(cfg, v):
    # {"ssid", "password"} or None. Any bad member drops the whole object: a default SSID or an
    # open-network password would only join a different network.
    if type(v) is not dict:
        cfg._err("wifi", "wrong_type")
        return None
    _unknown(cfg, v, ("ssid", "password"), "wifi.")
    ssid = v.get("ssid", _MISSING)
    r = "missing" if ssid is _MISSING else _check_ssid(ssid)
    if r:
        cfg._err("wifi.ssid", r)
        return None
    password = v.get("password", "")  # absent: an open network
    r = _check_password(password)
    if r:
        cfg._err("wifi.password", r)
        return None
    return {"ssid": ssid, "password": password}


def _check_ssid(v):
    if type(v) is not str:
        return "wrong_type"
    b = v.encode()
    if not 1 <= len(b) <= 32:
        return "out_of_range"
    # JSON "\ud800" escapes decode to a lone surrogate: not UTF-8, so not a valid SSID.
    for i in range(len(b) - 1):
        if b[i] == 0xED and b[i + 1] >= 0xA0:
            return "bad_format"
    return None


def _check_password(v):
    # WPA2/WPA3 passphrase: 8..63 printable ASCII characters; "" for an open network.
    if type(v) is not str:
        return "wrong_type"
    for c in v:
        if not 32 <= ord(c) <= 126:
            return "bad_format"
    if len(v) != 0 and not 8 <= len(v) <= 63:
        return "out_of_range"
    return None


def _gateway(cfg, v):
    # {"host", "port"} or None. A bad host drops the gateway; a bad port takes 8080.
    if type(v) is not dict:
        cfg._err("gateway", "wrong_type")
        return None
    _unknown(cfg, v, ("host", "port"), "gateway.")
    host = v.get("host", _MISSING)
    r = "missing" if host is _MISSING else _check_host(host)
    if r:
        cfg._err("gateway.host", r)
        return None
    port = v.get("port", _MISSING)
    if port is _MISSING:
        port = DEFAULT_GATEWAY_PORT
    else:
        r = _check_int(port, 1, 65535)
        if r:
            cfg._err("gateway.port", r)
            port = DEFAULT_GATEWAY_PORT
    return {"host": host, "port": port}


def _check_host(v):
    # A DNS hostname (labels 1..63 of letters, digits, '-', not starting or ending with '-') or a
    # dotted-quad IPv4 address. A name whose last label is all digits must be an IPv4 address.
    if type(v) is not str:
        return "wrong_type"
    if not 1 <= len(v) <= 253:
        return "out_of_range"
    if not _only(v, _HOST_CHARS):
        return "bad_format"
    labels = v.split(".")
    for label in labels:
        if not 1 <= len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return "bad_format"
    if _only(labels[-1], _DIGITS):
        if len(labels) != 4:
            return "bad_format"
        for label in labels:
            if not _only(label, _DIGITS) or len(label) > 3 or int(label) > 255:
                return "bad_format"
            if len(label) > 1 and label[0] == "0":  # 010 is octal to some resolvers
                return "bad_format"
    return None


def _release_keys(v):
    # ([bytes], None) or (None, reason). Any bad entry drops the whole list (no keys: the beacon
    # refuses every update) rather than keeping a subset the release policy was not written for.
    if type(v) is not list:
        return None, "wrong_type"
    if len(v) > MAX_RELEASE_KEYS:
        return None, "out_of_range"
    keys = []
    for k in v:
        if type(k) is not str:
            return None, "wrong_type"
        # 65-byte uncompressed SEC1 P-256 point; the curve check is navign's verifier's job.
        if len(k) != 130 or k[:2] != "04" or not _only(k, _HEX):
            return None, "bad_format"
        b = binascii.unhexlify(k)
        if b in keys:
            return None, "duplicate"
        keys.append(b)
    return keys, None


def dump(cfg, redact=False):
    # The effective configuration as a JSON-able dict with the file's keys (wifi and gateway
    # only when configured). load() of json.dumps(dump(cfg)) gives the same configuration.
    # redact=True replaces the WiFi password (for logs).
    d = {
        "beacon_id": cfg.beacon_id,
        "entity_uuid": cfg.entity_uuid,
        "major": cfg.major,
        "minor": cfg.minor,
        "measured_power": cfg.measured_power,
        "tx_power": cfg.tx_power,
        "adv_interval_ms": cfg.adv_interval_ms,
        "chip": cfg.chip,
        "release_keys": [binascii.hexlify(k).decode() for k in cfg.release_keys],
        "release_threshold": cfg.release_threshold,
        "secure_version": cfg.secure_version,
        "ota": {
            "trial_boots": cfg.trial_boots,
            "health_timeout_s": cfg.health_timeout_s,
            "report_interval_s": cfg.report_interval_s,
        },
    }
    if cfg.wifi is not None:
        d["wifi"] = {
            "ssid": cfg.wifi["ssid"],
            "password": "<redacted>" if redact else cfg.wifi["password"],
        }
    if cfg.gateway is not None:
        d["gateway"] = {"host": cfg.gateway["host"], "port": cfg.gateway["port"]}
    return d


def config_hash(path=DEFAULT_PATH):
    # Hex SHA-256 of the file's bytes (streamed, any size), or None when it cannot be read.
    h = hashlib.sha256()
    buf = bytearray(512)
    mv = memoryview(buf)
    try:
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(mv[:n])
    except OSError:
        return None
    return binascii.hexlify(h.digest()).decode()
