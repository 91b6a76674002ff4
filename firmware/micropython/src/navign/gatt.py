# The beacon's GATT server (docs/protocol.md §8.5): Device Information, and the Navign OTA
# service through which a gateway pushes a release to a beacon without WiFi.
#
#   control (write + notify): OFFER, MANIFEST parts, COMMIT, ABORT, STATUS from the gateway;
#       SEND_MANIFEST, ACCEPT/REJECT, ACK/NACK, DONE, STATUS notifications from the beacon.
#   data (write without response): DATA frames, accumulated in an append buffer.
#   info (read): the beacon's report as JSON (the same fields as the WiFi report, §8.2).
#
# This module stays loaded: it registers the services, answers STATUS (the health check-in over
# BLE) and keeps the info current. The transfer itself (navign.bleota) is loaded by an OFFER and
# unloaded when the transfer ends, so an idle beacon's heap does not carry it. IRQ handlers only
# copy what arrived; the main loop calls `process()`, which does the flash writes.
import json

import bluetooth
from micropython import const

from navign import ota
from navign.errors import NavignError, Refused

SERVICE = "221c9a15-8a12-4b95-a639-f74aa402c53d"
CONTROL = "221c9a16-8a12-4b95-a639-f74aa402c53d"
DATA = "221c9a17-8a12-4b95-a639-f74aa402c53d"
INFO = "221c9a18-8a12-4b95-a639-f74aa402c53d"

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

_F_READ = const(0x0002)
_F_WRITE_NR = const(0x0004)
_F_WRITE = const(0x0008)
_F_NOTIFY = const(0x0010)

OFFER = const(0x01)
MANIFEST = const(0x02)
STATUS = const(0x05)
REJECT = const(0x83)
STATUS_REPLY = const(0x88)

MTU = const(247)
DATA_BUFFER = const(4096)  # the data characteristic's append buffer

#: REJECT reason codes (docs/protocol.md §8.5); anything else is 255 "other".
REASONS = {
    "same_version": 1,
    "downgrade": 2,
    "invalid_signature": 3,
    "wrong_target": 4,
    "busy": 5,
    "low_memory": 6,
    "invalid_format": 7,
    "secure_version": 8,
    "min_previous_version": 9,
    "expired": 10,
    "no_keys": 11,
    "too_large": 12,
    "artifact_mismatch": 13,
    "manifest_mismatch": 14,
    "protocol": 15,
}


