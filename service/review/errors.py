"""The review domain's errors, rendered by the one error handler (``service.api.errors``)."""

from __future__ import annotations

from service.errors import GatewayError


class ReviewItemNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "review_item_not_found"


class ReviewConflict(GatewayError):
    """The claim is stale (another reviewer holds the item now) or the item is decided already."""

    status = 409
    type = "invalid_request_error"
    code = "review_conflict"


class ReviewDecisionInvalid(GatewayError):
    """The decision lacks what its kind needs, carries what it must not, or is not JSON."""

    status = 422
    type = "invalid_request_error"
    code = "review_decision_invalid"
