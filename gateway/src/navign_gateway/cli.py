"""``navign-gateway``: the mall gateway's command line.

Exit codes: 0 success, 1 failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from navign_gateway import __version__
from navign_gateway.config import DEFAULT_PATH, ConfigError, GatewayConfig, load_config
from navign_gateway.identity import IdentityError, create_identity, load_identity

EXIT_FAILURE = 1
EXIT_CONFIG = 2
#: Libraries whose INFO and DEBUG lines would flood a Pi's journal.
QUIET_LOGGERS = ("aiohttp.access", "aiosqlite", "grpc")


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config)


def _key_path(args: argparse.Namespace) -> Path:
    if args.key is not None:
        key: Path = args.key
        return key
    return _config(args).identity_key_path


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    token = "present (wiped after first registration)" if config.enrollment_token else "none"
    print(
        f"{args.config}: OK; gateway {config.orchestrator_id} of entity {config.entity_id}, "
        f"server {config.server_url}, data in {config.data_dir}, enrollment token {token}"
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    identity = create_identity(_key_path(args))
    print(f"wrote {identity.path} (mode 0600); fingerprint {identity.fingerprint}")
    return 0


def cmd_show_key(args: argparse.Namespace) -> int:
    identity = load_identity(_key_path(args))
    print(f"key id      {identity.key_id}")
    print(f"fingerprint {identity.fingerprint}")
    print(identity.public_pem, end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from navign_gateway import daemon
    from navign_proto import logs

    config = _config(args)
    logs.configure(args.log_level, args.log_format, quiet=QUIET_LOGGERS)
    return asyncio.run(daemon.run(config, args.config))


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from navign_gateway import oneshot

    config = _config(args)
    report = asyncio.run(oneshot.status(config))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for line in oneshot.describe(report):
            print(line)
    return 0 if report.get("running") else 3


def cmd_sync_now(args: argparse.Namespace) -> int:
    import asyncio

    from navign_gateway import oneshot
    from navign_proto import logs

    config = _config(args)
    logs.configure("warning", "text", quiet=QUIET_LOGGERS)
    print(asyncio.run(oneshot.sync_now(config, args.config, full=args.full)))
    return 0


def cmd_token_hash(args: argparse.Namespace) -> int:
    import secrets

    from navign_gateway.grpc_ops_auth import MIN_TOKEN_CHARS, token_digest

    if args.generate:
        token = secrets.token_urlsafe(32)
        print(f"token  {token}")
        print(f"sha256 {token_digest(token)}")
        return 0
    token = sys.stdin.readline().strip()
    if len(token) < MIN_TOKEN_CHARS:
        print(
            f"navign-gateway: give a token of at least {MIN_TOKEN_CHARS} characters on stdin "
            "(or use --generate)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    print(token_digest(token))
    return 0


def cmd_tls_init(args: argparse.Namespace) -> int:
    from navign_gateway import tls_tool

    return _tls(lambda: tls_tool.init(args.dir, args.address, days=args.days, ca_days=args.ca_days))


def cmd_tls_issue(args: argparse.Namespace) -> int:
    from navign_gateway import tls_tool

    if args.client is not None:
        return _tls(lambda: tls_tool.issue_client(args.dir, args.client, days=args.days))
    return _tls(lambda: tls_tool.issue_port(args.dir, args.address, days=args.days))


def _tls(make: Callable[[], str]) -> int:
    from navign_gateway.tls_tool import TlsToolError

    try:
        print(make())
    except TlsToolError as exc:
        print(f"navign-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _days(text: str) -> int:
    days = int(text)
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError("must be 1 to 36500")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="navign-gateway", description="Navign mall gateway.")
    parser.add_argument("--version", action="version", version=f"navign-gateway {__version__}")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_PATH, help=f"TOML file (default {DEFAULT_PATH})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("check-config", help="validate the configuration and summarise it")
    p.set_defaults(func=cmd_check_config)
    p = commands.add_parser("run", help="run the gateway (systemd starts this)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.set_defaults(func=cmd_run)
    p = commands.add_parser(
        "status", help="the running gateway's state (exit 3 when it is not running)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = commands.add_parser(
        "sync-now", help="bring the local copy in step with the server now, then exit"
    )
    p.add_argument("--full", action="store_true", help="a full sync instead of a delta")
    p.set_defaults(func=cmd_sync_now)
    p = commands.add_parser(
        "token-hash",
        help="print the SHA-256 of a gRPC token read from stdin, for [grpc] in the configuration",
    )
    p.add_argument(
        "--generate", action="store_true", help="make a new random token; print it and its digest"
    )
    p.set_defaults(func=cmd_token_hash)
    p = commands.add_parser(
        "tls-init",
        help="make a CA and the gRPC port's certificate in DIR, for a mall without its own PKI",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument(
        "--address", action="append", default=[], metavar="ADDR",
        help="an IP address or host name towers dial (repeat for several)",
    )  # fmt: skip
    p.add_argument("--days", type=_days, default=825, help="the port's certificate (default 825)")
    p.add_argument("--ca-days", type=_days, default=3650, help="the CA (default 3650)")
    p.set_defaults(func=cmd_tls_init)
    p = commands.add_parser(
        "tls-issue",
        help="from DIR's CA: a caller's certificate (--client NAME) or a renewed port certificate",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--client", metavar="NAME", help="clients/NAME.crt and .key")
    which.add_argument(
        "--address", action="append", metavar="ADDR",
        help="renew grpc.crt and grpc.key for these addresses (repeat for several)",
    )  # fmt: skip
    p.add_argument("--days", type=_days, default=825, help="validity (default 825)")
    p.set_defaults(func=cmd_tls_issue)
    for name, func, text in (
        ("keygen", cmd_keygen, "create the gateway's identity key (never replaces one)"),
        ("show-key", cmd_show_key, "print the public key and fingerprint for pre-registration"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("--key", type=Path, help="key file (default: <data_dir>/identity.pem)")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"navign-gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except IdentityError as exc:
        print(f"navign-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - one readable line for an operator, not a traceback
        from navign_gateway.errors import describe_failure

        print(f"navign-gateway: {describe_failure(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    return result


if __name__ == "__main__":
    sys.exit(main())
