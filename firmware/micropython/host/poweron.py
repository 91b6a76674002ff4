# TEST-ONLY: one power-on of a simulated ESP32 (run by navign_firmware.sim for each boot).
# Does what the ROM, the ESP-IDF bootloader and MicroPython's _boot.py do on a board: pick the app
# partition (with rollback), mount littlefs from the `vfs` partition at "/" (formatting it, as
# MicroPython's inisetup does, when it cannot be mounted), then run /boot.py and /main.py.
# After main.py ends, a board sits at the REPL, feeding no watchdog: so does this one.

import sys
import time

import _sim

_sim.open_channel()

import _simtime
import esp32
import machine  # noqa: F401 - imported before the app: the shim must be loaded from the host
import network  # noqa: F401 - loaded before the app: the shims come from the host
import vfs

sys.modules["time"] = _simtime  # sleeping lets BLE IRQs in (host/_simtime.py)

BRICK_EXIT = 70

label = esp32.bootloader_select()
if label is None:
    _sim.emit("brick")
    sys.exit(BRICK_EXIT)

part = esp32.Partition(label)
desc = bytearray(80)
part.readblocks(0, desc)
version = bytes(desc[48:80]).split(b"\x00")[0].decode()
_sim.emit("boot", partition=label, version=version, state=esp32.ota_state()[1])

bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
vfs.umount("/")
try:
    vfs.mount(vfs.VfsLfs2(bdev), "/")
except OSError:
    _sim.emit("fs_format")
    vfs.VfsLfs2.mkfs(bdev)
    vfs.mount(vfs.VfsLfs2(bdev), "/")
    with open("/boot.py", "w") as f:
        f.write("# This file is executed on every boot (including wake-boot from deepsleep)\n")

sys.path[:] = ["", ".frozen", "/lib"]
del label, part, desc, version, bdev

# On a board the modules above are C in flash; here they are Python on the heap. The harness
# gives the process more heap than the board has, and this ballast takes back the difference, so
# that the firmware gets exactly NAVIGN_SIM_APP_HEAP bytes (96 KiB by default) for itself.
import gc

gc.collect()
_want = int(sys.argv[1]) if len(sys.argv) > 1 else 96 * 1024
_extra = gc.mem_free() - _want
_ballast = bytearray(_extra - 32) if _extra > 64 else None
gc.collect()
_sim.emit("heap", free=gc.mem_free(), shims=gc.mem_alloc() - (len(_ballast) if _ballast else 0))


def _run(path):
    try:
        with open(path) as f:
            source = f.read()
    except OSError:
        return
    try:
        exec(source, {"__name__": "__main__"})
    except SystemExit:
        raise
    except BaseException as exc:  # what MicroPython prints before the REPL
        sys.print_exception(exc)
        _sim.emit("exception", where=path, error=repr(exc))


_run("/boot.py")
_run("/main.py")
_sim.emit("repl")
while True:  # the REPL: nothing runs, nothing feeds the watchdog
    time.sleep(1)
