"""Metrics declared once, tracing, and the request-record spool and its shipper."""
