"""The OpenAI-compatible inference endpoints. ``model`` names a route, never an engine model.

``INFERENCE`` is the route table of the hot path, and the only one: ``GatewayApp`` answers a
POST to one of its paths itself, before Starlette's error middleware, routing and FastAPI's
dependency solving (each layer is one more coroutine frame on every await; together they
measured about a fifth of the per-request CPU; ``pipeline.handle`` renders every error itself,
so nothing is lost). The FastAPI routes for the same paths are registered from the same table,
with the same handler, so the OpenAPI page documents exactly what is served and cannot drift
from it; FastAPI itself only ever sees other methods on these paths (and answers 405).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.deps import parts
from service.api.edge import EdgeGuard
from service.errors import RouteNotFound
from service.gateway import pipeline
from service.gateway.parts import Gateway
from service.gateway.request_rules import FIELDS, Endpoint


def gateway(request: Request) -> Gateway:
    found: Gateway = parts(request)
    return found


@dataclass(frozen=True, slots=True)
class InferenceDoc:
    name: str  # FastAPI's route name, part of the OpenAPI operationId
    summary: str
    description: str


INFERENCE: dict[str, Endpoint] = {endpoint.path: endpoint for endpoint in Endpoint}

DOCS = {
    Endpoint.CHAT: InferenceDoc(
        "chat_completions",
        "Chat completion on a route",
        "OpenAI chat completions. `model` is a route name. Standard sampling fields pass "
        "through; any other field is refused with 400 (README: Compatibility). `n` is at "
        "most the route's `max_choices` (default 4) and every choice is judged; a "
        "`max_tokens` above the route's cap is refused with 400 (the route's default applies "
        "when absent), `top_logprobs` is at most 20. `response_format` `json_object` or "
        "`json_schema` and `tools` are enforced: the answer is constrained by the engine, "
        "validated (each tool call's arguments against its tool's `parameters`), asked again "
        "once when invalid (with twice the budget when cut by `max_tokens`), and refused with "
        "422 (`output_schema_violation`, `output_truncated`) when still invalid, or judged by "
        "the route's review policy; the answer carries the verdict under `loragate`. "
        "`tool_choice` `auto` needs a pool with a tool-call parser. Answers carry only "
        "OpenAI's fields and `loragate`. With `stream: true` the answer is relayed as "
        "server-sent events; a failure after the stream started ends with an error event and "
        "`data: [DONE]`.",
    ),
    Endpoint.COMPLETIONS: InferenceDoc(
        "completions",
        "Text completion on a route",
        "OpenAI completions (single string prompt); same rules as chat completions.",
    ),
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request: unknown field, value out of range, malformed JSON."},
    401: {"description": "Missing or invalid API key (no request record is written)."},
    403: {"description": "The key's role may not call inference."},
    404: {
        "description": "No route with that name, or one the key's route list leaves out (the "
        "two read the same)."
    },
    413: {"description": "Body larger than the configured limit."},
    429: {
        "description": "The key's limit on requests, tokens or concurrent requests per minute is "
        "reached (`rate_limit_exceeded`; type `requests` or `tokens`). `Retry-After` says when "
        "to retry, unless the request alone is over the limit. Answers of a limited key carry "
        "`x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` for "
        "`requests` and `tokens`, as OpenAI sends them."
    },
    422: {
        "description": "The answer broke the checks it was asked for (a JSON mode, a tool's "
        "schema, the route's schema under `invalid: refuse`), also when asked again: "
        "`output_schema_violation`, or `output_truncated` when it was cut by max_tokens."
    },
    502: {"description": "The engine failed or answered with something unusable."},
    503: {
        "description": "No healthy engine replica (`engine_unavailable`), the record spool is "
        "full (`records_unavailable`), an answer held for review could not be stored "
        "(`review_store_unavailable`), or the store of the key's limits is down and limits "
        "fail closed (`rate_limits_unavailable`)."
    },
    504: {"description": "The engine did not answer in time."},
}


class GatewayApp(FastAPI):
    """The FastAPI application, with the ``INFERENCE`` endpoints answered ahead of it, and
    everything else behind the edge (``service.api.edge``: key before body, body limit)."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        self.state.gateway = gateway
        # Everything FastAPI serves passes the edge first: key before body, body limit.
        self._guarded = EdgeGuard(super().__call__, gateway)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = INFERENCE.get(scope["path"])
            if endpoint is not None:
                response = await pipeline.handle(self.gateway, scope, receive, endpoint)
                await response(scope, receive, send)
                return
        await self._guarded(scope, receive, send)


def _body_doc(endpoint: Endpoint) -> dict[str, Any]:
    properties: dict[str, Any] = {name: {} for name in sorted(FIELDS[endpoint])}
    properties["model"] = {"type": "string", "description": "Route name."}
    required = ["model", "messages" if endpoint is Endpoint.CHAT else "prompt"]
    schema = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _handler(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        return await pipeline.handle(gateway(request), request.scope, request.receive, endpoint)

    return answer


def _router() -> APIRouter:
    router = APIRouter(tags=["inference"])
    for path, endpoint in INFERENCE.items():
        doc = DOCS[endpoint]
        router.add_api_route(
            path,
            _handler(endpoint),
            methods=["POST"],
            name=doc.name,
            summary=doc.summary,
            description=doc.description,
            responses=ERROR_RESPONSES,
            openapi_extra=_body_doc(endpoint),
        )
    return router


router = _router()


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "loragate"}


@router.get(
    "/v1/models",
    summary="Routes this key may call",
    description="The routes the caller's key may use, in the OpenAI model-list shape.",
    responses={401: ERROR_RESPONSES[401], 403: ERROR_RESPONSES[403]},
)
async def list_models(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    principal = await pipeline.authenticate(gw, request.headers.get("authorization"))
    routes = gw.snapshot.current.routes.values()
    return {
        "object": "list",
        "data": [
            _model(r.name)
            for r in sorted(routes, key=lambda r: r.name)
            if principal.may_use_route(r.name)
        ],
    }


@router.get(
    "/v1/models/{model}",
    summary="One route this key may call",
    description=(
        "The route in the OpenAI model shape. A route that does not exist and one the key may "
        "not use both get 404 `model_not_found`, so a key learns nothing of other routes."
    ),
    responses={
        401: ERROR_RESPONSES[401],
        403: {"description": "The key's role may not call inference."},
        404: {"description": "No route with that name that this key may use."},
    },
)
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    principal = await pipeline.authenticate(gw, request.headers.get("authorization"))
    if model not in gw.snapshot.current.routes or not principal.may_use_route(model):
        raise RouteNotFound(f"The model '{model}' does not exist.", param="model")
    return _model(model)
