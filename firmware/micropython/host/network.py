# TEST-ONLY shim of MicroPython's `network` module for the unix port: never copied to a device.
# The "radio" is the host's loopback: WLAN.connect succeeds when the SSID and password match
# NAVIGN_SIM_WIFI ("ssid:password"), after NAVIGN_SIM_WIFI_DELAY_MS; sockets then use the host's
# network stack as they would use the ESP32's lwIP.

import os
import time

import _sim

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = -3
STAT_NO_AP_FOUND = -2
STAT_GOT_IP = 1010


class WLAN:
    def __init__(self, interface=STA_IF):
        self._if = interface
        self._active = False
        self._status = STAT_IDLE
        self._ready_at = None

    def active(self, value=None):
        if value is None:
            return self._active
        self._active = bool(value)
        return None

    def connect(self, ssid=None, key=None):
        if not self._active:
            raise OSError("WiFi Internal State Error")
        want = os.getenv("NAVIGN_SIM_WIFI") or ""
        wanted_ssid, _, wanted_key = want.partition(":")
        if not want or ssid != wanted_ssid:
            self._status = STAT_NO_AP_FOUND
            return
        if (key or "") != wanted_key:
            self._status = STAT_WRONG_PASSWORD
            return
        self._status = STAT_CONNECTING
        delay = int(os.getenv("NAVIGN_SIM_WIFI_DELAY_MS") or "50")
        self._ready_at = time.ticks_add(time.ticks_ms(), delay)
        _sim.emit("wifi", ssid=ssid)

    def disconnect(self):
        self._status = STAT_IDLE
        self._ready_at = None

    def status(self, param=None):
        if (
            self._status == STAT_CONNECTING
            and time.ticks_diff(time.ticks_ms(), self._ready_at) >= 0
        ):
            self._status = STAT_GOT_IP
        return self._status

    def isconnected(self):
        return self.status() == STAT_GOT_IP

    def ifconfig(self, config=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kwargs):
        if args == ("mac",):
            import machine

            return machine.unique_id()[:6]
        return None
