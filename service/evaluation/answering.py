"""One case answered by one version as its route would answer a live request for it.

The body is what the route's contract makes of a client's (its output schema forced, logprobs
for confidence), at a lower priority than live traffic where the pool's engines schedule by
priority, at temperature 0 so that a run can be repeated; the answer is judged by the
same contract, with the random ``escalate: sample`` draw left out (``draw=1.0``), so
``escalated`` says what the route's thresholds would send to review. Nothing here writes a
request record: an evaluation is not traffic, and never counts against a key or a gate.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from service.engine.client import EngineClient, parse_reply
from service.errors import GatewayError
from service.evaluation.cases import Case
from service.evaluation.scoring import Reply
from service.gateway.request_rules import Endpoint, Limits, prepare
from service.guard.answers import comparable
from service.guard.route_guard import judge
from service.routes.view import RouteView
from service.settings import Settings

# vLLM serves lower numbers first; live requests carry none (0).
EVAL_PRIORITY = 1


class EngineAnswers:
    def __init__(self, engines: EngineClient, settings: Settings) -> None:
        self._engines = engines
        self._settings = settings

    def _prioritised(self, pool: str) -> bool:
        return any(p.name == pool and p.priority_scheduling for p in self._settings.engine_pools())

    async def answer(self, route: RouteView, target: str, case: Case) -> Reply:
        payload: dict[str, Any] = {
            "model": route.name,
            "messages": [dict(m) for m in case.messages],
            "temperature": 0,
        }
        try:
            forced = route.contract.forced_fields(payload) if route.contract else None
            limits = Limits.for_route(self._settings, route)
            if self._prioritised(route.pool):
                forced = {**(forced or {}), "priority": EVAL_PRIORITY}
            prepared = prepare(Endpoint.CHAT, payload, target, limits, forced)
            started = time.perf_counter()
            reply = await self._engines.complete(
                route.pool, target, Endpoint.CHAT.path, prepared.upstream_body,
                f"eval_{secrets.token_hex(8)}",
            )  # fmt: skip
            latency_ms = (time.perf_counter() - started) * 1000
            answer = parse_reply(reply.value)
        except GatewayError as error:
            return Reply(None, error=f"{error.code}: {error.message}")
        usage = answer.get("usage")
        tokens = usage if isinstance(usage, dict) else {}
        valid, escalated, confidence = None, False, None
        if route.contract is not None:
            judgement = judge(answer, route.contract, draw=1.0)
            valid, escalated, confidence = judgement.valid, judgement.escalated, judgement.score
        return Reply(
            comparable(answer, chat=True), None, valid, escalated, confidence, latency_ms,
            _count(tokens.get("prompt_tokens")), _count(tokens.get("completion_tokens")),
        )  # fmt: skip


def _count(value: object) -> int | None:
    return value if isinstance(value, int) else None
