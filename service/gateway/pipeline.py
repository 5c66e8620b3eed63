"""The whole request path, top to bottom.

    auth -> read and bound the body -> route -> arm (stable or canary, maybe a shadow copy)
         -> check and rewrite the request
         -> engine call (stream or not; cancelled if the client leaves) | shadow call, detached
         -> response -> record (queued, written in batches after the response) and metrics

No database session is open while the engine works: the only reads are the key lookup for a
key id not yet in the snapshot, before the engine call; the record is written afterwards.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict
from functools import partial
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope

from rollout.core.split import decide
from service.api.edge import declared_body, header
from service.api.errors import error_response
from service.auth import INFERENCE_ROLES, Principal, require_role
from service.engine.client import parse_reply
from service.errors import (
    BodyTooLarge,
    ClientClosedRequest,
    EngineError,
    GatewayError,
    InvalidRequest,
    ReviewStoreUnavailable,
    RouteNotFound,
)
from service.gateway.client_checks import (
    CLIENT_CHECK_FIELDS,
    asks_checks,
    auto_tools,
    larger_budget,
    refusal_of,
    request_contract,
)
from service.gateway.openai_shape import ANSWER_SHAPES, clean
from service.gateway.parts import Gateway
from service.gateway.relay import RelayResponse, until_disconnected
from service.gateway.request_rules import (
    Endpoint,
    Limits,
    Prepared,
    parse_body,
    prepare,
    route_name,
)
from service.gateway.shadow import ShadowCall
from service.gateway.spans import NO_TRACE, RequestTrace
from service.gateway.stream_guard import StreamedAnswer
from service.gateway.stream_relay import StreamRelay
from service.guard.answers import comparable, first_finish_reason, reviewed_answer
from service.guard.route_guard import Judgement, RouteContract, judge, present, verdict_metadata
from service.limits.limiter import Grant
from service.records.draft import RecordDraft
from service.review.service import new_item
from service.routes.view import RouteView

JSON = "application/json"
# Every answer names its request record, so a client's report can be matched to it.
REQUEST_ID = "x-request-id"
# A held answer: accepted, its review pending.
HELD = 202
# Rollouts keep a subject on one arm: the body's `user`, else this header, else the request.
SUBJECT = b"x-loragate-subject"
log = logging.getLogger(__name__)


async def handle(gw: Gateway, scope: Scope, receive: Receive, endpoint: Endpoint) -> Response:
    principal = await caller(gw, scope)
    if not isinstance(principal, Principal):
        return principal  # 401: counted, not recorded, body not read
    record = RecordDraft(endpoint.value)
    handed_to_stream = False
    shadow: ShadowCall | None = None
    grant: Grant | None = None
    gw.metrics.in_flight.inc()
    trace = gw.trace(scope, record)
    with trace.current():
        try:
            gw.records.admit()
            record.key_id = principal.key_id
            require_role(principal, INFERENCE_ROLES)
            raw = await read_body(scope, receive, gw.settings.max_body_bytes)
            record.request_body = raw.decode("utf-8", "replace")
            payload = parse_body(raw)
            route = resolve_route(gw, route_name(payload), principal)
            subject = rollout_subject(payload, scope, record.id) if route.split else record.id
            decision = decide(route.split, route.target, subject, record.id)
            record.route, record.target, record.arm = route.name, decision.target, decision.arm
            if route.split is not None:
                record.rollout_id = route.split.rollout_id
            trace.routed(route, decision, payload)
            tools = bool(payload.get("tools"))
            limits = Limits.for_route(
                gw.settings, route, auto_tools=tools and auto_tools(gw.settings, route.pool)
            )
            forced = contract_fields(route, endpoint, payload)
            prepared = prepare(
                endpoint, payload, decision.target, limits, forced, gw.schema_checks.bounds
            )
            grant = await gw.limits.admit(principal, route.name, prepared.reserve_tokens)
            for schema in prepared.client_schemas:  # off the event loop, cached by hash
                await gw.schema_checks.check(schema, prepared.schema_cost)
            contract = request_contract(route, payload)
            record.stream = prepared.stream
            if decision.shadow_target is not None:
                shadow = launch_shadow(
                    gw, record, route, decision.shadow_target, payload, limits, forced, trace
                )
            if prepared.stream:
                with trace.calling(decision.target, stream=True):
                    stream = await until_disconnected(
                        receive,
                        gw.engines.open_stream(
                            route.pool, decision.target, endpoint.path, prepared.upstream_body,
                            record.id,
                        ),
                    )  # fmt: skip
                record.replica, record.attempts = stream.replica.url, stream.attempts
                handed_to_stream = True
                keep = contract is None or bool(payload.get("logprobs"))
                streamed = StreamedAnswer(keep_logprobs=keep, chat=endpoint is Endpoint.CHAT)
                verdict = None
                if contract is not None:
                    verdict = partial(guard_stream, gw, record, route, contract, streamed)
                relayed = StreamRelay(
                    gw, stream, prepared, record, endpoint, shadow, grant, streamed, verdict,
                    trace,
                )  # fmt: skip
                return RelayResponse(
                    relayed, record.id, grant.headers if grant is not None else None
                )
            with trace.calling(decision.target):
                reply = await until_disconnected(
                    receive,
                    gw.engines.complete(
                        route.pool, decision.target, endpoint.path, prepared.upstream_body,
                        record.id,
                    ),
                )  # fmt: skip
            record.replica, record.attempts = reply.replica.url, reply.attempts
            answer = parse_reply(reply.value)
            trace.replied(answer, record.replica)
            # Only OpenAI's fields leave: what the engine adds of its own is dropped.
            body = orjson.dumps(answer) if clean(answer, ANSWER_SHAPES[endpoint]) else reply.value
            status = 200
            if contract is not None:
                answer, body, status = await guard_answer(
                    gw, receive, route, contract, decision.target, prepared, record,
                    answer, keep_logprobs=bool(payload.get("logprobs")),
                    cap=limits.max_tokens_cap, trace=trace,
                )  # fmt: skip
            if shadow is not None:
                shadow.primary_answered(comparable(answer, chat=endpoint is Endpoint.CHAT))
            echoed = answer.get("model")
            if isinstance(echoed, str):
                record.target = echoed  # the exact version that answered
            record.take_usage(answer.get("usage"))
            record.finish_reason = first_finish_reason(answer)
            trace.answered(answer)
            if record.response_body is None:
                record.response_body = body.decode("utf-8", "replace")
            record.status_code = status
            if status == HELD:
                await hold(gw, record)
            headers = {REQUEST_ID: record.id, **(grant.headers if grant is not None else {})}
            return Response(body, status, media_type=JSON, headers=headers)
        except GatewayError as error:
            record.fail(error)
            if isinstance(error, EngineError):
                record.replica, record.attempts = error.replica, error.attempts
            elif record.attempts == 0:
                record.refused_before_engine()
            refusal = error_response(error, record.id)
            if isinstance(error, BodyTooLarge):  # the rest is not read: the connection closes
                refusal.headers["connection"] = "close"
            return refusal
        except Exception:
            log.exception("request %s failed inside the gateway", record.id)
            internal = GatewayError("The gateway failed to serve this request.")
            record.fail(internal)
            return error_response(internal, record.id)
        finally:
            if not handed_to_stream:
                if shadow is not None:
                    shadow.primary_answered(None)  # no-op when it already has the answer
                trace.end(record)
                gw.end(record, grant)


async def hold(gw: Gateway, record: RecordDraft) -> None:
    """Store a held answer's review item (and its record) before its id goes out."""
    try:
        bodies = gw.settings.effective_record_bodies
        await gw.records.hold(record.finished(record.elapsed_s(), bodies))
    except ReviewStoreUnavailable:
        record.review = None  # the client gets no review id: no item may appear later
        raise


