# TEST-ONLY shim of MicroPython's `bluetooth` module for the unix port: never copied to a device.
#
# Advertising is reported to the harness (an "adv" event with the payload bytes in hex), which
# plays the part of every scanner in range.
#
# GATT server: the registered services are reachable by one central at a time over a TCP socket
# on 127.0.0.1 (its port is announced with a "gatt" event). The central (the host's
# navign_firmware.blelink, and the gateway's test BLE backend) speaks a small framing that stands
# for the radio link: every frame is op (u8), handle (u16 LE), length (u16 LE), data.
#   central -> board: 0x01 CONNECT (data: u16 MTU), 0x02 WRITE (acknowledged with 0x82 after the
#     app's IRQ handler ran, or 0x8E when the characteristic is not writable), 0x03 WRITE
#     WITHOUT RESPONSE, 0x04 READ (answered by 0x84), 0x05 DISCONNECT
#   board -> central: 0x81 CONNECTED (data: JSON of the services, characteristics and handles),
#     0x10 NOTIFY, 0x11 DISCONNECTED (the board called gap_disconnect)
# IRQs reach the app as on a board: between its own work, while it sleeps (host/_simtime.py makes
# time.sleep* and machine.idle poll this link). A characteristic's value is a buffer of
# `gatts_set_buffer` capacity (20 bytes by default, as in MicroPython): longer writes are cut,
# and in append mode successive writes accumulate until the app reads them.

import binascii
import json
import os
import select
import socket
import struct

import _sim

FLAG_BROADCAST = 0x0001
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_MTU_EXCHANGED = 21

_BASE = "-0000-1000-8000-00805f9b34fb"

# On a board the BLE stack's buffers are C memory, not MicroPython's heap. The shim allocates its
# buffers once, at import (before host/poweron.py sizes the firmware's heap), and reuses them.
_POOL = bytearray(12288)  # characteristic values
_RX = bytearray(8192)  # frames from the central
_TX = bytearray(1024)  # one frame to the central


class UUID:
    def __init__(self, value):
        if isinstance(value, int):
            value = "%08x" % value + _BASE
        self.value = value.lower()

    def __eq__(self, other):
        return isinstance(other, UUID) and self.value == other.value

    def __repr__(self):
        return "UUID('%s')" % self.value


_state = {
    "active": False,
    "irq": None,
    "config": {"gap_name": "MPY ESP32", "mtu": 23},
    "chars": {},  # value handle -> {"uuid", "flags", "value", "cap", "append"}
    "services": [],
    "listener": None,
    "conn": None,
    "conn_handle": 0,
    "rx_fill": 0,
    "poller": None,
    "pool_used": 0,
}


def _send(op, handle, data=b""):
    conn = _state["conn"]
    if conn is None:
        return False
    n = len(data)
    if n > len(_TX) - 5:
        raise ValueError("frame too long")
    struct.pack_into("<BHH", _TX, 0, op, handle, n)
    _TX[5 : 5 + n] = data
    try:
        conn.write(memoryview(_TX)[: 5 + n])
        return True
    except OSError:
        _drop()
        return False


def _irq(event, data):
    handler = _state["irq"]
    if handler is not None:
        handler(event, data)


def _drop():
    conn = _state["conn"]
    if conn is None:
        return
    _state["poller"].unregister(conn)
    conn.close()
    _state["conn"] = None
    _state["rx_fill"] = 0
    _irq(_IRQ_CENTRAL_DISCONNECT, (_state["conn_handle"], 0, b"\x00" * 6))


def _accept():
    conn, _addr = _state["listener"].accept()
    if _state["conn"] is not None:
        # One central at a time: a new connection means the old link is gone (the central
        # reconnected before this side noticed), as the radio would report a supervision timeout.
        _drop()
    conn.setblocking(False)
    _state["conn"] = conn
    _state["poller"].register(conn, select.POLLIN)


def _handle(op, handle, data):
    chars = _state["chars"]
    if op == 0x01:
        _state["conn_handle"] += 1
        mtu = struct.unpack("<H", data)[0] if len(data) == 2 else 23
        mtu = max(23, min(mtu, _state["config"]["mtu"]))
        _irq(_IRQ_CENTRAL_CONNECT, (_state["conn_handle"], 0, b"\x00" * 6))
        _irq(_IRQ_MTU_EXCHANGED, (_state["conn_handle"], mtu))
        desc = {"mtu": mtu, "services": _state["services"]}
        _send(0x81, 0, json.dumps(desc).encode())
    elif op in (0x02, 0x03):
        char = chars.get(handle)
        allowed = FLAG_WRITE if op == 0x02 else FLAG_WRITE_NO_RESPONSE
        if char is None or not char["flags"] & allowed:
            if op == 0x02:
                _send(0x8E, handle)
            return
        start = char["len"] if char["append"] else 0
        n = max(0, min(len(data), char["cap"] - start))
        char["buf"][start : start + n] = data[:n]
        char["len"] = start + n
        _irq(_IRQ_GATTS_WRITE, (_state["conn_handle"], handle))
        if op == 0x02:
            _send(0x82, handle)
    elif op == 0x04:
        char = chars.get(handle)
        if char is None or not char["flags"] & FLAG_READ:
            _send(0x8E, handle)
        else:
            _send(0x84, handle, char["buf"][: char["len"]])
    elif op == 0x05:
        _drop()


