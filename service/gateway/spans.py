"""A request's trace in the OpenTelemetry GenAI conventions: a SERVER span for the request and
a CLIENT span for each engine call (the primary's and a shadow's), named
``{operation} {model}``, with the route, the rollout arm, the adapter version and its digest,
and the guard's verdict. Prompt and answer texts go on the spans only as far as the
record-bodies setting keeps them in records (``full``, ``redacted`` or not at all).

With tracing off the gateway holds ``NO_TRACE``, whose every method does nothing: the hot path
pays a method call, never an attribute built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import INVALID_SPAN, Span, Tracer
from opentelemetry.util.types import AttributeValue
from starlette.types import Scope

from monitoring import tracing
from rollout.core.split import Decision
from service.records.draft import RecordDraft
from service.records.redaction import redact
from service.routes.view import AdapterView, RouteView
from service.settings import RecordBodies

NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)
OPERATIONS = {"chat": tracing.CHAT, "completions": tracing.TEXT_COMPLETION}


def _same(text: str) -> str:
    return text


def content_filter(bodies: RecordBodies) -> Callable[[str], str] | None:
    """What a text becomes on a span: itself, redacted, or (None) no texts at all."""
    if bodies is RecordBodies.FULL:
        return _same
    return redact if bodies is RecordBodies.REDACTED else None


def adapter_attributes(adapter: AdapterView | None) -> dict[str, AttributeValue]:
    if adapter is None:  # a base model
        return {}
    return {tracing.ADAPTER_VERSION: adapter.id, tracing.ADAPTER_SHA256: adapter.sha256}


def record_attributes(record: RecordDraft) -> dict[str, AttributeValue]:
    """What a finished call's record knows: usage and the guard's verdict."""
    found = tracing.usage_attributes(record.tokens_in, record.tokens_out)
    verdict = (
        (tracing.SCHEMA_VALID, record.schema_valid),
        (tracing.CONFIDENCE, record.confidence),
        (tracing.ESCALATED, record.escalated),
    )
    found.update({name: value for name, value in verdict if value is not None})
    return found


class EngineCall:
    """One engine call's CLIENT span: current while the call is made (so the engine gets its
    ``traceparent``), ended when the whole answer is in or, with what its record knows (a
    stream's end, a failure, a shadow's verdict), by ``end_with``."""

    __slots__ = ("ended", "reasons_from_record", "recording", "span")

    def __init__(self, span: Span, *, stream: bool = False) -> None:
        # A stream's finish reasons come from its record unless its whole answer is given.
        self.span, self.reasons_from_record, self.ended = span, stream, False
        self.recording = span.is_recording()  # False when the sampler left this trace out

    def current(self) -> AbstractContextManager[Span]:
        return trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def took(self, answer: Mapping[str, Any]) -> None:
        """The answer's id, model, finish reasons and usage."""
        if self.recording:
            self.span.set_attributes(tracing.response_attributes(answer))

    def end_with(self, record: RecordDraft | None, replica: str | None) -> None:
        if self.ended or not self.recording:
            self._end()
            return
        if replica:
            self.span.set_attributes(tracing.server_address(replica))
        if record is not None:
            self.span.set_attributes(record_attributes(record))
            if self.reasons_from_record:
                reason = record.finish_reason or tracing.NO_FINISH
                self.span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [reason])
            if record.error is not None:
                tracing.failed(self.span, record.error.code, record.error.message)
        self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.span.end()


