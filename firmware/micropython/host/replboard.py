# TEST-ONLY: one power-on of a simulated ESP32 that ends at MicroPython's REPL on its UART, as
# mpremote expects it (run by navign_firmware.devsim.repl for each boot; never copied to a device).
#
# Boot as host/poweron.py does (bootloader, littlefs from the `vfs` partition at "/", heap ballast
# so the app gets exactly APP_HEAP bytes), print what an ESP32 prints, run /boot.py, then /main.py
# (at a power-on, and at a soft reset into the friendly REPL: a soft reset in raw mode skips it),
# then the REPLs of MicroPython's pyexec.c on stdin/stdout, with "\n" sent as "\r\n" like a board:
# - friendly: echo, ">>> ", "... " continuation, expression results, Ctrl-A raw, Ctrl-B banner,
#   Ctrl-C clears the line, Ctrl-D soft reset, Ctrl-E paste mode;
# - raw: Ctrl-D executes ("OK", stdout, \x04, traceback, \x04, ">"), Ctrl-B friendly;
# - raw paste (\x05A\x01): "R\x01", window 128 (u16 LE) and \x01, one \x01 per 128 bytes read,
#   the closing \x04 echoed, then stdout, \x04, traceback, \x04.
# boot.py, main.py and the REPL share one globals dict (the board's __main__).
#
# Usage: micropython replboard.py APP_HEAP. Environment, besides poweron.py's:
#   NAVIGN_SIM_REPL_BOOT  "hard" (the bootloader runs) or "soft" (a soft reset: it does not)
#   NAVIGN_SIM_REPL_MODE  "friendly" or "raw": the REPL to come back to (after a soft reset)
#   NAVIGN_SIM_RUNNING    at a soft reset, the app partition the last hard boot chose
#   NAVIGN_SIM_REPL_ROMLOG "0": no ROM reset lines at a power-on (the harness prints its own)
#   NAVIGN_SIM_REPL_FD    the side channel: one short line per change, "b" running boot.py,
#       "m" main.py, "x" user code, "i" waiting for input; "R"/"F" raw/friendly REPL;
#       "P<label>" the app partition; "H<bytes>" the heap left to the app
# stdin must be non-blocking (the harness opens it so). Exits: 3 machine.reset(), SOFT_FRIENDLY /
# SOFT_RAW a soft reset (the harness starts the next process in that mode), 0 stdin closed,
# 70 no bootable app. Ctrl-C while code runs is SIGINT from the harness (KeyboardInterrupt).

import builtins
import io
import os
import select
import sys

import _sim

_sim.open_channel()
_side_fd = os.getenv("NAVIGN_SIM_REPL_FD")
_side = open("/proc/self/fd/" + _side_fd, "wb") if _side_fd else None  # before "/" is littlefs

import _simtime
import esp32
import machine  # noqa: F401 - imported before the app: the shim must be loaded from the host
import network  # noqa: F401 - loaded before the app: the shims come from the host
import vfs
from micropython import const

sys.modules["time"] = _simtime  # sleeping lets BLE IRQs in (host/_simtime.py)

RESET_EXIT = const(3)
SOFT_FRIENDLY = const(80)
SOFT_RAW = const(81)
BRICK_EXIT = const(70)
_OPEN_MAX = const(32)
_WINDOW = const(128)  # raw paste: half of MICROPY_REPL_STDIN_BUFFER_MAX (256) on the ESP32
_ROM_CAUSE = {
    "pwron": b"rst:0x1 (POWERON_RESET)",
    "hard": b"rst:0x1 (POWERON_RESET)",
    "soft": b"rst:0xc (SW_CPU_RESET)",
    "wdt": b"rst:0x7 (TG0WDT_SYS_RESET)",
}
_BOARDS = {
    "esp32": "Generic ESP32 module with ESP32",
    "esp32c3": "ESP32C3 module with ESP32C3",
    "esp32s3": "Generic ESP32S3 module with ESP32S3",
}
_MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec"
_KEYWORDS = ("if", "while", "for", "try", "with", "def", "class", "async")

