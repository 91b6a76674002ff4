"""The command line behind ``flash.sh``: ``beacon``, ``sd`` and ``bench``.

Exit codes: 0 done (every board PASS); 1 a failure (one line ``flash.sh: error: ...`` on stderr,
or FAIL lines for boards); 2 a usage error.

Public: :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from navign_firmware.flashing import beacon, bench, provision, record, sd, sdimage, tools

PROG = "flash.sh"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Flash and provision Navign beacons, write gateway SD cards, and self-test "
        "beacons on a lab bench.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    beacon.add_parser(sub)
    sd.add_parser(sub)
    bench.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args, sys.stdout)
    except (
        beacon.BeaconError,
        provision.ProvisionError,
        record.RecordError,
        sdimage.SdError,
        tools.ToolError,
    ) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return code