def rollout_subject(payload: dict[str, Any], scope: Scope, request_id: str) -> str:
    """Whom a rollout keeps on one arm: the OpenAI ``user``, else ``x-loragate-subject``."""
    user = payload.get("user")
    if isinstance(user, str) and user:
        return user
    return header(scope, SUBJECT) or request_id


def launch_shadow(
    gw: Gateway,
    record: RecordDraft,
    route: RouteView,
    candidate: str,
    payload: dict[str, Any],
    limits: Limits,
    forced: dict[str, Any] | None,
    trace: RequestTrace = NO_TRACE,
) -> ShadowCall | None:
    """Send the candidate a non-streamed copy of the request; it never affects this one."""
    # One choice: the shadow is compared on the first, and costs no more than one answer.
    copy = {k: v for k, v in payload.items() if k not in ("stream", "stream_options", "n")}
    endpoint = Endpoint(record.endpoint)
    body = prepare(endpoint, copy, candidate, limits, forced).upstream_body
    # Judged by the route's contract, the request's tools joined to it (their calls checked).
    contract = request_contract(route, copy) if route.contract is not None else None
    return gw.shadow.launch(record, route.pool, candidate, endpoint, body, contract, trace)


def contract_fields(
    route: RouteView, endpoint: Endpoint, payload: dict[str, Any]
) -> dict[str, Any] | None:
    """The fields a route's output contract adds to the engine's body (None without one)."""
    if route.contract is None:
        if asks_checks(payload) and not payload.get("logprobs"):
            return dict(CLIENT_CHECK_FIELDS)
        return None
    if endpoint is not Endpoint.CHAT:
        raise InvalidRequest(
            f"The route '{route.name}' has an output contract: it serves chat completions only.",
            param="model",
        )
    if payload.get("stream") and route.contract.policy.delivery == "hold":
        raise InvalidRequest(
            f"The route '{route.name}' holds answers for review before they are delivered "
            "(delivery: hold), so it cannot stream them as they are written: send the request "
            "without 'stream'.",
            param="stream",
        )
    return route.contract.forced_fields(payload)


