"""One readable line for the failures an operator can meet on the command line."""

from __future__ import annotations

import errno

from navign_gateway.credentials import PendingApprovalError, UplinkRefusedError
from navign_gateway.db import DatabaseError
from navign_gateway.upstream import UpstreamError


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, UplinkRefusedError):
        return f"the server refused this gateway: {exc}"
    if isinstance(exc, PendingApprovalError):
        return str(exc)
    if isinstance(exc, UpstreamError):
        return f"the server: {exc}"
    if isinstance(exc, DatabaseError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return f"address already in use: {exc.strerror}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied: {exc.filename or exc.strerror}"
        if exc.errno == errno.ENOSPC:
            return "no space left on the device"
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    return f"{type(exc).__name__}: {exc}"
