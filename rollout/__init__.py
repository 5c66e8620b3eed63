"""Routing decisions (sticky split, shadow sampling), gates and the rollout state machine.

Domain logic only (no FastAPI, no SQL); built in the gated-rollouts issue.
"""