_out = sys.stdout.buffer.write
_stdin = sys.stdin.buffer
# Frames of this file and of the shims: C code on a board, so not in its tracebacks.
_here = '  File "' + __file__.rsplit("/", 1)[0] + "/"


def _side_write(msg):  # also the board's state: b"b", b"m", b"x", b"i"
    if _side is not None:
        _side.write(msg + b"\n")


_state = _side_write


# --- output: what print() and tracebacks send, "\n" as "\r\n" (mp_hal_stdout_tx_strn_cooked) --
class _Console(io.IOBase):
    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        _out(bytes(data).replace(b"\n", b"\r\n"))
        return len(data)


_CONSOLE = _Console()
_print = builtins.print


def _cooked_print(*args, sep=" ", end="\n", file=None, flush=False):
    _print(*args, sep=sep, end=end, file=_CONSOLE if file is None else file)


def _repl_print(value):
    if value is not None:
        _cooked_print(repr(value))
        builtins._ = value


builtins.print = _cooked_print
builtins.__repl_print__ = _repl_print

# The files the board's code opened lately, closed at a soft reset (see _soft_reset).
_opened = []
_open = builtins.open


def _tracked_open(*args, **kwargs):
    f = _open(*args, **kwargs)
    if len(_opened) >= _OPEN_MAX:
        del _opened[0]
    _opened.append(f)
    return f


def _print_exc(exc):
    # The traceback as the board prints it: without the host's frames.
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    for line in buf.getvalue().split("\n"):
        if line and not line.startswith(_here):
            _CONSOLE.write(line + "\n")


# --- input: raw bytes from the (non-blocking) stdin ---------------------------------------------
_IN = bytearray(1024)
_in = [0, 0]  # read position, end
_poll = select.poll()
_poll.register(0, select.POLLIN)


def _fill():
    while True:
        n = _stdin.readinto(_IN)
        if n is None:  # nothing yet
            try:
                _poll.poll(-1)
            except KeyboardInterrupt:  # a Ctrl-C that raced the end of user code: it is a byte
                _IN[0] = 3
                _in[0], _in[1] = 0, 1
                return
            continue
        if n == 0:  # the host closed the line: the board is switched off
            sys.exit(0)
        _in[0], _in[1] = 0, n
        return


def _getc():
    if _in[0] >= _in[1]:
        _fill()
    c = _IN[_in[0]]
    _in[0] += 1
    return c


# --- running code ---------------------------------------------------------------------------------
_G = {"__name__": "__main__"}
_mode = ["friendly"]


def _soft_reset():
    # A board's soft reset finalises every object (gc_sweep_all), which closes the files the user
    # never closed and so commits them to littlefs. Finalisers here run with the heap locked,
    # where the Python flash shim cannot work, hence the explicit close.
    while _opened:
        try:
            _opened.pop().close()
        except Exception:  # closed already
            pass
    _out(b"MPY: soft reboot\r\n")
    sys.exit(SOFT_RAW if _mode[0] == "raw" else SOFT_FRIENDLY)


def _execute(source, kind, filename, eof, idle=True):
    # parse_compile_execute: returns after printing; a SystemExit soft-resets the board, except
    # the machine shim's reset() (SystemExit(3)), which ends the process.
    err = None
    try:
        exec(compile(bytes(source), filename, kind), _G)
    except SystemExit as exc:
        if exc.args and exc.args[0] == RESET_EXIT:
            sys.exit(RESET_EXIT)
        err = exc
    except BaseException as exc:
        err = exc
    if idle:
        _state(b"i")
    if eof:
        _out(b"\x04")
    if isinstance(err, SystemExit):
        if eof:
            _out(b"\x04")
        _soft_reset()
    if err is not None:
        _print_exc(err)
    if eof:
        _out(b"\x04")


def _run_file(path, state):
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError:
        return
    try:
        _state(state)
        # Still busy afterwards: the next state is main.py's or the REPL's (a Ctrl-C that came
        # during boot.py waits for main.py, so that the loader is never cut short).
        _execute(source, "exec", path.lstrip("/"), False, False)
    except KeyboardInterrupt as exc:  # a Ctrl-C just before or after the file's own code
        _print_exc(exc)


