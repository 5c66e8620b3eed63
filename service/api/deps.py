"""Access to the app's Gateway from a request."""

from __future__ import annotations

from fastapi import Request

from service.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw
