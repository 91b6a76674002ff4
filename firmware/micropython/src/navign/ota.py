# Over-the-air updates, whatever the transport: what is installed, the anti-rollback floors, the
# verification of an offered release, and the sink that receives its artifact.
#
# /ota/state.json keeps the floors, which only ever rise:
# - secure_version: the highest secure_version of a release that COMMITTED on this beacon (raised
#   after the health check, never at install), together with the provisioned value from the config;
# - time_floor: the newest `created_at` of any release this beacon verified. A beacon has no
#   battery-backed clock, so this is its notion of "now" for `expires_at` (docs/protocol.md §6.4),
#   unless it learnt the time from the gateway in this boot.
# and the outcome of the last update, reported to the gateway until it acknowledges it.
#
# Memory: this module is what stays loaded. The verifier (release, jcs, p256, semver) and the
# sinks (appupdate, imageupdate) are imported when an update comes and unloaded after it, so the
# beacon's steady state leaves the heap to the radio and the network.
import gc

import esp32

import navign
from navign import fs
from navign.errors import Refused

STATE = "/ota/state.json"
BOOT_STATE = "/ota/boot.json"  # boot.py's: the app slots (see src/boot.py)
IMAGE_STATE = "/ota/image.json"  # imageupdate's: a download, then the image on trial
ENVELOPE_LIMIT = 16384  # a beacon's heap: manifests of ~100 files fit, 64 KiB envelopes do not
APP_DESC = 32  # offset of esp_app_desc_t in an ESP-IDF app image
_VERIFIER = ("dsse", "release", "schema", "jcs", "p256", "semver")


unload = navign.unload


def boot_state():
    state = fs.read_json(BOOT_STATE)
    if state is None or state.get("active") not in ("a", "b"):
        state = {"active": "a", "previous": None, "committed": True}
    return state


def image_state():
    return fs.read_json(IMAGE_STATE, {})


def running_label():
    return esp32.Partition(esp32.Partition.RUNNING).info()[4]


def firmware_version(part=None):
    # The version in the running (or given) partition's esp_app_desc_t, or "" if it has none.
    part = part or esp32.Partition(esp32.Partition.RUNNING)
    buf = bytearray(48 + 32)
    part.readblocks(0, buf)
    if buf[APP_DESC : APP_DESC + 4] != b"\x32\x54\xcd\xab":
        return ""
    return bytes(buf[APP_DESC + 16 : APP_DESC + 48]).split(b"\x00")[0].decode()


def image_trial_status():
    # After a boot: ("trial", info) when the new image runs unconfirmed, ("rolled_back", info)
    # when the bootloader went back to the old image, (None, None) otherwise.
    current = image_state()
    pending = current.get("pending")
    if not pending:
        return None, None
    if running_label() == pending:
        return "trial", current
    return "rolled_back", current


def on_trial():
    return not boot_state().get("committed", True) or bool(image_state().get("pending"))


def _state():
    return fs.read_json(STATE, {})


def _save(state):
    fs.makedirs("/ota")
    fs.write_json(STATE, state)


def installed():
    # {"app": version, "firmware": version} of what runs now.
    boot = boot_state()
    return {
        "app": boot.get("version") or navign.APP_VERSION,
        "firmware": firmware_version() or "0.0.0",
    }


def is_installed(manifest_sha256):
    # True when this release is what runs (app or image), committed or on trial.
    return bool(manifest_sha256) and manifest_sha256 in (
        boot_state().get("manifest_sha256"),
        image_state().get("manifest_sha256"),
    )


def secure_floor(cfg):
    return max(_state().get("secure_version", 0), cfg.secure_version)


def time_floor():
    return _state().get("time_floor")


def raise_floors(secure_version=None, created_at=None):
    state = _state()
    changed = False
    if secure_version is not None and secure_version > state.get("secure_version", 0):
        state["secure_version"] = secure_version
        changed = True
    if created_at is not None and (state.get("time_floor") or "") < created_at:
        state["time_floor"] = created_at
        changed = True
    if changed:
        _save(state)


def set_result(result):
    state = _state()
    state["result"] = result
    _save(state)


def result():
    return _state().get("result")


def clear_result(manifest_sha256):
    state = _state()
    current = state.get("result")
    if current and current.get("manifest_sha256") == manifest_sha256:
        state.pop("result")
        _save(state)


