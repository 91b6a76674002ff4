"""Authentication: access tokens (ES256 JWT), signed gateway requests, admin tokens."""
