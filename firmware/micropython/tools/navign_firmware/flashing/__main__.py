import sys

from navign_firmware.flashing.cli import main

sys.exit(main())
