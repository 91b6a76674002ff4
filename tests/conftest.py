"""Cross-component fixtures: the real server and the real gateway, each as its own process on
loopback (``navign-server serve``, ``navign-gateway run``)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from navign_server.testing import ServerProcess, free_port

ENTITY = "mall-riverside"
EXAMPLE_MALL = Path(__file__).resolve().parents[1] / "proto" / "examples" / "sample-mall.json"
GATEWAY_START_TIMEOUT = 60.0
GATEWAY_STOP_TIMEOUT = 20.0


class GatewayProcess:
    """``navign-gateway run`` as a child process with its config, data and ports in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        server_url: str,
        *,
        orchestrator_id: str = "gw-1",
        enrollment_token: str | None = None,
        environment: dict[str, str] | None = None,
        extra_config: str = "",
        ble: str = "enabled = false",
        mdns: str = "enabled = false",
        grpc: str = "",
    ) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.orchestrator_id = orchestrator_id
        self.config_path = workdir / "gateway.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'server_url = "{server_url}"',
            f'entity_id = "{ENTITY}"',
            f'orchestrator_id = "{orchestrator_id}"',
            f'data_dir = "{workdir / "data"}"',
            "heartbeat_interval = 10",
        ]
        if enrollment_token is not None:
            lines.append(f'enrollment_token = "{enrollment_token}"')
        lines += [
            extra_config,
            "[listen]",
            f'grpc = "127.0.0.1:{self.grpc_port}"',
            f'http = "127.0.0.1:{self.http_port}"',
            "[ble]",
            ble,
            "[mdns]",
            mdns,
            "[grpc]",
            grpc,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config_path.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_GATEWAY_")}
        self.env.update(environment or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "navign_gateway.cli",
            "--config",
            str(self.config_path),
            *args,
        ]

    def start(self, *, wait: bool = True) -> None:
        with (self.workdir / "gateway.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command("run", "--log-level", "debug"),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
            )
        if wait:
            self.wait_until(lambda status: status is not None, GATEWAY_START_TIMEOUT, "answer")

    def status(self) -> dict[str, Any] | None:
        """The gateway's /healthz body, or None when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            body: dict[str, Any] = json.loads(conn.getresponse().read())
            return body
        except (OSError, ValueError):
            return None
        finally:
            conn.close()

    def wait_until(
        self,
        predicate: Callable[[dict[str, Any] | None], bool],
        timeout: float,
        what: str,
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"gateway exited ({self.process.returncode}):\n{self.log()}")
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"gateway did not {what} within {timeout:g} s: {status}\n{self.log()}")

    def log(self, tail: int = 60) -> str:
        path = self.workdir / "gateway.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-tail:])

    def stop(self, timeout: float = GATEWAY_STOP_TIMEOUT) -> int | None:
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
            raise AssertionError(f"gateway ignored SIGTERM for {timeout:g} s") from None

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=GATEWAY_STOP_TIMEOUT)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """A factory of gateway processes, all stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def make(server_url: str, **kwargs: Any) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path / f"gateway-{len(started)}", server_url, **kwargs)
        started.append(gateway)
        return gateway

    try:
        yield make
    finally:
        for gateway in started:
            gateway.kill()
