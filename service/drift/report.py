"""A drift report as one self-contained HTML page: per feature, the reference's and the current
window's histograms side by side (inline SVG, same scale) with the score and the status, and
beside them the route's service health against its targets (never drift).

Nothing is loaded from elsewhere (no scripts, fonts or images), so the file can be mailed or
attached to a ticket. Every text that comes from data is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from service.drift.schemas import BinOut, DriftOut, FeatureOut, ReferenceOut, ServiceOut, SpanOut

# One chart's size in pixels; AXIS and MARGIN leave room for the slanted bin labels.
WIDTH, HEIGHT, AXIS, MARGIN = 380, 180, 70, 40
COLOURS = {
    "ok": "#2e7d32", "warn": "#ef6c00", "drift": "#c62828", "insufficient": "#757575",
    "breach": "#c62828",
}  # fmt: skip
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 20px; margin: 0 0 4px; }
table.spans td, table.spans th { padding: 2px 12px 2px 0; text-align: left; }
section.feature { border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px;
                  margin: 16px 0; break-inside: avoid; }
section.feature h2 { font-size: 16px; margin: 0 0 6px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
         font-size: 12px; text-transform: uppercase; vertical-align: middle; }
.charts { display: flex; gap: 24px; flex-wrap: wrap; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #555; }
svg text { font-size: 10px; fill: #424242; }
"""


def _when(span: SpanOut) -> str:
    if span.since is None or span.until is None:
        return "none yet"
    return f"{span.since:%Y-%m-%d %H:%M:%S} to {span.until:%Y-%m-%d %H:%M:%S} UTC"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def chart(bins: Sequence[BinOut], top: float, colour: str, title: str) -> str:
    """A bar chart of the bins' shares, scaled so that ``top`` fills the height."""
    plot = HEIGHT - AXIS
    step = (WIDTH - MARGIN) / max(1, len(bins))
    bars: list[str] = []
    for i, b in enumerate(bins):
        height = 0.0 if top <= 0 else plot * b.share / top
        x = i * step
        label = escape(b.label if len(b.label) <= 18 else b.label[:17] + "…")
        bars.append(
            f'<rect x="{x + step * 0.1:.1f}" y="{plot - height:.1f}" width="{step * 0.8:.1f}" '
            f'height="{height:.1f}" fill="{colour}"><title>{escape(b.label)}: {b.count} '
            f"({100 * b.share:.1f} %)</title></rect>"
            f'<text transform="translate({x + step / 2:.1f},{plot + 6}) rotate(45)">{label}</text>'
        )
    return (
        f'<figure><figcaption>{escape(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<line x1="0" y1="{plot}" x2="{WIDTH}" y2="{plot}" stroke="#9e9e9e"/>'
        + "".join(bars)
        + "</svg></figure>"
    )


def feature_section(f: FeatureOut) -> str:
    colour = COLOURS.get(f.status, COLOURS["insufficient"])
    top = max([b.share for b in (*f.reference, *f.current)] or [0.0])
    ref_n, cur_n = sum(b.count for b in f.reference), sum(b.count for b in f.current)
    statistic = "PSI" if f.statistic == "psi" else "Jensen-Shannon distance"
    name, status = escape(f.name), escape(f.status)
    badge = f'<span class="badge" style="background:{colour}">{status}</span>'
    return (
        f'<section class="feature" id="feature-{name}" data-status="{status}">'
        f"<h2>{name} {badge}</h2>"
        f'<p>{statistic} <b class="score">{_number(f.score)}</b> (warn at '
        f"{f.threshold.warn:g}, drift at {f.threshold.drift:g}); chi-square p-value "
        f"{_p(f.p_value)}, adjusted across the route {_p(f.adjusted_p_value)}; "
        f"{escape(f.kind)}</p>"
        '<div class="charts">'
        + chart(f.reference, top, "#90a4ae", f"reference: {ref_n:,} values")
        + chart(f.current, top, colour, f"current: {cur_n:,} values")
        + "</div></section>"
    )


def _reference_cell(reference: ReferenceOut) -> str:
    if reference.ready:
        return f"{reference.samples:,} records"
    held = f"{reference.samples:,} of {reference.needed:,} records"
    if reference.ready_in_s is None:
        return f"{held} (not ready; no traffic in the last day)"
    return f"{held} (ready in about {reference.ready_in_s / 60:,.0f} min at today's rate)"


def service_section(service: ServiceOut) -> str:
    colour = COLOURS.get(service.status, COLOURS["insufficient"])
    rows = "".join(
        f'<tr data-signal="{escape(s.signal)}" data-status="{escape(s.status)}">'
        f"<td>{escape(s.signal)}</td><td>{_number(s.value, 4)}</td><td>{s.target:g}</td>"
        f"<td>{s.samples:,}</td><td>{escape(s.status)}</td></tr>"
        for s in service.signals
    )
    return (
        f'<section class="service" id="service" data-status="{escape(service.status)}">'
        f'<h2>service <span class="badge" style="background:{colour}">'
        f"{escape(service.status)}</span></h2><p>Against the route's targets: load, hardware "
        "and the engine's batch move these, so they are never drift.</p>"
        '<table class="spans"><tr><th>signal</th><th>value</th><th>target</th><th>samples</th>'
        f"<th>status</th></tr>{rows}</table></section>"
    )


def render(report: DriftOut) -> str:
    overall = report.overall()
    source = report.reference.source or "none yet"
    rows = (
        f"<tr><th>reference</th><td>{escape(source)}</td><td>{_when(report.reference)}</td>"
        f"<td>{_reference_cell(report.reference)}</td></tr>"
        f"<tr><th>current</th><td>window</td><td>{_when(report.current)}</td>"
        f"<td>{report.current.samples:,} records</td></tr>"
    )
    j = report.judgement
    judged = (
        f"<p>Judged as a route: {j.tested} features tested, false-alarm rate "
        f"{100 * j.false_alarm_rate:g} %, route p-value {_p(j.p_value)}; minimums: reference "
        f"{j.reference_min_samples:,}, window {j.min_samples:,}.</p>"
    )
    title = f"Drift of {report.route} ({report.target})"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{escape(title)} <span class="badge" id="overall" '
        f'style="background:{COLOURS[overall]}">{overall}</span></h1>'
        f'<table class="spans">{rows}</table>{judged}'
        + service_section(report.service)
        + "".join(feature_section(f) for f in report.worst_first())
        + "</body></html>\n"
    )