# --- the raw REPL ---------------------------------------------------------------------------------
def _raw_paste():
    _side_write(b"A")
    _out(b"R\x01")
    _out(bytes((_WINDOW & 0xFF, _WINDOW >> 8, 1)))
    remain = _WINDOW
    src = bytearray()
    while True:
        if _in[0] >= _in[1]:
            _fill()
        pos, end = _in
        stop = _IN.find(b"\x04", pos, end)
        intr = _IN.find(b"\x03", pos, end)
        if intr >= 0 and (stop < 0 or intr < stop):
            stop = intr
        upto = end if stop < 0 else stop
        src.extend(memoryview(_IN)[pos:upto])
        remain -= upto - pos
        while remain <= 0:
            _out(b"\x01")  # another window is free
            remain += _WINDOW
        if stop < 0:
            _in[0] = end
            continue
        _in[0] = stop + 1
        _out(b"\x04")  # end of data acknowledged
        if _IN[stop] == 3:
            _out(b"\x04")
            _print_exc(KeyboardInterrupt())
            _out(b"\x04")
            return
        _state(b"x")
        _execute(src, "exec", "<stdin>", True)
        return


def _raw():
    _side_write(b"R")
    line = bytearray()
    while True:
        _out(b"raw REPL; CTRL-B to exit\r\n")
        reset = False
        while not reset:
            line[:] = b""
            _out(b">")
            while True:
                c = _getc()
                if c == 1:  # Ctrl-A
                    if len(line) == 2 and line[0] == 5:
                        if line[1] == 0x41:
                            _raw_paste()
                        else:
                            _out(b"R\x00")
                        line[:] = b""
                        _out(b">")
                        continue
                    reset = True
                    break
                if c == 2:  # Ctrl-B
                    _out(b"\r\n")
                    return "friendly"
                if c == 3:
                    line[:] = b""
                elif c == 4:
                    break
                else:
                    line.append(c)
            if reset:
                break
            _out(b"OK")
            if not line:
                _out(b"\r\n")
                _soft_reset()
            _state(b"x")
            _execute(line, "exec", "<stdin>", True)


# --- the friendly REPL ----------------------------------------------------------------------------
def _banner():
    _out(_BANNER)


def _readline(prompt, line):
    # readline.c, without history, cursor keys or auto-indent. Returns 0 (a line), or the control
    # character that ended it.
    _out(prompt)
    start = len(line)
    esc = 0
    while True:
        c = _getc()
        if esc:
            if esc == 1:
                esc = 2 if c in (0x5B, 0x4F) else 0
            elif 0x40 <= c <= 0x7E:
                esc = 0
            continue
        if 1 <= c <= 5 and len(line) == start:
            return c
        if c == 3:
            return c
        if c == 0x0D:
            _out(b"\r\n")
            return 0
        if c == 0x1B:
            esc = 1
        elif c in (8, 127):
            if len(line) > start:
                line[:] = line[:-1]
                _out(b"\x08 \x08")
        elif c >= 32 and c != 127:
            line.append(c)
            _out(bytes((c,)))


def _continue_with_input(text):
    # py/repl.c: mp_repl_continue_with_input.
    if not text:
        return False
    first = text.split(" ", 1)[0].split(":", 1)[0].split("(", 1)[0]
    compound = text[0] == "@" or first in _KEYWORDS
    depth = 0
    quote = None
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    if quote in ("'''", '"""'):
        return True
    if depth > 0 and quote is None:
        return True
    if text[-1] == "\\":
        return True
    return compound and text[-1] != "\n"


