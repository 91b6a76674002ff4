"""HTTP routers: gateway-facing (orchestrators, sync, events, firmware) and admin."""
