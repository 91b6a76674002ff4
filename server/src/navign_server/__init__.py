"""Navign central server: registers mall gateways, pushes events over SSE, serves mall data sync
and signed firmware releases.

Public entry points: :func:`navign_server.cli.main` (the ``navign-server`` command) and
:class:`navign_server.settings.ServerSettings`.
"""

__version__ = "0.1.0"
