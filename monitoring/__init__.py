"""Metrics declared once, tracing, the request-record writer."""
