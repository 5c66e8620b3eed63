"""One exception tree; each class knows its HTTP status and its OpenAI error ``type``/``code``.

Bodies never carry stack traces, file paths or keys: only ``message``, ``type`` and ``code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        """The response headers that go with the error (rendered by ``service.api.errors``)."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if request_id is not None:
            headers["x-request-id"] = request_id
        return headers

    def sse_event(self) -> bytes:
        """The error as a server-sent event, followed by the stream terminator."""
        return b"data: " + orjson.dumps(self.body()) + b"\n\ndata: [DONE]\n\n"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class MalformedJSON(InvalidRequest):
    code = "malformed_json"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class LegacyGuidedField(InvalidRequest):
    code = "legacy_guided_field"


class ValueOutOfRange(InvalidRequest):
    code = "value_out_of_range"


class SchemaCheckBusy(GatewayError):
    """Too many large ``response_format`` schemas wait for a check; the costliest is shed."""

    status = 503
    code = "schema_check_busy"

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        return {**super().headers(request_id), "Retry-After": "1"}


class RecordsUnavailable(GatewayError):
    """The record spool is full and records may not be dropped: nothing is answered unrecorded."""

    status = 503
    code = "records_unavailable"


class RateLimited(GatewayError):
    """A key's limit is reached: OpenAI's 429, with ``Retry-After`` when waiting helps."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, kind: str, retry_after_s: int | None, headers: dict[str, str]
    ) -> None:
        super().__init__(message)
        self.type = kind  # OpenAI's type names the limit: "requests" or "tokens"
        self._rate_headers = dict(headers)
        if retry_after_s is not None:
            self._rate_headers["Retry-After"] = str(retry_after_s)

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        return {**super().headers(request_id), **self._rate_headers}


class LimitsUnavailable(GatewayError):
    """The store the limits are counted in cannot be reached and limits fail closed."""

    status = 503
    code = "rate_limits_unavailable"


class ReviewStoreUnavailable(GatewayError):
    """A held answer's review item could not be stored, so no review id is handed out."""

    status = 503
    code = "review_store_unavailable"


class StoreUnavailable(GatewayError):
    """The database cannot be reached, or stayed locked past SQLite's busy timeout. The
    transaction was rolled back, unless the connection was lost while it committed."""

    status = 503
    code = "store_unavailable"

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        return {**super().headers(request_id), "Retry-After": "1"}


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class MissingAPIKey(AuthenticationFailed):
    code = "missing_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ClientClosedRequest(GatewayError):
    """Not sent to anyone (the client is gone); recorded with nginx's 499."""

    status = 499
    type = "client_closed"
    code = "client_closed_request"


class EngineError(GatewayError):
    """Base of everything that went wrong between the gateway and an engine."""

    status = 502
    type = "upstream_error"
    code = "engine_error"
    retryable: ClassVar[bool] = False
    # Filled in by the engine client: the last replica tried and how many were tried.
    replica: str | None = None
    attempts: int = 0


class EngineUnavailable(EngineError):
    status = 503
    code = "engine_unavailable"
    retryable = True


class EngineConnectFailed(EngineUnavailable):
    code = "engine_connect_failed"


class EngineServerError(EngineError):
    code = "engine_server_error"
    retryable = True


class EngineTimeout(EngineError):
    status = 504
    code = "engine_timeout"


class EngineBadResponse(EngineError):
    code = "engine_bad_response"


class EngineStreamBroken(EngineError):
    code = "engine_stream_broken"


class EngineRejected(EngineError):
    """The engine refused the request itself (4xx), e.g. a prompt longer than the context."""

    status = 400
    type = "invalid_request_error"
    code = "engine_rejected_request"


class FrameworkHTTPError(GatewayError):
    """Errors raised by the web framework itself (404, 405, ...), in the same envelope, with
    the headers the framework set (405 names the allowed methods in ``Allow``)."""

    type = "invalid_request_error"
    code = "http_error"

    def __init__(self, message: str, status: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = "not_found" if status == 404 else self.code
        self.framework_headers = dict(headers or {})

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        return {**super().headers(request_id), **self.framework_headers}


class DatabaseNotMigrated(RuntimeError):
    """Raised at start when the schema is not at the newest migration."""


class RolloutNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "rollout_not_found"


class RolloutConflict(GatewayError):
    """The command does not fit the rollout's phase, or the route already has a rollout."""

    status = 409
    type = "invalid_request_error"
    code = "rollout_conflict"


class InvalidRolloutSpec(InvalidRequest):
    code = "invalid_rollout_spec"


class OutputInvalid(GatewayError):
    """The model's answer broke the route's output schema and the route refuses such answers."""

    status = 422
    type = "invalid_response_error"
    code = "output_schema_violation"


class OutputTruncated(OutputInvalid):
    """The model's answer, meant to be JSON (a schema, a JSON mode, a tool call), was cut by
    max_tokens, also after a retry with a larger budget."""

    code = "output_truncated"
