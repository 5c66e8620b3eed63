"""A streamed answer relayed event by event, and written down exactly once however it ends.

The record, the in-flight gauge and the key's concurrency lease are settled by ``finish``,
which runs before the stream's last bytes go out, when the generator closes, or from
``close`` when the response ends before the generator ever ran (a client that left while the
response headers were being sent): a generator that never started runs no ``finally``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from service.engine.client import EngineStream
from service.errors import (
    ClientClosedRequest,
    EngineBadResponse,
    EngineStreamBroken,
    GatewayError,
)
from service.gateway.openai_shape import CHUNK_SHAPES, clean
from service.gateway.parts import Gateway
from service.gateway.request_rules import Endpoint, Prepared
from service.gateway.shadow import ShadowCall
from service.gateway.spans import NO_TRACE, RequestTrace
from service.gateway.stream_guard import StreamedAnswer
from service.limits.limiter import Grant
from service.records.draft import RecordDraft

log = logging.getLogger(__name__)


class StreamRelay:
    """Relays the engine's SSE events, each cleaned of what OpenAI's chunks do not carry
    (``openai_shape``); a failure ends with an error event + [DONE]. ``answer`` collects the
    choices as they pass; under an output contract (``verdict`` given) the answer is judged at
    its end and the verdict is the last event before [DONE]."""

    def __init__(
        self,
        gw: Gateway,
        stream: EngineStream,
        prepared: Prepared,
        record: RecordDraft,
        endpoint: Endpoint,
        shadow: ShadowCall | None,
        grant: Grant | None,
        answer: StreamedAnswer,
        verdict: Callable[[], bytes] | None = None,
        trace: RequestTrace = NO_TRACE,
    ) -> None:
        self.gw, self.stream, self.prepared, self.record = gw, stream, prepared, record
        self.endpoint, self.shadow, self.grant = endpoint, shadow, grant
        self.answer, self.verdict, self.trace = answer, verdict, trace
        self.shape = CHUNK_SHAPES[endpoint.value]
        self.recorded = False

    def finish(self) -> None:
        """Settle the stream once: upstream closed, record queued, gauge and lease released."""
        if self.recorded:
            return
        self.recorded = True
        self.stream.close()
        record = self.record
        record.response_body = self.answer.recorded_body()
        if self.shadow is not None:
            self.shadow.primary_answered(self.answer.comparable() if record.error is None else None)
        self.trace.streamed(self.answer.answer)
        self.trace.end(record)
        self.gw.end(record, self.grant)

    def close(self) -> None:
        """The response is over; a stream not yet settled was left by its client."""
        if not self.recorded:
            self.record.fail(ClientClosedRequest("The client closed the connection."))
            self.finish()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        record = self.record
        finished = False
        echoed = False
        try:
            async for line in self.stream.lines():
                if not line.startswith(b"data:"):
                    continue  # SSE comments and keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    finished = True
                    record.finish_reason = self.answer.finish_reason
                    verdict = self.verdict() if self.verdict else None
                    self.finish()
                    if verdict is not None:
                        yield verdict
                    yield b"data: [DONE]\n\n"
                    break
                event = parse_event(data)
                changed, written = self.answer.take(event)
                # Logprobs the client did not ask for, or fields OpenAI's chunks do not have,
                # were taken out: the event is written anew.
                if clean(event, self.shape) or changed:
                    data = orjson.dumps(event)
                if not echoed and isinstance(event.get("model"), str):
                    record.target, echoed = event["model"], True  # the exact version that answered
                    self.trace.first_event(event)
                if event.get("usage"):
                    record.take_usage(event["usage"])
                    if not event.get("choices") and not self.prepared.client_wants_usage:
                        continue
                if written:
                    record.mark_first_token()
                yield b"data: " + data + b"\n\n"
            if not finished:
                raise EngineStreamBroken("The engine closed the stream before it finished.")
        except GatewayError as error:
            record.fail(error)
            self.finish()
            yield error.sse_event()
        except (asyncio.CancelledError, GeneratorExit):
            self.close()  # cancelled or closed because the client left: nobody to tell
            raise
        except Exception:
            log.exception("relaying the stream of request %s failed", record.id)
            internal = GatewayError("The gateway failed while relaying the stream.")
            record.fail(internal)
            self.finish()
            yield internal.sse_event()
        finally:
            self.finish()


def parse_event(data: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EngineBadResponse("The engine sent a stream event that is not JSON.") from exc
    if not isinstance(event, dict):
        raise EngineBadResponse("The engine sent a stream event that is not an object.")
    if "error" in event:
        raise EngineStreamBroken("The engine reported an error in the middle of the stream.")
    return event
