# TEST-ONLY: the simulated board's control channel to the host harness (navign_firmware.sim).
# Events are JSON lines on the file descriptor NAVIGN_SIM_CTL_FD: what the hardware would show
# to someone watching it (boot decisions, watchdog, resets, advertising). It is opened before
# littlefs is mounted at "/" (after that, host paths are out of reach).

import json
import os

_ctl = None


def open_channel():
    global _ctl
    fd = os.getenv("NAVIGN_SIM_CTL_FD")
    if fd and _ctl is None:
        _ctl = open("/proc/self/fd/" + fd, "wb")


def emit(event, **fields):
    if _ctl is None:
        return
    fields["ev"] = event
    # One write() per event, unbuffered (flush() would fsync, which a pipe refuses).
    _ctl.write(json.dumps(fields).encode() + b"\n")