class RequestTrace:
    """The SERVER span of one request and its primary engine call's CLIENT span."""

    __slots__ = (
        "_adapters",
        "_answered",
        "_arm",
        "_call",
        "_operation",
        "_params",
        "_recording",
        "_route",
        "_server",
        "_text",
        "_tracer",
    )  # fmt: skip

    def __init__(
        self,
        tracer: Tracer,
        scope: Scope,
        endpoint: str,
        request_id: str,
        bodies: RecordBodies,
        adapters: Mapping[str, AdapterView],
    ) -> None:
        self._tracer, self._adapters = tracer, adapters
        self._operation = OPERATIONS.get(endpoint, endpoint)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self._server = tracing.start_server_span(tracer, self._operation, headers)
        self._server.set_attribute(tracing.REQUEST_ID, request_id)
        # A trace the sampler leaves out still carries its context to the engine, nothing else.
        self._recording = self._server.is_recording()
        self._text = content_filter(bodies)
        self._params: dict[str, AttributeValue] = {}
        self._call: EngineCall | None = None
        self._answered = False
        self._route, self._arm = "", ""

    def current(self) -> AbstractContextManager[Span]:
        """The request's span as the current one (it outlives this block when streamed)."""
        return trace.use_span(self._server, end_on_exit=False)

    def routed(self, route: RouteView, decision: Decision, payload: Mapping[str, Any]) -> None:
        if not self._recording:
            return
        self._route, self._arm = route.name, decision.arm.value
        self._params = tracing.request_attributes(payload)
        if route.contract is not None:  # its schema is sent to the engine with every request
            self._params[gen_ai.GEN_AI_OUTPUT_TYPE] = gen_ai.GenAiOutputTypeValues.JSON.value
        server = self._server
        server.update_name(tracing.span_name(self._operation, route.name))
        server.set_attributes({
            gen_ai.GEN_AI_REQUEST_MODEL: route.name, tracing.ROUTE: route.name,
            tracing.ARM: self._arm, **self._params,
            **adapter_attributes(self._adapters.get(decision.target)),
        })  # fmt: skip
        if self._text is not None:
            for name, value in (
                (gen_ai.GEN_AI_INPUT_MESSAGES, tracing.input_messages(payload, self._text)),
                (gen_ai.GEN_AI_TOOL_DEFINITIONS, tracing.tool_definitions(payload)),
            ):
                if value is not None:
                    server.set_attribute(name, value)

    def engine_call(
        self, target: str, *, stream: bool = False, arm: str | None = None, retry: str = ""
    ) -> EngineCall:
        """A CLIENT span for a call to ``target`` (a child of the current span)."""
        if not self._recording:
            return EngineCall(tracing.start_client_span(self._tracer, self._operation, target, {}))
        attributes = {
            tracing.ROUTE: self._route, tracing.ARM: arm or self._arm, **self._params,
            **adapter_attributes(self._adapters.get(target)),
        }  # fmt: skip
        if arm is not None:  # a shadow copy: never streamed, one choice
            attributes.pop(gen_ai.GEN_AI_REQUEST_STREAM, None)
            attributes.pop(gen_ai.GEN_AI_REQUEST_CHOICE_COUNT, None)
        if retry:  # the guard asked again, for a cut answer with a larger budget
            attributes[tracing.RETRY] = retry
            attributes.pop(gen_ai.GEN_AI_REQUEST_MAX_TOKENS, None)
        span = tracing.start_client_span(self._tracer, self._operation, target, attributes)
        return EngineCall(span, stream=stream)

    def calling(
        self, target: str, *, stream: bool = False, retry: str = ""
    ) -> AbstractContextManager[Span]:
        """The primary's engine call (``retry``: why the guard asks again), its CLIENT span
        current while the call is made."""
        self._call = self.engine_call(target, stream=stream, retry=retry)
        return self._call.current()

    def replied(self, answer: Mapping[str, Any], replica: str | None) -> None:
        """The primary's whole answer from the engine: its CLIENT span ends."""
        if self._call is not None:
            self._call.took(answer)
            self._call.end_with(None, replica)

    def first_event(self, event: Mapping[str, Any]) -> None:
        """A stream's first event: the answer's id and the model writing it."""
        named = tracing.response_attributes({**event, "choices": None})
        self._server.set_attributes(named)
        if self._call is not None:
            self._call.span.set_attributes(named)

    def streamed(self, answer: Callable[[], Mapping[str, Any]]) -> None:
        """A finished stream's answer as it was relayed (every choice, its text and tool calls),
        built only when traced."""
        if not self._recording:
            return
        whole = answer()
        self.answered(whole)
        choices = whole.get("choices")
        if self._call is not None and isinstance(choices, list):
            self._call.took({"choices": choices})
            self._call.reasons_from_record = False

    def answered(self, answer: Mapping[str, Any]) -> None:
        """The answer the client gets (after the guard): on the request's span."""
        if not self._recording:
            return
        self._answered = True
        self._server.set_attributes(tracing.response_attributes(answer))
        choices = answer.get("choices")
        if self._text is not None and isinstance(choices, list):
            messages = tracing.output_messages(choices, self._text)
            self._server.set_attribute(gen_ai.GEN_AI_OUTPUT_MESSAGES, messages)

    def end(self, record: RecordDraft) -> None:
        """The request is over: usage, verdict, error."""
        if self._call is not None:
            self._call.end_with(record, record.replica)
        server = self._server
        if not self._recording:
            server.end()
            return
        server.set_attributes(record_attributes(record))
        if record.target is not None and record.target != self._route:
            server.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, record.target)
        if record.stream and not self._answered:  # the stream never opened
            reason = record.finish_reason or tracing.NO_FINISH
            server.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [reason])
        if record.error is not None:
            error, fault = record.error, record.status_code >= 500
            tracing.failed(server, error.code, error.message, fault=fault)
        server.end()


class NoTrace(RequestTrace):
    """Tracing off: nothing is built, nothing recorded."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def current(self) -> AbstractContextManager[Span]:
        return NO_SPAN

    def routed(self, route: RouteView, decision: Decision, payload: Mapping[str, Any]) -> None:
        pass

    def engine_call(
        self, target: str, *, stream: bool = False, arm: str | None = None, retry: str = ""
    ) -> EngineCall:
        return NO_CALL

    def calling(
        self, target: str, *, stream: bool = False, retry: str = ""
    ) -> AbstractContextManager[Span]:
        return NO_SPAN

    def replied(self, answer: Mapping[str, Any], replica: str | None) -> None:
        pass

    def first_event(self, event: Mapping[str, Any]) -> None:
        pass

    def streamed(self, answer: Callable[[], Mapping[str, Any]]) -> None:
        pass

    def answered(self, answer: Mapping[str, Any]) -> None:
        pass

    def end(self, record: RecordDraft) -> None:
        pass


class NoCall(EngineCall):
    """Tracing off: an engine call with no span."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def current(self) -> AbstractContextManager[Span]:
        return NO_SPAN

    def took(self, answer: Mapping[str, Any]) -> None:
        pass

    def end_with(self, record: RecordDraft | None, replica: str | None) -> None:
        pass


NO_TRACE = NoTrace()
NO_CALL = NoCall()
