"""``loragate drift ...``: a route's drift and service health at a glance, its reference, an
HTML report, and what smaller minimums cost."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from service.cli.common import (
    KeyOption,
    UrlOption,
    call_gateway,
    columns,
    fail,
    gateway_url,
    settings_of,
)
from service.drift.minimums import MEASURED
from service.drift.report import render as render_html
from service.drift.schemas import DriftOut, FeatureOut, JudgementOut, ReferenceOut, SpanOut

drift_app = typer.Typer(
    help="Drift monitoring: the model's features of each route's version against its "
    "reference (judged as a route, at a stated false-alarm rate), with the route's service "
    "health (latency, errors, ...) against its targets beside it, never as drift.",
    no_args_is_help=True,
)
RouteArg = Annotated[str, typer.Argument(help="The route to look at.")]
SinceOption = Annotated[
    datetime | None,
    typer.Option(
        help="Start of the current window, UTC (default: LORAGATE_DRIFT_WINDOW_S before --until).",
        formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
    ),
]
UntilOption = Annotated[
    datetime | None,
    typer.Option(
        help="End of the current window, UTC (default: now).",
        formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
    ),
]
HEADER = ("feature", "kind", "stat", "score", "p-value", "adj. p", "status", "reference",
          "current")  # fmt: skip
SERVICE_HEADER = ("signal", "value", "target", "samples", "status")


def _iso(value: datetime | None) -> str | None:
    """A time typed on the command line, read as UTC."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def _query(since: datetime | None, until: datetime | None) -> str:
    parts = [f"{k}={v}" for k, v in (("since", _iso(since)), ("until", _iso(until))) if v]
    return "?" + "&".join(parts) if parts else ""


def _fetch(
    ctx: typer.Context, route: str, key: str, url: str | None, since: Any, until: Any
) -> dict[str, Any]:
    base = gateway_url(settings_of(ctx), url)
    payload = call_gateway(base, key, "GET", f"/v1/admin/drift/{route}{_query(since, until)}", None)
    if not isinstance(payload, dict):
        raise fail("the gateway answered something that is not a drift report")
    return payload


def _parsed(payload: dict[str, Any]) -> DriftOut:
    try:
        return DriftOut.model_validate(payload)
    except ValidationError as exc:
        raise fail(f"the gateway's drift report is not one this CLI reads: {exc}") from exc


def _count(n: int) -> str:
    return f"{n:,}"


def _span(span: SpanOut) -> str:
    if span.since is None or span.until is None:
        return "none yet"
    seconds = (span.until - span.since).total_seconds()
    return (
        f"{span.since:%Y-%m-%d %H:%M} to {span.until:%Y-%m-%d %H:%M} UTC "
        f"({_length(seconds)}, {_count(span.samples)} records)"
    )


