"""OpenTelemetry: a tracer provider owned by the app (a no-op tracer when tracing is off), and
spans in the GenAI semantic conventions.

The GenAI helpers know OpenAI-shaped requests and answers, not loragate: the gateway passes
plain values in (a request's parameters, an answer, the text a record may keep) and gets
attributes, span names and trace headers back. Attribute names are the semantic-conventions
package's; the conventions name no adapter, so ``loragate.*`` attributes carry those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

SERVICE_NAME = "loragate"
CHAT = gen_ai.GenAiOperationNameValues.CHAT.value
TEXT_COMPLETION = gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value
# `gen_ai.provider.name`: the gateway's server span is loragate answering, its client spans
# are vLLM answering the gateway (neither is a provider the conventions list).
GATEWAY_PROVIDER = SERVICE_NAME
ENGINE_PROVIDER = "vllm"

ROUTE = "loragate.route"
REQUEST_ID = "loragate.request_id"
ARM = "loragate.rollout.arm"
ADAPTER_VERSION = "loragate.adapter.version"
ADAPTER_SHA256 = "loragate.adapter.sha256"
SCHEMA_VALID = "loragate.guard.schema_valid"
CONFIDENCE = "loragate.guard.confidence"
ESCALATED = "loragate.guard.escalated"
ERROR_CODE = "loragate.error"
RETRY = "loragate.retry"

# Request parameters as the conventions name them (OpenAI's newer `max_completion_tokens`
# is the same budget as `max_tokens`).
FLOAT_PARAMETERS = {
    "temperature": gen_ai.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": gen_ai.GEN_AI_REQUEST_TOP_P,
    "frequency_penalty": gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY,
}
INT_PARAMETERS = {
    "max_tokens": gen_ai.GEN_AI_REQUEST_MAX_TOKENS,
    "max_completion_tokens": gen_ai.GEN_AI_REQUEST_MAX_TOKENS,
    "top_k": gen_ai.GEN_AI_REQUEST_TOP_K,
    "seed": gen_ai.GEN_AI_REQUEST_SEED,
}
# A finish reason that was expected and never came (the conventions' word for it).
NO_FINISH = "error"


def build_provider(
    otlp_endpoint: str | None, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """A provider exporting to ``exporter`` (tests) or OTLP/HTTP; None when neither is given."""
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    if exporter is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_from(provider: TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(SERVICE_NAME)


def span_name(operation: str, model: str | None) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, as the conventions name spans."""
    return f"{operation} {model}" if model else operation


def start_server_span(tracer: trace.Tracer, operation: str, headers: Mapping[str, str]) -> Span:
    """The span of one request served, continuing the caller's trace when its headers carry
    one (W3C ``traceparent``); renamed once the model is known."""
    return tracer.start_span(
        operation,
        context=propagate.extract(headers),
        kind=SpanKind.SERVER,
        attributes={
            gen_ai.GEN_AI_OPERATION_NAME: operation,
            gen_ai.GEN_AI_PROVIDER_NAME: GATEWAY_PROVIDER,
        },
    )


def start_client_span(
    tracer: trace.Tracer, operation: str, model: str, attributes: Mapping[str, AttributeValue]
) -> Span:
    """The span of one call to an engine, a child of the current span."""
    return tracer.start_span(
        span_name(operation, model),
        kind=SpanKind.CLIENT,
        attributes={
            gen_ai.GEN_AI_OPERATION_NAME: operation,
            gen_ai.GEN_AI_PROVIDER_NAME: ENGINE_PROVIDER,
            gen_ai.GEN_AI_REQUEST_MODEL: model,
            **attributes,
        },
    )


