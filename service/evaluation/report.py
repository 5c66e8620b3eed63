"""An evaluation run as one self-contained HTML page: each arm's rates with their intervals,
the paired verdict, the confusion matrix of each categorical field, the pass rate per kind and
per slice, and every case the candidate failed beside what was expected and what the baseline
answered. Pure.

Nothing is loaded from elsewhere (no scripts, fonts or images), so the file can be mailed or
attached to an audit. Every text that comes from data is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from service.evaluation.cases import Case
from service.evaluation.scoring import Outcome, Reply, passed
from service.evaluation.summary import BASELINE, CANDIDATE, rate_text

VERDICT_COLOURS = {"better": "#2e7d32", "worse": "#c62828", "no detectable difference": "#757575"}
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 20px 0 6px; }
table { border-collapse: collapse; margin: 4px 0 12px; }
td, th { padding: 2px 12px 2px 0; text-align: left; vertical-align: top; }
table.confusion td { text-align: right; } td.hit { font-weight: bold; color: #2e7d32; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
         font-size: 12px; vertical-align: middle; }
table.failed td { border-top: 1px solid #ddd; max-width: 360px; white-space: pre-wrap;
                  word-break: break-word; font-family: ui-monospace, monospace; font-size: 12px; }
"""


def render(
    run: Mapping[str, Any], cases: Sequence[Case], answers: Mapping[str, Sequence[Reply]]
) -> str:
    """``run`` as the API shows it (``figures`` included), the pack's cases in order, and each
    arm's replies in the same order."""
    title = f"Evaluation {run['id']}: {run['candidate']} on {run['pack']}"
    head = (
        f"<h1>{escape(title)}</h1><p>status <b id='status'>{escape(run['status'])}</b>"
        f"{' (' + escape(run['reason']) + ')' if run.get('reason') else ''}; baseline "
        f"{escape(str(run.get('baseline') or 'none'))}; started {escape(str(run['created_at']))}"
        "</p>"
    )
    figures = run.get("figures")
    body = [head]
    if figures:
        arms = [a for a in (CANDIDATE, BASELINE) if a in figures["arms"]]
        body += [
            _comparison(figures.get("comparison"), run.get("baseline")),
            _rates(figures["arms"], arms),
            *(
                _confusion(figures["arms"], arms, name)
                for name in figures["arms"][CANDIDATE]["fields"]
            ),
            _slices(figures["arms"], arms),
            _failed(cases, answers),
        ]
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def _rate(rate: Mapping[str, Any]) -> str:
    return rate_text(rate, decimals=1)


def _comparison(compared: Mapping[str, Any] | None, baseline: str | None) -> str:
    if not compared:
        return "<p id='verdict'>No baseline: nothing compared.</p>"
    overall = compared["passed"]
    colour = VERDICT_COLOURS.get(overall["verdict"], "#757575")
    fields = "".join(
        f"<li>{escape(name)}: {escape(c['verdict'])} ({c['only_candidate']} vs "
        f"{c['only_baseline']}, p = {c['p_value']:.3g})</li>"
        for name, c in compared["fields"].items()
    )
    return (
        f"<h2>Against {escape(str(baseline))}, case by case</h2><p id='verdict' "
        f"data-verdict='{escape(overall['verdict'])}'><span class='badge' "
        f"style='background:{colour}'>{escape(overall['verdict'])}</span> "
        f"{overall['only_candidate']} cases only the candidate passed, {overall['only_baseline']} "
        f"only the baseline (McNemar's exact test, p = {overall['p_value']:.3g})</p>"
        f"<ul>{fields}</ul>"
    )