def reconcile(cfg):
    # At boot: learn what happened to the last update (trial, rollback) and make the floors
    # agree with what is committed. Returns (trial_kind or None, trial_info).
    boot = boot_state()
    rolled = boot.get("rolled_back")
    if rolled and (result() or {}).get("outcome") != "rolled_back":
        set_result(
            {
                "kind": "app",
                "version": rolled.get("version"),
                "manifest_sha256": rolled.get("manifest_sha256"),
                "outcome": "rolled_back",
                "reason": rolled.get("reason", "trial_failed"),
            }
        )
    if boot.get("committed", True):
        raise_floors(secure_version=boot.get("secure_version", 0))
    status, info = image_trial_status()
    if status == "rolled_back":
        set_result(
            {
                "kind": "image",
                "version": info.get("version"),
                "manifest_sha256": info.get("manifest_sha256"),
                "outcome": "rolled_back",
                "reason": "bootloader_rollback",
            }
        )
        fs.write_json(IMAGE_STATE, {"rolled_back": info.get("version")})
    committed_image = image_state()
    if committed_image.get("committed"):
        raise_floors(secure_version=committed_image.get("secure_version", 0))
    if status == "trial":
        return "image", info
    if not boot.get("committed", True):
        return "app", boot
    return None, None


def commit(kind, info):
    # The health check passed: keep what is on trial and raise the floors.
    if kind == "image":
        current = image_state()
        if current.get("pending") and running_label() == current["pending"]:
            esp32.Partition.mark_app_valid_cancel_rollback()
            fs.write_json(
                IMAGE_STATE,
                {
                    "committed": current.get("version"),
                    "secure_version": current.get("secure_version", 0),
                },
            )
    else:
        state = boot_state()
        if not state.get("committed", True):
            state["committed"] = True
            state.pop("tries", None)
            state.pop("rolled_back", None)
            fs.write_json(BOOT_STATE, state)
    raise_floors(secure_version=info.get("secure_version", 0))
    set_result(
        {
            "kind": kind,
            "version": info.get("version"),
            "manifest_sha256": info.get("manifest_sha256"),
            "outcome": "committed",
        }
    )


def open_release(envelope, cfg, now=None):
    # Verify an offered release against this beacon's keys and state (docs/protocol.md §6.5,
    # steps 1-5). Returns (manifest, manifest_sha256); raises Refused(reason).
    if len(envelope) > ENVELOPE_LIMIT:
        raise Refused("too_large", "envelope over %d bytes" % ENVELOPE_LIMIT)
    if not cfg.release_keys:
        raise Refused("no_keys", "this beacon has no release keys")
    # The envelope's shape (the JSON parser), the signatures (P-256), the manifest (the parser
    # again), its schema, the policy: each part of the verifier is loaded for its step and
    # unloaded after it, so that the beacon's heap holds one part at a time beside the app.
    gc.collect()
    stage = "shape"
    try:
        from navign import dsse

        payload, entries = dsse.shape(envelope)  # loads navign.jcs
        unload(("jcs",))
        stage = "signatures"
        trusted = {}
        for point in cfg.release_keys:
            trusted[dsse.keyid(point)] = point
        dsse.check_signatures(payload, entries, trusted, cfg.release_threshold)  # navign.p256
        dsse = trusted = entries = None
        unload(("dsse", "p256"))
        stage = "manifest"
        from navign import release

        manifest, payload, manifest_sha256 = release.parse_manifest(payload, check_schema=False)
        payload = None
        unload(("jcs",))
        stage = "schema"
        from navign import schema

        schema.check(manifest)
        schema = None
        unload(("schema",))
        stage = "policy"
        current = installed()
        version = current["app"] if manifest["kind"] == "app" else current["firmware"]
        release.check_installable(
            manifest, cfg.chip, version, secure_floor(cfg), now=now, time_floor=time_floor()
        )
    except MemoryError:
        dsse = release = schema = payload = entries = trusted = None
        unload(_VERIFIER)
        # On the console: where a release did not fit, and what was free after it.
        print("out of memory verifying the release:", stage, "free", gc.mem_free())
        raise Refused("too_large", "the release does not fit in memory (%s)" % stage)
    finally:
        dsse = release = schema = None
        unload(_VERIFIER)
    raise_floors(created_at=manifest["created_at"])
    return manifest, manifest_sha256


def sink_for(manifest, manifest_sha256, cfg, buf=None):
    if on_trial():
        raise Refused("busy", "an update is on trial")
    if manifest["kind"] == "app":
        from navign.appupdate import AppSink

        return AppSink(manifest, manifest_sha256, buf, cfg.trial_boots)
    from navign.imageupdate import ImageSink

    return ImageSink(manifest, manifest_sha256, buf)


def finish(sink):
    # Check and switch; the caller resets the board afterwards.
    if sink.kind == "image":
        sink.finish(installed()["firmware"])
    else:
        sink.finish()
    set_result(
        {
            "kind": sink.kind,
            "version": sink.manifest["version"],
            "manifest_sha256": sink.manifest_sha256,
            "outcome": "installed",
        }
    )
