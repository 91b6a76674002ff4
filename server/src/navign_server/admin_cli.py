"""``navign-admin``: operate a Navign server through its admin API (``/api/admin/...``).

Connection: ``--server`` (``NAVIGN_ADMIN_SERVER``, default http://127.0.0.1:8000) and the admin
token from ``--token-file``, ``--token`` or ``NAVIGN_ADMIN_TOKEN`` (create the first one with
``navign-server create-admin-token``). ``--json`` prints what the server answered, for scripts.
Connection options may come before or after the command.

Exit codes: 0 success; 1 the server refused (``navign-admin: <CODE>: <message>``), could not be
reached, or a local check failed; 2 usage.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from navign_server import __version__
from navign_server.admin_cli_beacon import register as register_beacon
from navign_server.admin_cli_gateways import register as register_gateways
from navign_server.admin_cli_http import (
    AdminApi,
    AdminApiError,
    InvalidServerUrl,
    ServerError,
    check_server_url,
)
from navign_server.admin_cli_input import CommandError
from navign_server.admin_cli_mall import register as register_mall
from navign_server.admin_cli_output import Output, error
from navign_server.admin_cli_release import register as register_release
from navign_server.admin_cli_rollout import register as register_rollout

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
DEFAULT_SERVER: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT: Final = 30.0
ENV_SERVER: Final = "NAVIGN_ADMIN_SERVER"
ENV_TOKEN: Final = "NAVIGN_ADMIN_TOKEN"  # noqa: S105 - the variable's name
_TOKEN_RE = re.compile(r"[\x21-\x7e]{8,512}")

Command = Callable[[AdminApi, Output, argparse.Namespace], None]


class UsageError(Exception):
    """Bad connection options: one line, exit 2."""


@dataclass(frozen=True, slots=True)
class Connection:
    server: str
    token: str
    timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        try:
            server = check_server_url(
                getattr(args, "server", None) or os.environ.get(ENV_SERVER) or DEFAULT_SERVER,
                allow_insecure_http=getattr(args, "allow_insecure_http", False),
            )
        except InvalidServerUrl as exc:
            raise UsageError(str(exc)) from None
        timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
        if not 0 < timeout <= 3600:
            raise UsageError("--timeout must be between 0 and 3600 seconds")
        return cls(server, _token(args), timeout)


def _token(args: argparse.Namespace) -> str:
    given: str | None = getattr(args, "token", None)
    token_file: Path | None = getattr(args, "token_file", None)
    if given is not None and token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    if token_file is not None:
        try:
            given = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file {token_file}: {exc}") from None
    if given is None:
        given = os.environ.get(ENV_TOKEN)
    if not given:
        raise UsageError(
            f"no admin token: use --token-file, --token or {ENV_TOKEN} "
            "(the first one comes from navign-server create-admin-token)"
        )
    if not _TOKEN_RE.fullmatch(given.strip()):
        raise UsageError("the admin token must be 8-512 printable characters without spaces")
    return given.strip()


def _connection_options() -> argparse.ArgumentParser:
    """Options accepted before or after the command (hence defaults suppressed here)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    s = argparse.SUPPRESS
    group.add_argument(
        "--server", default=s, help=f"server URL (${ENV_SERVER}, default {DEFAULT_SERVER})"
    )
    group.add_argument("--token", default=s, help=f"admin token (${ENV_TOKEN}); visible in ps")
    group.add_argument("--token-file", type=Path, default=s, help="file holding the admin token")
    group.add_argument(
        "--timeout",
        type=float,
        default=s,
        help=f"seconds per request (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=s,
        help="allow plain http to a non-loopback server (the token travels in the clear)",
    )
    group.add_argument("--json", action="store_true", default=s, help="print JSON for scripts")
    return options


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = argparse.ArgumentParser(
        prog="navign-admin",
        description="Operate a Navign server through its admin API (/api/admin/...).",
        epilog="Exit codes: 0 success, 1 refused / unreachable / local check failed, 2 usage.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"navign-admin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_mall(commands, common)
    register_gateways(commands, common)
    register_release(commands, common)
    register_rollout(commands, common)
    register_beacon(commands, common)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out = Output(as_json=getattr(args, "json", False))
    try:
        connection = Connection.from_args(args)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    api = AdminApi(connection.server, connection.token, timeout=connection.timeout)
    command: Command = args.func
    try:
        command(api, out, args)
    except ServerError as exc:
        if out.as_json and exc.envelope is not None:
            out.json(exc.envelope)
        error(str(exc))
        return EXIT_FAILURE
    except (AdminApiError, CommandError) as exc:
        error(str(exc))
        return EXIT_FAILURE
    except BrokenPipeError:  # `navign-admin ... | head`: the reader has gone, stop quietly
        _silence_stdout()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a CLI prints one line, never a traceback
        error(f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