def _rates(arms: Mapping[str, Any], names: list[str]) -> str:
    first = arms[CANDIDATE]
    rows = [("cases passed", "passed"), ("schema valid", "schema_valid"),
            ("escalated", "escalated")]  # fmt: skip
    lines = [
        f"<tr><th>{label}</th>" + "".join(f"<td>{_rate(arms[a][key])}</td>" for a in names)
        + "</tr>"
        for label, key in rows
    ]  # fmt: skip
    lines += [
        f"<tr><th>kind {escape(kind)}</th>"
        + "".join(f"<td>{_rate(arms[a]['by_kind'].get(kind, _NONE))}</td>" for a in names)
        + "</tr>"
        for kind in first["by_kind"]
    ]
    lines += [
        f"<tr><th>{escape(name)} exact match</th>"
        + "".join(f"<td>{_rate(arms[a]['fields'][name]['exact_match'])}</td>" for a in names)
        + "</tr>"
        for name in first["fields"]
    ]
    lines += [
        "<tr><th>latency p50 / p95</th>"
        + "".join(f"<td>{_ms(arms[a]['latency_ms'])}</td>" for a in names)
        + "</tr>"
    ]
    header = "<tr><th></th>" + "".join(f"<th>{escape(a)}</th>" for a in names) + "</tr>"
    return f"<h2>Rates (95 % intervals)</h2><table id='rates'>{header}{''.join(lines)}</table>"


_NONE = {"n": 0}


def _ms(latency: Mapping[str, Any]) -> str:
    p50, p95 = latency.get("p50"), latency.get("p95")
    return "-" if p50 is None else f"{p50:.0f} / {p95:.0f} ms"


def _confusion(arms: Mapping[str, Any], names: list[str], field: str) -> str:
    parts = [f"<h2>{escape(field)}</h2>"]
    for arm in names:
        found = arms[arm]["fields"][field]
        if not found["confusion"]:
            continue
        labels = sorted({*found["confusion"], *(a for row in found["confusion"].values()
                                                 for a in row)})  # fmt: skip
        header = "<tr><th>expected \\ answered</th>" + "".join(
            f"<th>{escape(x)}</th>" for x in labels
        ) + "<th>F1</th></tr>"  # fmt: skip
        rows = []
        for expected in sorted(found["confusion"]):
            row = found["confusion"][expected]
            cells = "".join(
                f"<td class='{'hit' if x == expected else ''}'>{row.get(x, 0) or ''}</td>"
                for x in labels
            )
            f1 = found["classes"].get(expected, {}).get("f1")
            rows.append(f"<tr><th>{escape(expected)}</th>{cells}<td>{_f1(f1)}</td></tr>")
        parts.append(
            f"<p>{escape(arm)}</p><table class='confusion' id='confusion-{escape(arm)}-"
            f"{escape(field)}'>{header}{''.join(rows)}</table>"
        )
    return "".join(parts)


def _f1(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _slices(arms: Mapping[str, Any], names: list[str]) -> str:
    rows = [
        f"<tr><th>{escape(label)}={escape(value)}</th>"
        + "".join(
            f"<td>{_rate(arms[a]['by_slice'].get(label, {}).get(value, _NONE))}</td>" for a in names
        )
        + "</tr>"
        for label, values in arms[CANDIDATE]["by_slice"].items()
        for value in values
    ]
    if not rows:
        return ""
    header = "<tr><th>slice</th>" + "".join(f"<th>{escape(a)}</th>" for a in names) + "</tr>"
    return f"<h2>Per slice</h2><table id='slices'>{header}{''.join(rows)}</table>"


def _failed(cases: Sequence[Case], answers: Mapping[str, Sequence[Reply]]) -> str:
    mine = answers.get(CANDIDATE, ())
    theirs = answers.get(BASELINE, ())
    rows = []
    for i, (case, reply) in enumerate(zip(cases, mine, strict=False)):
        if passed(Outcome.of(case, reply)):
            continue
        other = theirs[i].text if i < len(theirs) else None
        rows.append(
            f"<tr data-case='{i}'><td>{i}</td><td>{escape(case.kind.value)}</td>"
            f"<td>{escape(case.messages[-1]['content'])}</td><td>{escape(case.expected)}</td>"
            f"<td>{escape(reply.text if reply.text is not None else 'failed: ' + str(reply.error))}"
            f"</td><td>{escape(other or '-')}</td></tr>"
        )
    if not rows:
        return "<h2>Failed cases</h2><p id='failed'>The candidate passed every case.</p>"
    return (
        f"<h2>Failed cases ({len(rows)})</h2><table class='failed' id='failed'><tr><th>#</th>"
        "<th>kind</th><th>input</th><th>expected</th><th>candidate</th><th>baseline</th></tr>"
        f"{''.join(rows)}</table>"
    )
