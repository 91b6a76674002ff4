"""Simulated devices on a serial line, for the bench tools' tests and benchmarks (test support:
never shipped to a device).

* :mod:`.serialpty`: the device end of a pseudo-terminal, which esptool and mpremote open as a
  serial port (pyserial also takes ``socket://``, but a pty is several times faster);
* :mod:`.romloader`: the ESP32 ROM serial loader (and esptool's stub) that esptool speaks, with
  its wire format (:mod:`.loaderwire`), chips (:mod:`.esp32chips`), flash (:mod:`.norflash`),
  faults (:mod:`.loaderfaults`) and standalone runner (:mod:`.romloader_main`);
* :mod:`.repl`: a MicroPython board's REPL (friendly, raw, raw paste) as mpremote speaks it,
  backed by the real MicroPython unix port and the board's littlefs;
* :mod:`.board`: one whole board on one pty (the loader after a reset into download mode, then
  MicroPython from the flash esptool wrote).
"""
