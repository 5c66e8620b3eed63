"""Drift monitoring: each route's current version, watched against a frozen reference, with
its service health beside it (never as drift).

``features`` says what is watched on a route (what goes into the model and comes out of it),
``store`` reads it from request records with aggregate queries and keeps references,
``monitor`` compares (with ``statistics``, the pure scores, bins, statuses and the route's
correction across its features) and judges service health (``slo``, pure) against the route's
targets, ``minimums`` holds what smaller minimums were measured to cost, ``watch`` keeps the
Prometheus gauges fresh; ``api``, ``cli`` and ``report`` are its surfaces.
"""
