"""Gated rollouts: the pure core (``rollout.core``) and its shell: control loop, store, API, CLI.

The core decides (spec, sticky split, figures, gates, state machine) without FastAPI or SQL;
``control`` runs it against the database (``store``) and the engines.
"""