async def guard_answer(
    gw: Gateway,
    receive: Receive,
    route: RouteView,
    contract: RouteContract,
    target: str,
    prepared: Prepared,
    record: RecordDraft,
    answer: dict[str, Any],
    *,
    keep_logprobs: bool,
    cap: int,
    trace: RequestTrace = NO_TRACE,
) -> tuple[dict[str, Any], bytes, int]:
    """Validate and score the answer (asking again once if the policy says so: with twice the
    token budget when it was cut by max_tokens), decide on review, and build the client's body
    and status: 202 and the review id when the route holds escalated answers. The record
    carries the verdict and the review item."""
    judgement = judge(answer, contract, request_id=record.id)
    retries = contract.policy.retry_invalid
    if judgement.truncated and contract.policy.truncated == "retry":
        retries = max(retries, 1)
    for _ in range(retries):
        if judgement.valid is not False:
            break
        upstream, why = prepared.upstream_body, "invalid"
        if judgement.truncated and contract.policy.truncated == "retry":
            upstream, why = larger_budget(upstream, cap) or upstream, "truncated"
        with trace.calling(target, retry=why):
            reply = await until_disconnected(
                receive,
                gw.engines.complete(route.pool, target, Endpoint.CHAT.path, upstream, record.id),
            )
        record.attempts += reply.attempts
        answer = parse_reply(reply.value)
        trace.replied(answer, reply.replica.url)
        clean(answer, ANSWER_SHAPES[Endpoint.CHAT])
        judgement = judge(answer, contract, request_id=record.id)
    if judgement.valid is False and contract.policy.invalid == "refuse":
        settle(gw, route, target, record, answer, judgement, contract, escalate=False)
        raise refusal_of(judgement)
    review_id = settle(gw, route, target, record, answer, judgement, contract)
    body = present(answer, judgement, keep_logprobs=keep_logprobs, review_id=review_id)
    if review_id is not None and contract.policy.delivery == "hold":
        record.response_body = body.decode("utf-8", "replace")  # the record keeps the answer
        held = {"object": "loragate.review_hold", "request_id": record.id, "review_id": review_id,
                "status": "pending", "result_url": f"/v1/review-results/{review_id}"}  # fmt: skip
        return answer, orjson.dumps(held), HELD
    return answer, body, 200


