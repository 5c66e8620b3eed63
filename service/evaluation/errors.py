"""The evaluation domain's errors, rendered by the one error handler (``service.api.errors``)."""

from __future__ import annotations

from service.errors import GatewayError


class PackNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "eval_pack_not_found"


class PackInvalid(GatewayError):
    """A bad reference, name or case; the message says which and why."""

    status = 400
    type = "invalid_request_error"
    code = "eval_pack_invalid"


class PackConflict(GatewayError):
    """Another pack of the same name was created at the same moment."""

    status = 409
    type = "invalid_request_error"
    code = "eval_pack_conflict"


class RunNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "eval_run_not_found"


class RunInvalid(GatewayError):
    """A run that cannot start: no such version on the route's pool, a baseline that is the
    candidate itself, a pack of another route; the message says which."""

    status = 400
    type = "invalid_request_error"
    code = "eval_run_invalid"


class RunBusy(GatewayError):
    """This gateway already runs as many evaluations as it may at once."""

    status = 429
    type = "rate_limit_error"
    code = "eval_runs_busy"
