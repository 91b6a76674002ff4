"""Host-side tooling of the Navign beacon firmware (``firmware/micropython``).

What runs on a beacon is ``src/`` (MicroPython). This package runs on the host: it compiles the app
to ``.mpy`` (:mod:`navign_firmware.build`), and runs the real firmware on the MicroPython unix port
(:mod:`navign_firmware.unix`) with the test-only shims of ``host/``.
"""
