"""``navign-server``: the central server's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from navign_server import __version__
from navign_server.settings import ServerSettings

EXIT_CONFIG = 2


def load_settings() -> ServerSettings:
    """Settings from the environment, or one readable line and exit code 2."""
    try:
        return ServerSettings()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "settings"
        name = f"NAVIGN_SERVER_{field.upper()}" if error["loc"] else field
        print(f"navign-server: invalid {name}: {error['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def cmd_config(_: argparse.Namespace) -> int:
    settings = load_settings()
    shown = settings.model_dump(mode="json")
    shown["database_url"] = _redact(settings.database_url)
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navign-server", description="Navign central server (settings: NAVIGN_SERVER_*)."
    )
    parser.add_argument("--version", action="version", version=f"navign-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("config", help="validate the settings and print them (secrets hidden)")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