def _read_frames():
    conn = _state["conn"]
    fill = _state["rx_fill"]
    try:
        n = conn.readinto(memoryview(_RX)[fill:])
    except OSError:
        n = None
    if not n:
        _drop()
        return
    fill += n
    pos = 0
    while fill - pos >= 5:
        op, handle, length = struct.unpack_from("<BHH", _RX, pos)
        if fill - pos - 5 < length:
            break
        data = memoryview(_RX)[pos + 5 : pos + 5 + length]
        pos += 5 + length
        _handle(op, handle, data)
        if _state["conn"] is None:
            return
    if pos:
        _RX[: fill - pos] = _RX[pos:fill]
    _state["rx_fill"] = fill - pos


def listening():
    return _state["poller"] is not None


def poll(timeout_ms):
    # Wait up to timeout_ms for the link; deliver what arrives as IRQs. Returns at once when
    # anything was handled (the caller sleeps the rest).
    poller = _state["poller"]
    if poller is None:
        return False
    ready = poller.poll(max(0, timeout_ms))
    for obj, _ev in ready:
        if obj is _state["listener"]:
            _accept()
        elif obj is _state["conn"]:
            _read_frames()
    return bool(ready)


class BLE:
    # Every BLE() is the one radio (as on the board): the state is module-wide.
    def active(self, value=None):
        if value is None:
            return _state["active"]
        _state["active"] = bool(value)
        _sim.emit("ble", active=_state["active"])
        return _state["active"]

    def config(self, *args, **kwargs):
        if args:
            return _state["config"][args[0]]
        _state["config"].update(kwargs)
        return None

    def irq(self, handler):
        _state["irq"] = handler

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        if not _state["active"]:
            raise OSError(19)
        if interval_us is None:
            _sim.emit("adv", interval_us=None)
            return
        if (adv_data is not None and len(adv_data) > 31) or (
            resp_data is not None and len(resp_data) > 31
        ):
            raise ValueError("advertising payload over 31 bytes")
        _sim.emit(
            "adv",
            interval_us=interval_us,
            adv=None if adv_data is None else binascii.hexlify(adv_data).decode(),
            resp=None if resp_data is None else binascii.hexlify(resp_data).decode(),
            connectable=connectable,
        )

    def gap_disconnect(self, conn_handle):
        if _state["conn"] is None or conn_handle != _state["conn_handle"]:
            return False
        _send(0x11, 0)
        _drop()
        return True

    def gatts_register_services(self, services):
        if not _state["active"]:
            raise OSError(19)
        handle = 0
        out = []
        described = []
        _state["chars"] = {}
        _state["pool_used"] = 0
        for service_uuid, chars in services:
            handle += 1
            handles = []
            entry = {"uuid": service_uuid.value, "chars": []}
            for char in chars:
                handle += 2  # declaration, then value
                flags = char[1]
                _state["chars"][handle] = {
                    "uuid": char[0].value,
                    "flags": flags,
                    "buf": None,
                    "len": 0,
                    "cap": 20,
                    "append": False,
                }
                _set_buffer(handle, 20, False)
                entry["chars"].append({"uuid": char[0].value, "handle": handle, "flags": flags})
                handles.append(handle)
                if flags & (FLAG_NOTIFY | FLAG_INDICATE):
                    handle += 1  # CCCD
            described.append(entry)
            out.append(tuple(handles))
        _state["services"] = described
        if _state["listener"] is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # The harness picks the port (NAVIGN_SIM_BLE_PORT), one per board, kept across
            # reboots as a board keeps its BLE address.
            port = int(os.getenv("NAVIGN_SIM_BLE_PORT") or "0")
            listener.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
            listener.listen(1)
            listener.setblocking(False)
            _state["listener"] = listener
            _state["poller"] = select.poll()
            _state["poller"].register(listener, select.POLLIN)
            _sim.emit("gatt", port=port)
        return tuple(out)

    def gatts_read(self, handle):
        char = _state["chars"][handle]
        value = bytes(char["buf"][: char["len"]])
        if char["append"]:
            char["len"] = 0
        return value

    def gatts_write(self, handle, data, send_update=False):
        char = _state["chars"][handle]
        n = min(len(data), char["cap"])
        char["buf"][:n] = data[:n]
        char["len"] = n
        if send_update and _state["conn"] is not None:
            _send(0x10, handle, data)

    def gatts_notify(self, conn_handle, handle, data=None):
        if _state["conn"] is None or conn_handle != _state["conn_handle"]:
            raise OSError(128)  # ENOTCONN
        if data is None:
            char = _state["chars"][handle]
            data = char["buf"][: char["len"]]
        _send(0x10, handle, data)

    def gatts_set_buffer(self, handle, length, append=False):
        _set_buffer(handle, length, append)


def _set_buffer(handle, length, append):
    # A value buffer carved from the shim's pool (a board's BLE stack allocates it in C).
    char = _state["chars"][handle]
    used = _state["pool_used"]
    if used + length > len(_POOL):
        raise MemoryError("the BLE shim's value pool is exhausted")
    char["buf"] = memoryview(_POOL)[used : used + length]
    char["cap"] = length
    char["len"] = 0
    char["append"] = append
    _state["pool_used"] = used + length
