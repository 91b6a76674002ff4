"""Navign mall gateway: keeps an offline copy of the mall and verified firmware, and updates the
mall's beacons.

Public entry points: :func:`navign_gateway.cli.main` (the ``navign-gateway`` command),
:func:`navign_gateway.config.load_config` and :mod:`navign_gateway.identity`.
"""

__version__ = "0.1.0"
