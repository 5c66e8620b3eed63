"""Shadow calls: the candidate answers a copy of a request, and only the record keeps it.

A shadow call is fire-and-forget: it never delays, fails or changes the primary answer. At most
``max_concurrency`` run at once; past that, new ones are shed and counted. Once both answers
are in, the shadow record notes per JSON field whether the candidate agreed with stable. Shadow
records carry no key id, so they never count against a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from monitoring.metrics import Metrics
from rollout.core.agreement import compare
from rollout.core.split import Arm
from service.engine.client import EngineClient, parse_reply
from service.errors import ClientClosedRequest, EngineTimeout, GatewayError
from service.gateway.request_rules import Endpoint
from service.gateway.spans import NO_TRACE, EngineCall, RequestTrace
from service.guard.answers import comparable
from service.guard.route_guard import RouteContract, judge
from service.records.draft import RecordDraft

log = logging.getLogger(__name__)


class ShadowCall:
    """The primary's side of one shadow call: hand it stable's answer (or None) when known."""

    __slots__ = ("_primary",)

    def __init__(self) -> None:
        self._primary: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def primary_answered(self, text: str | None) -> None:
        if not self._primary.done():
            self._primary.set_result(text)

    async def primary(self, timeout_s: float) -> str | None:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(self._primary)


class ShadowCaller:
    def __init__(
        self,
        engines: EngineClient,
        metrics: Metrics,
        finish: Callable[[RecordDraft], None],
        *,
        max_concurrency: int,
        timeout_s: float,
    ) -> None:
        self._engines = engines
        self._metrics = metrics
        self._finish = finish
        self._max = max_concurrency
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def launch(
        self,
        primary: RecordDraft,
        pool: str,
        target: str,
        endpoint: Endpoint,
        body: bytes,
        contract: RouteContract | None = None,
        trace: RequestTrace = NO_TRACE,
    ) -> ShadowCall | None:
        """Start a shadow call for ``primary``; ``None`` (and counted) when at the cap."""
        route = primary.route or "-"
        if len(self._tasks) >= self._max:
            self._metrics.shadow_calls.labels(route, "shed").inc()
            return None
        call = ShadowCall()
        record = RecordDraft(endpoint.value)
        record.arm, record.route, record.target = Arm.SHADOW.value, primary.route, target
        record.rollout_id, record.shadow_of = primary.rollout_id, primary.id
        record.request_body = primary.request_body
        span = trace.engine_call(target, arm=Arm.SHADOW.value)
        task = asyncio.create_task(self._run(call, record, pool, endpoint, body, contract, span))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._metrics.shadow_calls.labels(route, "started").inc()
        return call

    async def _run(
        self,
        call: ShadowCall,
        record: RecordDraft,
        pool: str,
        endpoint: Endpoint,
        body: bytes,
        contract: RouteContract | None,
        span: EngineCall,
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                with span.current():
                    reply = await self._engines.complete(
                        pool, record.target or "", endpoint.path, body, record.id
                    )
            record.stop_clock()
            record.replica, record.attempts = reply.replica.url, reply.attempts
            answer = parse_reply(reply.value)
            span.took(answer)
            record.take_usage(answer.get("usage"))
            text = comparable(answer, chat=endpoint is Endpoint.CHAT)
            record.response_body = text
            if contract is not None:  # judged for the gates, never escalated
                judgement = judge(answer, contract, draw=1.0)
                record.schema_valid, record.confidence = judgement.valid, judgement.score
                record.fields = judgement.fields
            stable = await call.primary(self._timeout_s)
            if stable is not None and text is not None:
                record.agreement = compare(stable, text)
        except GatewayError as error:
            record.fail(error)
        except TimeoutError:
            record.fail(EngineTimeout("The shadow call or its primary did not finish in time."))
        except asyncio.CancelledError:
            record.fail(ClientClosedRequest("The gateway stopped before the shadow call ended."))
            raise
        except Exception:
            log.exception("shadow call %s failed inside the gateway", record.id)
            record.fail(GatewayError("The gateway failed to make the shadow call."))
        finally:
            record.stop_clock()
            span.end_with(record, record.replica)
            self._finish(record)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
