"""The gateway's access token: signed registration, refresh at 80 % of its life, refusal handling.

:class:`Credentials` is the :class:`~navign_gateway.upstream.TokenSource` every request to the
server uses. It registers (protocol §2.3, §3.1) the first time, with the enrollment token from
the configuration when there is one, and refreshes by a signed request afterwards (§2.4, §3.2),
falling back to registration only when the server no longer knows the key
(``AUTH_INVALID_SIGNATURE``). The token and its expiry live in the gateway database, so a
restart within the hour needs no request at all.

Outcomes that no retry can fix stop the uplink loudly (:class:`UplinkRefusedError`): a refused
enrollment token, a key that does not match the pinned one, a disabled gateway. A registration
waiting for an administrator's approval raises :class:`PendingApprovalError`, which the uplink loop
retries no sooner than the server's ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import re
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import aiohttp

from navign_gateway.config import GatewayConfig
from navign_gateway.db import Database
from navign_gateway.identity import Identity
from navign_gateway.upstream import UpstreamError, error_of
from navign_proto.canonical import canonical_json
from navign_proto.signing import sign_request
from navign_proto.wire import RegisterResponse, TokenRefreshResponse

log = logging.getLogger(__name__)

REGISTER_PATH = "/api/orchestrators/register"
TOKEN_PATH = "/api/orchestrators/token"  # noqa: S105 - a path
#: Refresh when this share of the token's life has passed (protocol §2.4), minus jitter.
REFRESH_AT = 0.8
REFRESH_JITTER = 0.05
#: A token this close to expiry is not used for a new request.
MIN_REMAINING_SECONDS = 30.0
CAPABILITIES = ["firmware_distribution", "beacon_management", "task_assignment"]
#: Codes that no retry can fix (protocol §1.7: "stop loudly").
REFUSALS = {"ENROLLMENT_TOKEN_INVALID", "AUTH_KEY_MISMATCH", "ORCHESTRATOR_DISABLED"}
STATE_TOKEN = "uplink.token"  # noqa: S105 - a state key
STATE_EXPIRES = "uplink.token_expires_at"
STATE_REGISTERED = "uplink.registered"
_ENROLLMENT_LINE = re.compile(r"^\s*enrollment_token\s*=")


class UplinkRefusedError(Exception):
    """The server refused this gateway in a way only an operator can fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PendingApprovalError(Exception):
    """The registration waits for an administrator; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, key_id: str | None) -> None:
        super().__init__(f"waiting for an administrator's approval (key id {key_id})")
        self.retry_after = retry_after
        self.key_id = key_id


class Credentials:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        config: GatewayConfig,
        identity: Identity,
        db: Database,
        version: str,
        config_path: Path | None = None,
        local_address: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._config = config
        self._identity = identity
        self._db = db
        self._version = version
        self._config_path = config_path
        self._local_address = local_address or f"http://{config.orchestrator_id}.local:8080"
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._issued_at = 0.0
        #: Seconds to add to the local clock for the server's (from a skew refusal's Date).
        self._clock_offset = 0.0
        #: Set when a registration succeeded with initial_sync_required.
        self.initial_sync_required = False

    async def load(self) -> None:
        """Take a stored token that is still valid (a restart needs no request)."""
        token = await self._db.get_state(STATE_TOKEN)
        expires = await self._db.get_state(STATE_EXPIRES)
        if token and expires:
            self._token, self._expires_at = token, float(expires)
            self._issued_at = self._expires_at - 3600.0  # unknown: assume the default life

    @property
    def has_token(self) -> bool:
        return self._token is not None

    @property
    def expires_at(self) -> float:
        return self._expires_at

    def refresh_delay(self) -> float:
        """Seconds until the token should be refreshed (about 80 % of its life, jittered)."""
        life = max(self._expires_at - self._issued_at, 0.0)
        due = self._issued_at + life * (REFRESH_AT - random.uniform(0, REFRESH_JITTER))  # noqa: S311
        return max(0.0, due - self._clock())

    def _usable(self) -> bool:
        return self._token is not None and self._expires_at - self._clock() > MIN_REMAINING_SECONDS

    async def token(self) -> str:
        if self._usable():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._usable():
                await self._obtain()
            assert self._token is not None
            return self._token

    async def refresh(self, stale: str) -> str:
        async with self._lock:
            if self._token != stale and self._usable():
                assert self._token is not None
                return self._token  # another caller already refreshed
            await self._obtain()
            assert self._token is not None
            return self._token

    async def refresh_now(self) -> None:
        """Refresh whatever the current token's age (the heartbeat's refresh_token command)."""
        async with self._lock:
            await self._obtain()

    async def _obtain(self) -> None:
        if await self._db.get_state(STATE_REGISTERED) == "1":
            try:
                await self._refresh()
                return
            except UpstreamError as exc:
                if exc.code != "AUTH_INVALID_SIGNATURE":
                    raise
                log.warning("the server no longer knows this gateway's key; registering again")
        await self._register()

    async def _signed_post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        raw = canonical_json(body)
        for attempt in range(2):
            timestamp = int(self._clock() + self._clock_offset)
            headers = {
                "Content-Type": "application/json",
                **sign_request(self._identity.key, "POST", path, "", raw, timestamp=timestamp),
            }
            try:
                async with self._session.post(
                    self._config.server_url + path,
                    data=raw,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30, sock_connect=10),
                ) as response:
                    if response.status == 200:
                        payload = await response.json(content_type=None)
                        if not isinstance(payload, dict):
                            raise UpstreamError(200, None, f"{path}: the answer is not an object")
                        return payload
                    error = await error_of(response)
                    date = response.headers.get("Date")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise UpstreamError(0, None, f"POST {path}: {exc or type(exc).__name__}") from exc
            if error.code == "AUTH_TIMESTAMP_SKEW" and attempt == 0 and date:
                # A Pi without a real-time clock before NTP: sign with the server's time.
                server_now = email.utils.parsedate_to_datetime(date).timestamp()
                self._clock_offset = server_now - self._clock()
                log.warning(
                    "clock is %.0f s off the server's; signing with its time", -self._clock_offset
                )
                continue
            raise error
        raise AssertionError("unreachable")

    async def _register(self) -> None:
        enrolled = await self._db.get_state(STATE_REGISTERED) == "1"
        body: dict[str, object] = {
            "entity_id": self._config.entity_id,
            "orchestrator_id": self._config.orchestrator_id,
            "version": self._version,
            "capabilities": CAPABILITIES,
            "public_key": self._identity.public_pem,
            "heartbeat_interval": self._config.heartbeat_interval,
            "local_address": self._local_address,
        }
        if self._config.enrollment_token and not enrolled:
            body["enrollment_token"] = self._config.enrollment_token
        try:
            payload = await self._signed_post(REGISTER_PATH, body)
        except UpstreamError as exc:
            self._raise_refusal(exc)
            raise
        response = RegisterResponse.model_validate(payload)
        self.initial_sync_required = response.initial_sync_required
        await self._store(response.token, float(response.expires_at), registered=True)
        log.info("registered as %s of %s", response.assigned_id, self._config.entity_id)
        if "enrollment_token" in body:
            self._wipe_enrollment_token()

    async def _refresh(self) -> None:
        body: dict[str, object] = {
            "entity_id": self._config.entity_id,
            "orchestrator_id": self._config.orchestrator_id,
        }
        try:
            payload = await self._signed_post(TOKEN_PATH, body)
        except UpstreamError as exc:
            self._raise_refusal(exc)
            raise
        response = TokenRefreshResponse.model_validate(payload)
        await self._store(response.token, float(response.expires_at), registered=True)
        log.debug("token refreshed; expires at %d", response.expires_at)

    def _raise_refusal(self, exc: UpstreamError) -> None:
        if exc.code in REFUSALS:
            raise UplinkRefusedError(exc.code or "", exc.message) from exc
        if exc.code == "ORCHESTRATOR_PENDING_APPROVAL":
            raise PendingApprovalError(exc.retry_after or 60.0, self._identity.key_id) from exc

    async def _store(self, token: str, expires_at: float, *, registered: bool) -> None:
        async with self._db.transaction() as conn:
            await self._db.set_state_in(conn, STATE_TOKEN, token)
            await self._db.set_state_in(conn, STATE_EXPIRES, str(int(expires_at)))
            if registered:
                await self._db.set_state_in(conn, STATE_REGISTERED, "1")
        self._token, self._expires_at, self._issued_at = token, expires_at, self._clock()

    def _wipe_enrollment_token(self) -> None:
        """Remove the used enrollment token from the configuration file (protocol §2.3).

        Only a top-level ``enrollment_token = ...`` line is removed; the file is rewritten
        atomically and only if the result parses to the same configuration minus that key. When
        that cannot be done (read-only file system, token from the environment), the database
        records that enrollment is done so the token is never sent again, and a warning says so.
        """
        path = self._config_path
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines(keepends=True)
            kept: list[str] = []
            in_table = False
            for line in lines:
                if line.lstrip().startswith("["):
                    in_table = True
                if not in_table and _ENROLLMENT_LINE.match(line):
                    continue
                kept.append(line)
            new_text = "".join(kept)
            before, after = tomllib.loads(text), tomllib.loads(new_text)
            before.pop("enrollment_token", None)
            if before != after:
                raise ValueError("the token line could not be removed cleanly")
            if new_text == text:
                log.warning(
                    "enrollment token came from the environment; unset "
                    "NAVIGN_GATEWAY_ENROLLMENT_TOKEN (it is used up)"
                )
                return
            mode = path.stat().st_mode & 0o777
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(new_text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            log.info("enrollment token wiped from %s", path)
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            log.warning(
                "could not wipe the used enrollment token from %s (%s); it is used up and will "
                "not be sent again, but remove it by hand",
                path,
                exc,
            )
