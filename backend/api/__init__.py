"""The HTTP layer: dependencies, error handlers and routes (``/api/v1``)."""