def _length(seconds: float) -> str:
    """A window's length in the largest unit that keeps it readable (``45 s``, ``1 h``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value.is_integer()
                else f"{value:.1f} {unit}"
            )
    return f"{seconds:.0f} s"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _row(f: FeatureOut) -> tuple[str, ...]:
    status = f.status.upper() if f.status == "drift" else f.status
    return (
        f.name, f.kind, f.statistic, _score(f.score), _p(f.p_value), _p(f.adjusted_p_value),
        status, _count(sum(b.count for b in f.reference)), _count(sum(b.count for b in f.current)),
    )  # fmt: skip


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def _value(signal: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if signal.endswith("_ms") else _percent(value)


def _ready(reference: ReferenceOut) -> str:
    """A reference not ready yet: what it holds, and when it will hold enough."""
    held = f"{_count(reference.samples)} of {_count(reference.needed)} records"
    if reference.ready_in_s is None:
        return f"{held}; no traffic in the last day, so no estimate of when it is ready"
    return f"{held}, ready in about {_length(reference.ready_in_s)} at today's rate"


def _judgement(j: JudgementOut) -> list[str]:
    judged = (
        f"judged as a route: {j.tested} features tested at a {_percent(j.false_alarm_rate)} "
        f"false-alarm rate, route p-value {_p(j.p_value)}"
    )
    minimums = (
        f"minimums: reference {_count(j.reference_min_samples)}, window {_count(j.min_samples)}"
    )
    m = j.measured
    if m is None:
        return [judged, minimums + " (under the smallest minimums measured)"]
    return [
        judged,
        minimums + f" (measured at {_count(m.reference)} / {_count(m.window)}: false alarms "
        f"{_percent(m.false_alarms)}, shuffled labels caught {_percent(m.shuffled_caught)}, a "
        f"0.16 category move {_percent(m.moved_caught)})",
    ]


def _service(report: DriftOut) -> list[str]:
    rows = [
        (s.signal.value, _value(s.signal.value, s.value), _value(s.signal.value, s.target),
         _count(s.samples), s.status.upper() if s.status == "breach" else s.status.value)
        for s in report.service.signals
    ]  # fmt: skip
    lines = [
        f"service {report.service.status.value} (against the route's targets; never drift)",
        *columns([SERVICE_HEADER, *rows], right=(1, 2, 3)),
    ]
    if report.service.error_classes:
        classes = ", ".join(f"{k} {_count(v)}" for k, v in report.service.error_classes.items())
        lines.append(f"error classes: {classes}")
    return lines


def render(report: DriftOut) -> str:
    """The status view: the version, both windows, one line per feature (worst first), then
    the service signals."""
    source = report.reference.source or "automatic"
    lines = [f"route {report.route}: {report.target}, drift status {report.overall()}"]
    if report.reference.ready:
        lines += [
            f"reference ({source}): {_span(report.reference)}",
            f"current: {_span(report.current)}",
            *_judgement(report.judgement),
            "",
            *columns([HEADER, *(_row(f) for f in report.worst_first())], right=(3, 4, 5, 7, 8)),
        ]
    else:
        lines += [
            f"reference ({source}): {_ready(report.reference)}",
            f"current: {_span(report.current)}",
            f"{len(report.features)} features, judged once the reference is ready "
            "(a quiet route may set smaller minimums: loragate drift minimums)",
        ]
    return "\n".join([*lines, "", *_service(report)])


@drift_app.command("minimums")
def minimums() -> None:
    """What smaller drift minimums cost, as measured.

    From bench/drift_false_alarms.py; a quiet route sets them in its YAML entry
    (monitoring.drift.min_samples and reference_min_samples)."""
    header = ("reference", "window", "false alarms", "at drift", "0.16 move caught",
              "shuffled caught")  # fmt: skip
    rows = [
        (_count(m.reference), _count(m.window), _percent(m.false_alarms),
         _percent(m.drift_false_alarms), _percent(m.moved_caught), _percent(m.shuffled_caught))
        for m in MEASURED
    ]  # fmt: skip
    typer.echo(
        "Unchanged traffic flags a route (warn or drift) in at most its false-alarm rate of "
        "windows (1 % by default) whatever the minimums; smaller ones catch less:"
    )
    typer.echo("\n".join(columns([header, *rows], right=(0, 1, 2, 3, 4, 5))))


@drift_app.command("status")
def status(
    ctx: typer.Context,
    route: RouteArg,
    key: KeyOption,
    url: UrlOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON instead.")] = False,
) -> None:
    """Drift of the model's features, worst first, then service health.

    Each feature's score and status (ok, warn, drift, insufficient), judged as a route at its
    false-alarm rate; then latency, time to first token, errors and answers cut by a limit
    against the route's targets (never drift)."""
    payload = _fetch(ctx, route, key, url, since, until)
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(render(_parsed(payload)))


@drift_app.command("reference")
def reference(
    ctx: typer.Context,
    route: RouteArg,
    key: KeyOption,
    url: UrlOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    automatic: Annotated[
        bool, typer.Option("--automatic", help="Unpin: back to the automatic reference.")
    ] = False,
) -> None:
    """Pin the reference of the route's current version to a time range (UTC), or unpin it."""
    base = gateway_url(settings_of(ctx), url)
    path = f"/v1/admin/drift/{route}/reference"
    if automatic:
        if since is not None or until is not None:
            raise fail("--automatic takes no --since or --until")
        call_gateway(base, key, "DELETE", path, None)
        typer.echo(f"{route}: back to the automatic reference")
        return
    if since is None or until is None:
        raise fail("pinning a reference needs --since and --until (or --automatic)")
    payload = call_gateway(base, key, "PUT", path, {"since": _iso(since), "until": _iso(until)})
    if not isinstance(payload, dict):
        raise fail("the gateway answered something unexpected")
    ref = payload["reference"]
    typer.echo(
        f"{route} ({payload['target']}): reference pinned to {ref['since']} .. {ref['until']}, "
        f"{_count(ref['samples'])} records"
    )


@drift_app.command("report")
def report(
    ctx: typer.Context,
    route: RouteArg,
    key: KeyOption,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")],
    url: UrlOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Write one self-contained HTML page: per feature, the reference's and the current
    window's histograms side by side, with the score."""
    found = _parsed(_fetch(ctx, route, key, url, since, until))
    try:
        out.write_text(render_html(found), encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from exc
    typer.echo(f"{out}: {len(found.features)} features, drift report of {route}")
