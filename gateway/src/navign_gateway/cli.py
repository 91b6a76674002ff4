"""``navign-gateway``: the mall gateway's command line.

Exit codes: 0 success, 1 failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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
