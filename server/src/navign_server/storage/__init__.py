"""Server storage: the :class:`~navign_server.storage.base.Store` interface and its backends."""
