"""``navign-firmware``: build the beacon app for a chip.

    navign-firmware build --target esp32 [--version 1.2.0] [--out build]

writes ``<out>/<target>/``: ``boot.py``, ``main.py``, ``app/navign/*.mpy`` (compiled with
mpy-cross) and ``files.json`` (every file with its size and SHA-256). Errors are one line on
stderr and exit code 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from navign_firmware import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="navign-firmware", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="compile the app for a target chip")
    build_cmd.add_argument("--target", choices=sorted(t for t in build.TARGETS if t != "unix"),
                           default="esp32")  # fmt: skip
    build_cmd.add_argument("--version", help="the app version to build in (SemVer)")
    build_cmd.add_argument("--out", type=Path, default=Path("build"))
    args = parser.parse_args(argv)
    if args.version is not None:
        from navign_proto.versions import validate_version

        try:
            validate_version(args.version)
        except ValueError as exc:
            print(f"navign-firmware: --version: {exc}", file=sys.stderr)
            return 2
    try:
        root = build.write_build(args.out, target=args.target, version=args.version)
    except (build.BuildError, OSError) as exc:
        print(f"navign-firmware: {exc}", file=sys.stderr)
        return 1
    files = (root / "files.json").read_text().count('"path"')
    print(f"{root}: {files} files (files.json lists them with sizes and SHA-256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
