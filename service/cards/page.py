"""A model card as one self-contained HTML page (nothing loaded from elsewhere, every text from
data escaped). Pure: it reads the card's JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from service.evaluation.summary import rate_text

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; max-width: 1100px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }
table { border-collapse: collapse; margin: 4px 0 12px; }
td, th { padding: 2px 12px 2px 0; text-align: left; vertical-align: top; }
pre { background: #f5f5f5; padding: 8px; white-space: pre-wrap; font-size: 12px; }
"""


def render(card: Mapping[str, Any]) -> str:
    v = card["version"]
    title = f"Model card: {v['id']}"
    parts = [
        f"<h1>{escape(title)}</h1>",
        _table(
            "version",
            [
                (k, v[k])
                for k in (
                    "sha256",
                    "base_model",
                    "pool",
                    "rank",
                    "alpha",
                    "created_at",
                    "created_by",
                )
            ],
        ),
        f"<h2>What changed and why</h2><p id='changelog'>{escape(v['changelog'] or '-')}</p>",
        _training(card["training"]),
        _evaluations(card["evaluations"]),
        _rollouts(card["rollouts"]),
        _audit(card["audit"]),
        _serving(card["serving"]),
    ]
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def _table(name: str, rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table id='{escape(name)}'>{cells}</table>"


def _training(training: Mapping[str, Any]) -> str:
    snapshot, manifest = training["data_snapshot"], training["manifest"]
    data = (
        "<p>No training data snapshot recorded.</p>"
        if snapshot is None
        else f"<p id='snapshot'>Data snapshot {escape(snapshot['id'])}: "
        f"{snapshot['train_examples']} training and {snapshot['validation_examples']} "
        f"validation examples, exported {escape(snapshot['created_at'])}.</p>"
        f"<pre>{escape(json.dumps(snapshot['manifest'], indent=2))}</pre>"
    )
    trained = (
        "" if manifest is None
        else f"<p>Training manifest:</p><pre>{escape(json.dumps(manifest, indent=2))}</pre>"
    )  # fmt: skip
    return f"<h2>Training</h2>{data}{trained}"


def _rate(arm: Mapping[str, Any] | None) -> str:
    return rate_text(arm["passed"]) if arm else "-"


def _evaluations(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for run in runs:
        figures = run.get("figures") or {}
        arms = figures.get("arms", {})
        compared = (figures.get("comparison") or {}).get("passed", {})
        rows.append(
            f"<tr data-run='{escape(run['id'])}'><td>{escape(run['id'])}</td>"
            f"<td>{escape(run['pack'])}</td><td>{escape(run['candidate'])} vs "
            f"{escape(str(run['baseline'] or '-'))}</td><td>{escape(run['status'])}</td>"
            f"<td>{_rate(arms.get('candidate'))}</td><td>{_rate(arms.get('baseline'))}</td>"
            f"<td>{escape(compared.get('verdict', '-'))}</td></tr>"
        )
    if not rows:
        return "<h2>Evaluations</h2><p>None.</p>"
    return (
        "<h2>Evaluations</h2><table id='evaluations'><tr><th>run</th><th>pack</th><th>arms</th>"
        "<th>status</th><th>candidate passed</th><th>baseline passed</th><th>paired</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _rollouts(rollouts: Sequence[Mapping[str, Any]]) -> str:
    if not rollouts:
        return "<h2>Rollouts</h2><p>None.</p>"
    parts = ["<h2>Rollouts</h2>"]
    for r in rollouts:
        events = "".join(
            f"<tr><td>{escape(e['at'])}</td><td>{escape(e['kind'])}</td><td>{escape(e['actor'])}"
            f"</td><td>{escape(e['reason'])}</td></tr>"
            for e in r["events"]
        )
        verdicts = "".join(
            f"<li>{escape(v['gate'])}: {escape(v['verdict'])}: {escape(v['detail'])}</li>"
            for v in r["last_verdicts"]
        )
        parts.append(
            f"<section class='rollout' id='rollout-{escape(r['id'])}' "
            f"data-phase='{escape(r['phase'])}'><p><b>{escape(r['route'])}</b>: "
            f"{escape(r['stable'])} to this version, {escape(r['phase'])} (started "
            f"{escape(r['created_at'])} by {escape(str(r['created_by'] or '-'))})</p>"
            f"<ul>{verdicts}</ul><table>{events}</table></section>"
        )
    return "".join(parts)


def _audit(events: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(e['at'])}</td><td>{escape(e['actor'])} ({escape(str(e['role']))})</td>"
        f"<td>{escape(e['action'])}</td><td>{escape(e['object'])}</td></tr>"
        for e in events
    )
    return f"<h2>Who did what</h2><table id='audit'>{rows}</table>" if rows else ""


def _serving(serving: Mapping[str, Any]) -> str:
    if not serving:
        return "<h2>Serving</h2><p>No route serves this version now.</p>"
    rows = "".join(
        f"<tr data-route='{escape(route)}'><td>{escape(route)}</td><td>{escape(s['since'])}</td>"
        f"<td>{escape(str(s['drift'].get('status')))}</td></tr>"
        for route, s in serving.items()
    )
    return (
        "<h2>Serving, and drift since promotion</h2><table id='serving'><tr><th>route</th>"
        f"<th>since</th><th>drift</th></tr>{rows}</table>"
    )
