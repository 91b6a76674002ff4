# TEST-ONLY shim of MicroPython's `bluetooth` module for the unix port: never copied to a device.
# Advertising is reported to the harness (an "adv" event with the payload bytes in hex), which
# plays the part of every scanner in range. GATT is added by the BLE OTA work.

import binascii

import _sim

FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010


class UUID:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, UUID) and self.value == other.value

    def __repr__(self):
        return "UUID(%r)" % (self.value,)


_state = {"active": False, "irq": None, "config": {"gap_name": "MPY ESP32", "mtu": 23}}


class BLE:
    # Every BLE() is the one radio (as on the board): the state is module-wide.
    @property
    def _active(self):
        return _state["active"]

    @property
    def _config(self):
        return _state["config"]

    def active(self, value=None):
        if value is None:
            return self._active
        _state["active"] = bool(value)
        _sim.emit("ble", active=_state["active"])
        return _state["active"]

    def config(self, *args, **kwargs):
        if args:
            return self._config[args[0]]
        self._config.update(kwargs)
        return None

    def irq(self, handler):
        _state["irq"] = handler

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        if not self._active:
            raise OSError(19)
        if interval_us is None:
            _sim.emit("adv", interval_us=None)
            return
        if (
            adv_data is not None
            and len(adv_data) > 31
            or resp_data is not None
            and len(resp_data) > 31
        ):
            raise ValueError("advertising payload over 31 bytes")
        _sim.emit(
            "adv",
            interval_us=interval_us,
            adv=None if adv_data is None else binascii.hexlify(adv_data).decode(),
            resp=None if resp_data is None else binascii.hexlify(resp_data).decode(),
            connectable=connectable,
        )
