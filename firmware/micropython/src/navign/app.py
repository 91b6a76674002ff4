# The beacon app: advertise, keep the watchdog fed, check in with the gateway, confirm an update
# on trial once healthy, install what the gateway assigns.
#
# Order at boot matters: advertising starts first (a beacon's job is to be seen, whatever else
# fails), then the watchdog, then what happened to the last update is worked out (trial or
# rollback), then the network. An update on trial is committed only when advertising is up AND
# the gateway answered a check-in within `health_timeout_s`; otherwise the board resets, and
# boot.py (app) or the bootloader (image) goes back to the previous version.
import gc
import time

import bluetooth
import machine

import navign
from navign import adv, ota
from navign.errors import NavignError, Refused

WDT_MS = 10000
RETRY_MIN_MS = 2000
RETRY_MAX_MS = 60000
TICK_MS = 100
BUSY_TICK_MS = 5  # while a BLE transfer runs

_OTA_CODES = {
    "idle": adv.IDLE,
    "receiving": adv.RECEIVING,
    "verifying": adv.VERIFYING,
    "installing": adv.INSTALLING,
    "trial": adv.TRIAL,
    "failed": adv.FAILED,
}


class Settings:
    # The loaded configuration as plain attributes, so that navign.config (its validators are
    # a tenth of the heap) can be unloaded once it has run.
    pass


def load_config():
    from navign import config

    cfg = config.load("/config.json", machine.unique_id())
    settings = Settings()
    for name in dir(cfg):
        if not name.startswith("_"):
            setattr(settings, name, getattr(cfg, name))
    config = cfg = None
    ota.unload(("config",))
    return settings


class Status:
    # What the beacon tells the gateway (reports) and the phones around it (advertising).
    def __init__(self, cfg, advertiser=None):
        self.cfg = cfg
        self.ota_state = "idle"
        self.trial = None
        self.advertiser = advertiser
        self.started = time.ticks_ms()

    def set_ota(self, state):
        if state != self.ota_state:
            self.ota_state = state
            if self.advertiser is not None:
                self.advertiser.refresh()

    def report(self):
        gc.collect()
        versions = ota.installed()
        return {
            "beacon_id": self.cfg.beacon_id,
            "chip": self.cfg.chip,
            "app_version": versions["app"],
            "firmware_version": versions["firmware"],
            "secure_version": ota.secure_floor(self.cfg),
            "ota_state": self.ota_state,
            "trial": self.trial,
            "result": ota.result(),
            "uptime_s": time.ticks_diff(time.ticks_ms(), self.started) // 1000,
            "free_heap": gc.mem_free(),
            "config_errors": [e[0] for e in self.cfg.errors],
        }


class Advertiser:
    def __init__(self, cfg, status):
        self.cfg = cfg
        self.status = status
        self.ble = bluetooth.BLE()
        self.up = False

    def start(self):
        try:
            self.ble.active(True)
            self.refresh()
        except Exception as exc:
            self.up = False
            print("advertising failed:", exc)

    def refresh(self):
        versions = ota.installed()
        flags = adv.FLAG_TRIAL if self.status.trial else 0
        adv_data, resp = adv.payloads(
            self.cfg,
            versions["firmware"],
            versions["app"],
            _OTA_CODES.get(self.status.ota_state, adv.IDLE),
            flags,
        )
        self.ble.gap_advertise(self.cfg.adv_interval_ms * 1000, adv_data, resp)
        self.up = True


def _fail(status, kind, manifest_sha256, exc):
    ota.set_result(
        {
            "kind": kind,
            "manifest_sha256": manifest_sha256,
            "outcome": "refused" if isinstance(exc, Refused) else "failed",
            "reason": exc.reason,
            "detail": exc.detail,
        }
    )
    status.set_ota("failed")


def reset_soon(ms=200):
    time.sleep_ms(ms)
    machine.reset()


