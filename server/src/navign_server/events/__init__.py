"""Live event fan-out to SSE subscribers."""
