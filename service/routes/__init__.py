"""Routes: config, the served snapshot, targets, switching, API and CLI."""
