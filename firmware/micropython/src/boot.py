# Navign beacon loader. Runs on every boot, before main.py. It is NOT part of app releases: it
# stays the same across app updates, so a broken app can never break the way back.
#
# The app lives in /app/<slot>/ (slots "a" and "b"); /ota/boot.json says which slot is active,
# which one holds the previous app, and whether the active app is still on trial (installed but
# not yet confirmed healthy). Each boot of an app on trial counts one try; after `max_tries`
# tries without the app confirming its health, this loader goes back to the previous app by
# itself. boot.json is replaced atomically (write a temporary file, then rename), so a power cut
# leaves either the old or the new state, never a mix.
import json
import os
import sys

STATE = "/ota/boot.json"


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _read_state():
    try:
        with open(STATE) as f:
            state = json.load(f)
        if isinstance(state, dict) and state.get("active") in ("a", "b"):
            return state
    except (OSError, ValueError):
        pass
    # No (readable) state: a freshly provisioned board runs slot a.
    return {"active": "a", "previous": None, "committed": True}


def _write_state(state):
    try:
        os.mkdir("/ota")
    except OSError:
        pass
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, STATE)


def _select():
    state = _read_state()
    if not state.get("committed", True):
        tries = state.get("tries", 0)
        previous = state.get("previous")
        if tries >= state.get("max_tries", 3) and previous in ("a", "b"):
            # The app on trial never confirmed: back to the previous app, and say why.
            state["rolled_back"] = {
                "version": state.get("version"),
                "manifest_sha256": state.get("manifest_sha256"),
                "reason": "trial_failed",
                "tries": tries,
            }
            state["active"], state["previous"] = previous, state["active"]
            state["version"] = state.get("previous_version")
            state["manifest_sha256"] = state.get("previous_manifest_sha256")
            state["secure_version"] = state.get("previous_secure_version", 0)
            state["committed"] = True
            state.pop("tries", None)
            _write_state(state)
        else:
            state["tries"] = tries + 1
            _write_state(state)
    return state


try:
    _state = _select()
    _slot = "/app/" + _state["active"]
    if not _exists(_slot):
        _slot = "/app/a"
except Exception as exc:  # the loader must never stop the boot
    sys.print_exception(exc)
    _slot = "/app/a"
sys.path[:] = ["", _slot, ".frozen", "/lib"]