class Gatt:
    def __init__(self, ble, cfg, status):
        self.ble = ble
        self.cfg = cfg
        self.status = status
        self.conn = None
        self.mtu = 23
        self.control_q = []
        self.data_pending = False
        self.overflow = False
        self.checked_in = False  # a gateway asked for our STATUS this boot (the health check-in)
        self.reset_due = False
        self.transfer = None  # a navign.bleota.Transfer while a release comes in
        self.verified = None  # (manifest, manifest_sha256) verified this boot, for a reconnect
        # The ATT MTU this side offers: 247 fills a BLE 4.2+ data-length-extended packet (251
        # bytes) with one write, the largest chunks a Pi's BlueZ negotiates reliably.
        ble.config(mtu=MTU)
        dis = (
            bluetooth.UUID(0x180A),
            (
                (bluetooth.UUID(0x2A24), _F_READ),  # model number: the chip
                (bluetooth.UUID(0x2A26), _F_READ),  # firmware revision: the image
                (bluetooth.UUID(0x2A28), _F_READ),  # software revision: the app
            ),
        )
        navign = (
            bluetooth.UUID(SERVICE),
            (
                (bluetooth.UUID(CONTROL), _F_WRITE | _F_NOTIFY),
                (bluetooth.UUID(DATA), _F_WRITE_NR),
                (bluetooth.UUID(INFO), _F_READ),
            ),
        )
        ((self.h_model, self.h_fw, self.h_app), (self.h_control, self.h_data, self.h_info)) = (
            ble.gatts_register_services((dis, navign))
        )
        ble.gatts_set_buffer(self.h_control, 512)
        ble.gatts_set_buffer(self.h_data, DATA_BUFFER, True)
        ble.gatts_set_buffer(self.h_info, 512)
        for handle in (self.h_model, self.h_fw, self.h_app):
            ble.gatts_set_buffer(handle, 64)
        self.refresh_info()
        ble.irq(self._irq)

    def refresh_info(self):
        versions = ota.installed()
        self.ble.gatts_write(self.h_model, self.cfg.chip.encode())
        self.ble.gatts_write(self.h_fw, versions["firmware"].encode())
        self.ble.gatts_write(self.h_app, versions["app"].encode())
        self.ble.gatts_write(self.h_info, json.dumps(self.status.report()).encode())

    # --- radio callbacks: copy and return ------------------------------------------------
    def _irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            self.conn = data[0]
        elif event == _IRQ_CENTRAL_DISCONNECT:
            self.conn = None
            self.mtu = 23
        elif event == _IRQ_MTU_EXCHANGED:
            self.mtu = data[1]
        elif event == _IRQ_GATTS_WRITE:
            if data[1] == self.h_control:
                msg = self.ble.gatts_read(self.h_control)
                # MANIFEST parts come back to back, faster than the main loop runs: the
                # transfer copies them here (a copy, no flash).
                transfer = self.transfer
                if (
                    msg
                    and msg[0] == MANIFEST
                    and transfer is not None
                    and not self.control_q
                    and transfer.take_part(msg)
                ):
                    return
                if len(self.control_q) < 8:
                    self.control_q.append(msg)
                else:
                    self.overflow = True
            elif data[1] == self.h_data:
                self.data_pending = True

    def notify(self, payload):
        if self.conn is not None:
            try:
                self.ble.gatts_notify(self.conn, self.h_control, payload)
            except OSError:
                pass

    def reject(self, reason, detail=""):
        code = REASONS.get(reason, 255)
        self.notify(bytes((REJECT, code)) + (reason + ":" + detail)[:60].encode())

    # --- the main loop's part -----------------------------------------------------------
    def busy(self):
        return self.transfer is not None

    def end_transfer(self):
        # Forget the transfer and unload its code.
        if self.transfer is not None:
            self.transfer.close()
        self.transfer = None
        ota.unload(("bleota", "appupdate", "imageupdate", "artifact"))

    def fail(self, exc):
        self.reject(exc.reason, exc.detail)
        transfer = self.transfer
        if isinstance(exc, Refused) and exc.reason != "busy":
            ota.set_result(
                {
                    "kind": transfer.kind() if transfer else None,
                    "manifest_sha256": transfer.sha() if transfer else None,
                    "outcome": "refused",
                    "reason": exc.reason,
                    "detail": exc.detail,
                }
            )
            self.verified = None
            self.end_transfer()
            self.status.set_ota("failed")
            self.refresh_info()

    def process(self):
        # Handle what the radio delivered. Returns True while a transfer is in progress (the
        # main loop then ticks faster).
        if self.overflow:
            self.overflow = False
            self.control_q = []
            self.fail(Refused("protocol", "control messages overflowed"))
        try:
            if self.transfer is not None:
                self.transfer.poll()
            while self.control_q:
                self._control(self.control_q.pop(0))
            if self.data_pending:
                self.data_pending = False
                data = self.ble.gatts_read(self.h_data)
                if self.transfer is not None:
                    self.transfer.data(data)
        except NavignError as exc:
            self.fail(exc)
        except MemoryError:
            # A heap too fragmented for the transfer: say so, then restart with a clean heap;
            # the gateway reconnects and the transfer resumes from what the flash holds.
            self.fail(Refused("low_memory", "free %d" % _free()))
            self.reset_due = True
        return self.busy()

    def _control(self, msg):
        if not msg:
            raise Refused("protocol", "empty")
        op = msg[0]
        if op == STATUS:
            self.checked_in = True
            self.refresh_info()
            self.notify(bytes((STATUS_REPLY, 1 if self.status.trial else 0)))
            return
        if op == OFFER and self.transfer is None:
            if ota.on_trial():
                raise Refused("busy", "an update is on trial")
            from navign.bleota import Transfer

            self.transfer = Transfer(self)
        if self.transfer is None:
            raise Refused("protocol", "opcode %d without an OFFER" % op)
        self.transfer.control(msg)


def _free():
    import gc

    gc.collect()
    return gc.mem_free()
