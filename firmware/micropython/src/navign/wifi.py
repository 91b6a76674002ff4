# The beacon's WiFi side (docs/protocol.md §8.2): join the network, find the gateway (the
# configured hint, else mDNS), report to it (the report is also the health check-in), and install
# the release it assigns: manifest first, verified, then the artifact streamed with HTTP Range
# resume in chunks of at most 4 KiB, hashed as it arrives; the image is never held in RAM.
import json
import time

import network

from navign import http, ota
from navign.errors import NavignError, Refused

# Reads of 1 KiB: allocated after the verifier ran, when the heap is fragmented, a 1 KiB block is
# always there; a 4 KiB one may not be (the power-cut test found it).
CHUNK = 1024
REPORT_LIMIT = 4096
SERVICE = "_navign-fw._tcp.local"


class WiFi:
    def __init__(self, cfg, status, wdt=None):
        self.cfg = cfg
        self.status = status  # navign.app.Status: ota state and counters for reports
        self.wdt = wdt
        self.wlan = None
        self.gateway = None  # (host, port)
        self.buf = None  # CHUNK bytes, only while installing

    def _feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def connect(self, timeout_ms=15000):
        # True once associated; False when no WiFi is configured or it does not come up in time.
        if self.cfg.wifi is None:
            return False
        if self.wlan is None:
            self.wlan = network.WLAN(network.STA_IF)
            self.wlan.active(True)
        if self.wlan.isconnected():
            return True
        self.wlan.connect(self.cfg.wifi["ssid"], self.cfg.wifi.get("password", ""))
        start = time.ticks_ms()
        while not self.wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
                return False
            self._feed()
            time.sleep_ms(100)
        return True

    def find_gateway(self):
        if self.cfg.gateway is not None:
            self.gateway = (self.cfg.gateway["host"], self.cfg.gateway.get("port", 8080))
            return self.gateway
        try:
            from navign import mdns
        except ImportError:
            return None
        found = mdns.discover(SERVICE, feed=self._feed)
        mdns = None
        ota.unload(("mdns",))  # needed again only if the gateway moves
        if found:
            self.gateway = found
        return self.gateway

    def report(self):
        # POST the beacon's state; returns the gateway's answer (a dict). Raises NavignError.
        host, port = self.gateway
        body = json.dumps(self.status.report()).encode()
        resp = http.request(
            host,
            port,
            "POST",
            "/beacons/" + self.cfg.beacon_id + "/report",
            {"Content-Type": "application/json"},
            body,
        )
        try:
            if resp.status != 200:
                raise NavignError("gateway", "report: HTTP %d" % resp.status)
            answer = json.loads(bytes(resp.read_all(REPORT_LIMIT)))
        except ValueError:
            raise NavignError("gateway", "report: not JSON")
        finally:
            resp.close()
        if not isinstance(answer, dict):
            raise NavignError("gateway", "report: not an object")
        ack = answer.get("ack")
        if ack:
            ota.clear_result(ack)
        return answer

    def _get(self, path, headers=None):
        host, port = self.gateway
        return http.request(host, port, "GET", path, headers)

    def install(self, firmware_id, expected_sha256=None):
        # Fetch, verify and install a release; on success the caller resets the board.
        # Raises Refused (the release is not for this beacon) or NavignError (try again later).
        if not isinstance(firmware_id, str) or not 0 < len(firmware_id) <= 64 or "/" in firmware_id:
            raise Refused("malformed", "firmware id")
        resp = self._get("/firmware/" + firmware_id + "/manifest")
        try:
            if resp.status != 200:
                raise NavignError("gateway", "manifest: HTTP %d" % resp.status)
            envelope = resp.read_all(ota.ENVELOPE_LIMIT)
        finally:
            resp.close()
        manifest, manifest_sha256 = ota.open_release(envelope, self.cfg)
        del envelope
        if expected_sha256 and expected_sha256 != manifest_sha256:
            raise Refused("manifest_mismatch", "not the release the gateway assigned")
        self.status.set_ota("receiving")
        self.buf = bytearray(CHUNK)
        sink = ota.sink_for(manifest, manifest_sha256, self.cfg, self.buf)
        try:
            self._download(firmware_id, sink)
            self.status.set_ota("verifying")
            ota.finish(sink)
        finally:
            sink.abort()
            self.buf = None
        return manifest

    def _download(self, firmware_id, sink, attempts=5):
        for _ in range(attempts):
            offset = sink.resume_offset()
            if offset >= sink.total:
                return
            headers = {"Range": "bytes=%d-" % offset} if offset else None
            try:
                resp = self._get("/firmware/" + firmware_id, headers)
            except NavignError:
                time.sleep_ms(500)
                continue
            try:
                skip = 0
                if resp.status == 206:
                    first = resp.headers.get("content-range", "")
                    if not first.startswith("bytes %d-" % offset):
                        raise NavignError("gateway", "Content-Range does not start at the offset")
                elif resp.status == 200:
                    skip = offset  # the gateway ignored Range: skip what we have
                else:
                    raise NavignError("gateway", "artifact: HTTP %d" % resp.status)
                while True:
                    n = resp.readinto(self.buf)
                    if not n:
                        break
                    view = memoryview(self.buf)[:n]
                    if skip:
                        cut = min(skip, n)
                        skip -= cut
                        view = view[cut:]
                    if len(view):
                        sink.write(view)
                    self._feed()
                if sink.resume_offset() >= sink.total:
                    return
            except http.HTTPError:
                pass  # cut mid-body: resume from what was written
            finally:
                resp.close()
        raise NavignError("gateway", "artifact: gave up after %d attempts" % attempts)
