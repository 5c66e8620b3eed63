"""Persistence: tables, engine/session factory, repositories."""
