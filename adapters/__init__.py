"""Adapter versions: validation, content-addressed store, placement on engines, training.

Domain logic only (no FastAPI, no SQL); built in the adapter-versions issue.
"""