def settle(
    gw: Gateway, route: RouteView, target: str, record: RecordDraft, answer: dict[str, Any],
    judgement: Judgement, contract: RouteContract | None = None, *, escalate: bool = True,
) -> str | None:  # fmt: skip
    """Put a judged answer's verdict on its record and in the metrics and, when the policy
    escalates it, its review item on the record; the review id (None when not escalated, and
    always for the checks a client asked for on a route without a contract)."""
    valid, score = judgement.valid, judgement.score
    record.schema_valid, record.confidence = valid, score
    record.fields = judgement.fields
    version = str(answer.get("model") or target)
    if valid is not None:
        gw.metrics.schema_checks.labels(route.name, version, str(valid).lower()).inc()
    if score is not None:
        gw.metrics.confidence.labels(route.name, version).observe(score)
    if not escalate or (contract is not None and not contract.reviewed):
        return None
    reason = judgement.review_reason
    record.escalated = judgement.escalated
    if reason is None:
        return None
    review_id = secrets.token_hex(16)
    gw.metrics.escalations.labels(route.name, reason).inc()
    item = new_item(
        judgement, contract or route.contract, item_id=review_id, request_id=record.id,
        route=route.name, target=version, reason=reason, answer=reviewed_answer(answer),
        created_at=record.created_at,
        request_body=record.request_body,
    )  # fmt: skip
    record.review = asdict(item)  # plain data: the record carries it to its transaction
    # A QA sample is reviewed behind the client's back: its answer is neither flagged nor held.
    return review_id if judgement.escalated else None


async def authenticate(gw: Gateway, authorization: str | None) -> Principal:
    """A principal allowed to call inference endpoints."""
    principal = await gw.identify(authorization)
    require_role(principal, INFERENCE_ROLES)
    return principal


async def caller(gw: Gateway, scope: Scope) -> Principal | Response:
    """The key's principal, or the 401 to answer (counted, not recorded: ``Gateway.caller``)."""
    try:
        principal = await gw.caller(header(scope, b"authorization"))
    except Exception:
        log.exception("identifying the caller failed inside the gateway")
        return error_response(GatewayError("The gateway failed to serve this request."))
    if isinstance(principal, Principal):
        return principal
    refusal = error_response(principal)
    if declared_body(scope)[1]:  # the body is not read: the connection closes after this
        refusal.headers["connection"] = "close"
    return refusal


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest("The client closed the connection.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def resolve_route(gw: Gateway, name: str, principal: Principal) -> RouteView:
    route = gw.snapshot.current.routes.get(name)
    # A route the key may not use reads exactly like one that does not exist: a key limited
    # to some routes learns nothing of the others.
    if route is None or not principal.may_use_route(name):
        raise RouteNotFound(f"The route '{name}' does not exist.", param="model")
    return route


def guard_stream(
    gw: Gateway, record: RecordDraft, route: RouteView, contract: RouteContract,
    streamed: StreamedAnswer,
) -> bytes:  # fmt: skip
    """Judge a finished stream's answer as a non-streamed one is (no retry: its tokens are
    out), put the verdict and any review item on the record; the verdict event."""
    answer = streamed.answer()
    judgement = judge(answer, contract, request_id=record.id)
    review_id = settle(gw, route, record.target or "", record, answer, judgement, contract)
    return streamed.verdict_event(verdict_metadata(judgement, review_id))
