"""Drift monitoring: each route's current version, watched against a frozen reference.

``features`` says what is watched on a route, ``store`` reads it from request records with
aggregate queries and keeps references, ``monitor`` compares (with ``statistics``, the pure
scores, bins and statuses), ``watch`` keeps the Prometheus gauges fresh; ``api``, ``cli`` and
``report`` are its surfaces.
"""
