# TEST-ONLY: `time` for the firmware on the simulated board (host/poweron.py installs it as
# sys.modules["time"]). Everything is the unix port's own `time`, except that sleeping lets the
# BLE link deliver its IRQs, as the radio does on a board while the app waits.
import time as _time

import bluetooth

ticks_ms = _time.ticks_ms
ticks_us = _time.ticks_us
ticks_cpu = _time.ticks_cpu
ticks_add = _time.ticks_add
ticks_diff = _time.ticks_diff
time = _time.time
time_ns = _time.time_ns
gmtime = _time.gmtime
localtime = _time.localtime
mktime = _time.mktime


def sleep_ms(ms):
    deadline = _time.ticks_add(_time.ticks_ms(), int(ms))
    while True:
        left = _time.ticks_diff(deadline, _time.ticks_ms())
        if left <= 0:
            return
        if not bluetooth.listening():
            _time.sleep_ms(left)
            return
        bluetooth.poll(left)


def sleep_us(us):
    sleep_ms(us // 1000) if us >= 1000 else _time.sleep_us(us)


def sleep(seconds):
    sleep_ms(int(seconds * 1000))