def _paste_mode():
    _out(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
    src = bytearray()
    while True:
        c = _getc()
        if c == 3:
            _out(b"\r\n")
            return None
        if c == 4:
            _out(b"\r\n")
            return src
        src.append(c)
        _out(b"\r\n=== " if c == 0x0D else bytes((c,)))


def _friendly():
    _side_write(b"F")
    _banner()
    line = bytearray()
    while True:
        line[:] = b""
        ret = _readline(b">>> ", line)
        kind = "single"
        if ret == 1:
            _out(b"\r\n")
            return "raw"
        if ret == 2:
            _out(b"\r\n")
            _banner()
            continue
        if ret == 3:
            _out(b"\r\n")
            continue
        if ret == 4:
            _out(b"\r\n")
            _soft_reset()
        if ret == 5:
            src = _paste_mode()
            if src is None:
                continue
            line, kind = src, "exec"
        elif not line:
            continue
        else:
            cancelled = False
            while _continue_with_input(line.decode()):
                line.append(0x0A)
                ret = _readline(b"... ", line)
                if ret == 3:
                    _out(b"\r\n")
                    cancelled = True
                    break
                if ret == 4:
                    break
            if cancelled:
                continue
        _state(b"x")
        _execute(bytes(line), kind, "<stdin>", False)
        line = bytearray()


# --- power-on -------------------------------------------------------------------------------------
_hard = (os.getenv("NAVIGN_SIM_REPL_BOOT") or "hard") == "hard"
_mode[0] = "raw" if os.getenv("NAVIGN_SIM_REPL_MODE") == "raw" else "friendly"
_chip = os.getenv("NAVIGN_SIM_CHIP") or "esp32"
if _hard:
    if os.getenv("NAVIGN_SIM_REPL_ROMLOG") != "0":
        _cause = _ROM_CAUSE.get(os.getenv("NAVIGN_SIM_RESET_CAUSE") or "", _ROM_CAUSE["pwron"])
        _out(b"ets Jul 29 2019 12:21:46\r\n\r\n" + _cause + b",boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")
    _label = esp32.bootloader_select()
    if _label is None:
        _out(b"E (0) boot: No bootable app partitions in the partition table\r\n")
        _sim.emit("brick")
        sys.exit(BRICK_EXIT)
else:
    _label = os.getenv("NAVIGN_SIM_RUNNING") or "ota_0"
    esp32._running = _label
_side_write(b"P" + _label.encode())

_desc = bytearray(160)
esp32.Partition(_label).readblocks(0, _desc)
_version = bytes(_desc[48:80]).split(b"\x00")[0].decode()
_date = bytes(_desc[128:144]).split(b"\x00")[0].decode().split()
if len(_date) == 3 and _date[0] in _MONTHS:
    _date = "%s-%02d-%02d" % (_date[2], _MONTHS.index(_date[0]) // 3 + 1, int(_date[1]))
else:
    _date = "2026-01-01"
_BANNER = (
    'MicroPython v%s on %s; %s\r\nType "help()" for more information.\r\n'
    % (_version, _date, _BOARDS.get(_chip, _BOARDS["esp32"]))
).encode()
_sim.emit("boot", partition=_label, version=_version, state=esp32.ota_state()[1])

_bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
vfs.umount("/")
try:
    vfs.mount(vfs.VfsLfs2(_bdev), "/")
except OSError:
    _sim.emit("fs_format")
    vfs.VfsLfs2.mkfs(_bdev)
    vfs.mount(vfs.VfsLfs2(_bdev), "/")
    with open("/boot.py", "w") as f:
        f.write("# This file is executed on every boot (including wake-boot from deepsleep)\n")
sys.path[:] = ["", ".frozen", "/lib"]
del _desc, _version, _date, _bdev, _side_fd

# The ballast of host/poweron.py: the firmware (and the REPL's user) gets exactly APP_HEAP bytes.
import gc

gc.collect()
_want = int(sys.argv[1]) if len(sys.argv) > 1 else 96 * 1024
_extra = gc.mem_free() - _want
_ballast = bytearray(_extra - 32) if _extra > 64 else None
gc.collect()
_sim.emit("heap", free=gc.mem_free(), shims=gc.mem_alloc() - (len(_ballast) if _ballast else 0))
_side_write(b"H" + str(gc.mem_free()).encode())

builtins.open = _tracked_open  # after the flash shim opened its host file
_run_file("/boot.py", b"b")
if _hard or _mode[0] == "friendly":
    _run_file("/main.py", b"m")
_state(b"i")
while True:
    try:
        while True:
            _mode[0] = _raw() if _mode[0] == "raw" else _friendly()
    except KeyboardInterrupt:  # a Ctrl-C that raced the end of user code: back to the prompt
        _state(b"i")
