"""The FastAPI application, with the inference endpoints dispatched ahead of its middleware.

The FastAPI routes for these paths stay registered (they document the API in OpenAPI), but
requests to them are answered here, before Starlette's error middleware, routing and FastAPI's
dependency solving: each layer is one more coroutine frame to pass on every await, and together
they measured about a fifth of the per-request CPU. ``pipeline.handle`` renders every error
itself, so nothing is lost by skipping them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service import pipeline
from service.gateway import Gateway
from service.request_rules import Endpoint

HOT_PATHS = {Endpoint.CHAT.path: Endpoint.CHAT, Endpoint.COMPLETIONS.path: Endpoint.COMPLETIONS}


class GatewayApp(FastAPI):
    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        self.state.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = HOT_PATHS.get(scope["path"])
            if endpoint is not None:
                response = await pipeline.handle(self.gateway, scope, receive, endpoint)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
