# TEST-ONLY shim of MicroPython's `machine` module for the unix port: never copied to a device.
# reset() ends the process with RESET_EXIT, which the harness (navign_firmware.sim) turns into the
# next power-on; the watchdog is enforced by the harness, which resets a board not fed in time.

import os
import sys

import _sim

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

RESET_EXIT = 3  # the process exit code that means "machine.reset()"

_CAUSES = {"pwron": PWRON_RESET, "hard": HARD_RESET, "wdt": WDT_RESET, "soft": SOFT_RESET}


def reset():
    _sim.emit("reset")
    sys.exit(RESET_EXIT)


def soft_reset():
    reset()


def reset_cause():
    return _CAUSES.get(os.getenv("NAVIGN_SIM_RESET_CAUSE") or "pwron", PWRON_RESET)


def unique_id():
    uid = os.getenv("NAVIGN_SIM_UID") or "a4cf12000001"
    return bytes(int(uid[i : i + 2], 16) for i in range(0, len(uid), 2))


def freq(hz=None):
    return 160000000


def idle():
    import bluetooth

    bluetooth.poll(1)


def lightsleep(ms=None):
    import _simtime

    _simtime.sleep_ms(ms or 0)


class WDT:
    # The hardware watchdog: once started it cannot be stopped; the harness resets the board
    # when feed() is not called within `timeout` ms.
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("timeout")
        self.timeout = timeout
        _sim.emit("wdt", timeout=timeout)

    def feed(self):
        _sim.emit("feed")
