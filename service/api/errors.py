"""Errors as HTTP responses: the OpenAI error envelope for every error the app answers.

``GatewayError`` (the gateway's own), Starlette's ``HTTPException`` (unknown path, wrong method:
``Allow`` names every method of the path), FastAPI's request validation errors and a database
that is locked or down (503, ``store_unavailable``, whichever class the outage raised: see
``monitoring.outages``) all become the same JSON shape, and the OpenAPI page says 400 where
FastAPI would say 422.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from monitoring.outages import store_unreachable
from service.errors import FrameworkHTTPError, GatewayError, InvalidRequest, StoreUnavailable

log = logging.getLogger(__name__)

# Where FastAPI says it found a problem: the first part of an error's location.
REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})
SHOWN_ERRORS = 3
INVALID_REQUEST_DOC = (
    "Invalid request: the OpenAI error envelope with code `invalid_request`, naming the field."
)


def error_response(error: GatewayError, request_id: str | None = None) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(request_id),
    )


def _field(error: Mapping[str, Any]) -> str:
    """The dotted path of the field an error is about, without FastAPI's ``body``/``query``."""
    loc = [str(part) for part in error.get("loc", ())]
    if error.get("type") == "json_invalid":
        return "body"  # its location is a character offset, not a field
    path = loc[1:] if loc and loc[0] in REQUEST_PARTS else loc
    return ".".join(path) or (loc[0] if loc else "request")


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """A readable 400 from pydantic's errors: each field and message, never the input sent."""
    shown = [f"{_field(e)}: {e.get('msg', 'invalid value')}" for e in errors[:SHOWN_ERRORS]]
    more = len(errors) - len(shown)
    message = "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")
    return InvalidRequest(
        message or "Invalid request.", param=_field(errors[0]) if errors else None
    )


def allowed_methods(request: Request) -> str:
    """Every method the request's path is served with. Starlette's 405 names only the first
    route that matched the path, and a path can have one route per method
    (``GET`` and ``POST /v1/reviews/export``); RFC 9110 wants them all in ``Allow``."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        served = getattr(route, "methods", None)
        if served and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(served)
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = "No such endpoint." if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers["Allow"] = allowed
        return error_response(FrameworkHTTPError(detail, exc.status_code, headers))

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(invalid_request(exc.errors()))

    async def store_error(request: Request, exc: Exception) -> Response:
        where = f"{request.method} {request.url.path}"
        if not store_unreachable(exc):  # the database refused the work: a bug
            log.error("%s: the database refused the work", where, exc_info=exc)
            return error_response(GatewayError("The gateway failed to serve this request."))
        log.warning("%s: the database cannot be reached: %r", where, exc)
        return error_response(
            StoreUnavailable("The database is busy or cannot be reached; try again shortly.")
        )

    app.add_exception_handler(GatewayError, gateway_error)
    # An outage reaches a handler as SQLAlchemy's errors or, from a fresh connection, as the
    # socket's own (ConnectionRefusedError while PostgreSQL is down).
    for outage in (SQLAlchemyError, ConnectionError, TimeoutError):
        app.add_exception_handler(outage, store_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def document_validation_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents request validation errors as 422; this gateway answers them with 400
    in the OpenAI envelope (``invalid_request``), so the description says that instead."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.get("422", {}).get("description") == "Validation Error":
                    del responses["422"]  # FastAPI's own, not a 422 the endpoint answers
                # An endpoint that declares a 422 of its own gets no FastAPI 422, but its
                # parameters and body are checked all the same.
                if operation.get("parameters") or operation.get("requestBody"):
                    known = responses.get("400", {}).get("description", "")
                    if INVALID_REQUEST_DOC in known:
                        continue
                    described = f"{known} {INVALID_REQUEST_DOC}" if known else INVALID_REQUEST_DOC
                    responses["400"] = {**responses.get("400", {}), "description": described}
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