def request_attributes(params: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """A request's sampling parameters as ``gen_ai.request.*`` (those it sets)."""
    found: dict[str, AttributeValue] = {}
    for key, name in FLOAT_PARAMETERS.items():
        value = params.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[name] = float(value)
    for key, name in INT_PARAMETERS.items():
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            found[name] = value
    stop = params.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        found[gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES] = stop
    n = params.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        found[gen_ai.GEN_AI_REQUEST_CHOICE_COUNT] = n
    if params.get("stream") is True:
        found[gen_ai.GEN_AI_REQUEST_STREAM] = True
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        found[gen_ai.GEN_AI_OUTPUT_TYPE] = gen_ai.GenAiOutputTypeValues.JSON.value
    return found


def response_attributes(answer: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """An answer's id, model, finish reasons (one per choice) and usage."""
    found: dict[str, AttributeValue] = {}
    for key, name in (("id", gen_ai.GEN_AI_RESPONSE_ID), ("model", gen_ai.GEN_AI_RESPONSE_MODEL)):
        if isinstance(answer.get(key), str):
            found[name] = answer[key]
    choices = answer.get("choices")
    if isinstance(choices, list) and choices:
        found[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = [finish_reason(c) for c in choices]
    usage = answer.get("usage")
    if isinstance(usage, dict):
        found.update(usage_attributes(usage.get("prompt_tokens"), usage.get("completion_tokens")))
    return found


def usage_attributes(input_tokens: object, output_tokens: object) -> dict[str, AttributeValue]:
    found: dict[str, AttributeValue] = {}
    if isinstance(input_tokens, int):
        found[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
    if isinstance(output_tokens, int):
        found[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens
    return found


def finish_reason(choice: object) -> str:
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    return reason if isinstance(reason, str) else NO_FINISH


def input_messages(params: Mapping[str, Any], text: Callable[[str], str]) -> str | None:
    """``gen_ai.input.messages`` (a JSON string): a chat request's messages, or a completion's
    prompt as one user message; every text through ``text`` (e.g. a redaction)."""
    messages = params.get("messages")
    if isinstance(messages, list):
        shaped = [_message(m, text) for m in messages if isinstance(m, dict)]
        return orjson.dumps(shaped).decode()
    prompt = params.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts):
        parts = [{"type": "text", "content": text(p)} for p in prompts]
        return orjson.dumps([{"role": "user", "parts": parts}]).decode()
    return None


def tool_definitions(params: Mapping[str, Any]) -> str | None:
    """``gen_ai.tool.definitions`` (a JSON string): the functions a request offers the model."""
    tools = params.get("tools")
    shaped = []
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            described = ("name", "description", "parameters")
            shaped.append(
                {"type": "function", **{k: function[k] for k in described if k in function}}
            )
    return orjson.dumps(shaped).decode() if shaped else None


def output_messages(choices: Iterable[object], text: Callable[[str], str]) -> str:
    """``gen_ai.output.messages`` (a JSON string): one assistant message per choice, with its
    finish reason; a chat choice's message or a completion choice's text."""
    shaped = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {"role": "assistant", "content": choice.get("text")}
        shaped.append({**_message(message, text), "finish_reason": finish_reason(choice)})
    return orjson.dumps(shaped).decode()


def _message(message: Mapping[str, Any], text: Callable[[str], str]) -> dict[str, Any]:
    """One OpenAI message in the conventions' shape: a role and typed parts."""
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append({"type": "text", "content": text(content)})
    elif isinstance(content, list):
        parts.extend(
            {"type": "text", "content": text(part["text"])}
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append({
                "type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                "arguments": _arguments(function.get("arguments"), text),
            })  # fmt: skip
    role = message.get("role")
    if role == "tool":
        response = parts[0].get("content") if parts else None
        call_id = message.get("tool_call_id")
        parts = [{"type": "tool_call_response", "id": call_id, "response": response}]
    return {"role": role if isinstance(role, str) else "user", "parts": parts}


def _arguments(arguments: object, text: Callable[[str], str]) -> object:
    """A tool call's arguments as the object they encode (OpenAI sends a JSON string); the
    string itself when it is not JSON (a model's broken call)."""
    if not isinstance(arguments, str):
        return arguments
    written = text(arguments)
    try:
        return orjson.loads(written)
    except orjson.JSONDecodeError:
        return written


def failed(span: Span, code: str, message: str, *, fault: bool = True) -> None:
    """Mark ``span`` as ended in an error: ``error.type`` is the gateway's error code. The
    status is ERROR only when ``fault``: a server span leaves it unset for a refused request
    (a 4xx is the caller's error, as in the HTTP conventions)."""
    span.set_attribute(error_attributes.ERROR_TYPE, code)
    span.set_attribute(ERROR_CODE, code)
    if fault:
        span.set_status(Status(StatusCode.ERROR, message))


def server_address(url: str) -> dict[str, AttributeValue]:
    """``server.address`` and ``server.port`` of an engine replica's base URL."""
    host, _, port = url.split("://", 1)[-1].partition("/")[0].rpartition(":")
    if not host or not port.isdigit():
        return {server_attributes.SERVER_ADDRESS: url}
    return {server_attributes.SERVER_ADDRESS: host, server_attributes.SERVER_PORT: int(port)}


def with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the current span's W3C trace context (``traceparent``) added, so the
    engine's own spans join the trace; unchanged when no span is current (tracing off)."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
    return headers
