# Errors of the beacon app. Each carries a short machine-readable reason (the words of
# docs/protocol.md: "bad_signature", "downgrade", ...) and an optional human detail.


class NavignError(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self):
        return self.reason + (": " + self.detail if self.detail else "")


class Refused(NavignError):
    # A release (envelope, manifest or artifact) the beacon will not install.
    pass


class ConfigError(NavignError):
    # A config value that is invalid (the loader falls back to a safe default).
    pass
