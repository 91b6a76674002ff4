"""``navign-server``: serve, create the first admin token, show the settings.

Settings come from ``NAVIGN_SERVER_*`` environment variables and ``.env``; the flags below
override them. Exit codes: 0 success, 1 failure, 2 invalid settings or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from navign_server import __version__
from navign_server.settings import ServerSettings

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def load_settings(**overrides: Any) -> ServerSettings:
    """Settings from the environment and ``overrides``, or one readable line and exit code 2."""
    try:
        return ServerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "settings"
        name = f"NAVIGN_SERVER_{field.upper()}" if error["loc"] else field
        message = str(error["msg"]).removeprefix("Value error, ")
        print(f"navign-server: invalid {name}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def cmd_config(args: argparse.Namespace) -> int:
    settings = load_settings(database_url=args.db)
    shown = settings.model_dump(mode="json")
    shown["database_url"] = _redact(settings.database_url)
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from navign_proto import logs
    from navign_server.app import Server, create_app

    settings = load_settings(host=args.host, port=args.port, database_url=args.db)
    logs.configure(settings.log_level, args.log_format)
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    tls: dict[str, Any] = {}
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("navign-server: --tls-cert and --tls-key go together", file=sys.stderr)
            return EXIT_CONFIG
        tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=args.behind_proxy,
        forwarded_allow_ips=args.forwarded_allow_ips if args.behind_proxy else None,
        timeout_graceful_shutdown=10,
        server_header=False,
        **tls,
    )
    Server(config, app).run()
    return 0


async def _create_admin_token(database_url: str, name: str) -> str:
    from navign_server.app import open_store
    from navign_server.auth.principals import hash_secret, new_admin_token
    from navign_server.context import utc_now
    from navign_server.storage.base import AdminToken, AuditRecord

    store = open_store(database_url)
    await store.open()
    try:
        token = new_admin_token()
        now = utc_now()
        await store.create_admin_token(
            AdminToken(token_hash=hash_secret(token), name=name, created_at=now)
        )
        await store.audit(
            AuditRecord(
                at=now,
                actor="cli",
                action="admin_token.create",
                outcome="ok",
                details={"name": name},
            )
        )
        return token
    finally:
        await store.close()


def cmd_create_admin_token(args: argparse.Namespace) -> int:
    settings = load_settings(database_url=args.db)
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    token = asyncio.run(_create_admin_token(settings.database_url, args.name))
    print(f"admin token {args.name!r} created; it is shown once, store it safely:")
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navign-server",
        description="Navign central server (settings: NAVIGN_SERVER_* and .env).",
    )
    parser.add_argument("--version", action="version", version=f"navign-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    db_help = "sqlite:///path or mongodb://... (default: NAVIGN_SERVER_DATABASE_URL or sqlite:///data/navign.db)"
    p = commands.add_parser("serve", help="run the server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--db", help=db_help)
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.add_argument("--tls-cert", help="PEM certificate (or terminate TLS at a reverse proxy)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument(
        "--behind-proxy",
        action="store_true",
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips",
    )
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("create-admin-token", help="create an admin token (printed last)")
    p.add_argument("--db", help=db_help)
    p.add_argument("--name", default="admin", help="who the token is for (shown in the audit log)")
    p.set_defaults(func=cmd_create_admin_token)

    p = commands.add_parser("config", help="validate the settings and print them (secrets hidden)")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
