# Starts the app that boot.py put on sys.path. Whatever happens, the board ends in a reset (never
# at the REPL): an app that fails on trial is counted by boot.py and rolled back.
import sys
import time

import machine

try:
    import navign.app

    navign.app.main()
except Exception as exc:
    sys.print_exception(exc)
    time.sleep_ms(1000)
machine.reset()