def _commit(status, advertiser, trial, info):
    # The health check passed (advertising, and a check-in over WiFi or BLE): keep the update.
    ota.commit(trial, info)
    print("update committed:", trial, info.get("version"))
    status.trial = None
    status.set_ota("idle")
    advertiser.refresh()
    return None


def main():
    cfg = load_config()
    status = Status(cfg)
    advertiser = Advertiser(cfg, status)
    status.advertiser = advertiser
    trial, trial_info = None, None
    try:
        trial, trial_info = ota.reconcile(cfg)
    except Exception as exc:  # never let bookkeeping stop the beacon
        print("reconcile failed:", exc)
    status.trial = trial
    if trial:
        status.ota_state = "trial"
    advertiser.start()
    wdt = machine.WDT(timeout=WDT_MS)
    print("navign app", navign.APP_VERSION, "trial" if trial else "", cfg.beacon_id)
    gatt = None
    if advertiser.up:
        try:
            from navign.gatt import Gatt

            gatt = Gatt(advertiser.ble, cfg, status)
        except Exception as exc:  # without GATT the beacon still advertises and uses WiFi
            print("GATT failed:", exc)

    wifi = None
    if cfg.wifi is not None:
        from navign.wifi import WiFi

        wifi = WiFi(cfg, status, wdt)
    health_deadline = time.ticks_add(time.ticks_ms(), cfg.health_timeout_s * 1000)
    next_report = time.ticks_ms()
    retry = RETRY_MIN_MS
    refused = {}  # firmware id -> reason, for this boot
    while True:
        wdt.feed()
        busy = False
        if gatt is not None:
            busy = gatt.process()
            if gatt.reset_due:
                print("BLE update installed, or the heap ran out: resetting")
                reset_soon()
            if trial and gatt.checked_in and advertiser.up:
                trial = _commit(status, advertiser, trial, trial_info)
                gatt.refresh_info()
                next_report = time.ticks_ms()
        now = time.ticks_ms()
        if trial and time.ticks_diff(now, health_deadline) >= 0:
            print("health check failed: no check-in with the gateway in time")
            machine.reset()
        if wifi is not None and not busy and time.ticks_diff(now, next_report) >= 0:
            try:
                if not wifi.connect():
                    raise NavignError("wifi", "not connected")
                if wifi.gateway is None and wifi.find_gateway() is None:
                    raise NavignError("gateway", "not found")
                answer = wifi.report()
                retry = RETRY_MIN_MS
                next_report = time.ticks_add(time.ticks_ms(), cfg.report_interval_s * 1000)
                if trial and advertiser.up:
                    trial = _commit(status, advertiser, trial, trial_info)
                    next_report = time.ticks_ms()  # tell the gateway at once
                    continue
                assignment = answer.get("assignment")
                if (
                    assignment
                    and not trial
                    and not (gatt and gatt.busy())
                    and assignment.get("firmware_id") not in refused
                    and not ota.is_installed(assignment.get("manifest_sha256"))
                ):
                    firmware_id = assignment.get("firmware_id")
                    expected = assignment.get("manifest_sha256")
                    try:
                        manifest = wifi.install(firmware_id, expected)
                    except Refused as exc:
                        # Not for this beacon: never again this boot; tell the gateway at once.
                        print("update refused:", exc)
                        refused[firmware_id] = exc.reason
                        _fail(status, None, expected, exc)
                        next_report = time.ticks_ms()
                        continue
                    except NavignError as exc:
                        # The network or the gateway failed: try again later (and resume).
                        print("update failed:", exc)
                        _fail(status, None, expected, exc)
                        next_report = time.ticks_add(time.ticks_ms(), retry)
                        retry = min(retry * 2, RETRY_MAX_MS)
                        continue
                    print("update installed:", manifest["version"], "resetting")
                    reset_soon()
            except NavignError as exc:
                next_report = time.ticks_add(time.ticks_ms(), retry)
                retry = min(retry * 2, RETRY_MAX_MS)
                print("gateway:", exc)
        time.sleep_ms(BUSY_TICK_MS if busy else TICK_MS)
