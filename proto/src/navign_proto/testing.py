"""Helpers for tests that call gRPC servers through grpcio.

grpcio shares subchannels between every channel of a process by target and options. A test's
channel left to a port whose server has gone holds a subchannel in its reconnect backoff; when a
later test's server is given the same ephemeral port, a new channel to it reuses that subchannel
and fails at once with the old "Connection refused" (seen in CI). Channels made with
:data:`OWN_SUBCHANNELS` keep their own, so each test connects afresh.
"""

from __future__ import annotations

OWN_SUBCHANNELS: tuple[str, int] = ("grpc.use_local_subchannel_pool", 1)
"""A grpcio channel option: this channel's subchannels are its own (``options=[...]``)."""
