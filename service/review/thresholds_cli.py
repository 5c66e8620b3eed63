"""``loragate reviews thresholds ROUTE``: propose an escalation threshold from reviewed answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import async_sessionmaker

from service import clock
from service.cli.common import settings_of
from service.cli.db import with_sessions
from service.review.calibration import Verdict
from service.review.thresholds import RATE_WINDOW, ThresholdReport, propose_threshold

_TEXT = f"""Propose the confidence threshold that sends reviewers the answers they would change.

Escalating "confidence under t" is judged by its PRECISION: of the answers it sends to review,
the share a reviewer corrected or rejected (rather than approved as it was). The proposal is the
highest t whose escalated answers reach --target-precision, so that reviewers see as many of the
wrong answers as that precision allows. It is fit on one half of the version's reviewed answers
(split by item id) and its precision is then measured on the other half, with a 95 % interval:
that held-out figure is the one to trust. Each half needs enough reviewed answers under t for
the precision to be known within 5 points at the target; with fewer, no threshold is proposed
and the command says how many are needed.

Reviewed answers are those the route's policy sent to review (low confidence, samples, QA
samples): above the current threshold only the samples represent traffic, so a proposal above
it rests on them. The escalations a day count the version's answers to clients under t over the
last {RATE_WINDOW.days} days (from its first answer in them, at least an hour).
"""
# One line a paragraph: the help's renderer wraps them to the terminal.
HELP = "\n\n".join(" ".join(paragraph.split()) for paragraph in _TEXT.split("\n\n"))


def _report(report: ThresholdReport) -> None:
    if report.target is None or report.proposal is None:
        typer.echo(f"route {report.route}: no reviewed answers with a confidence yet")
        raise typer.Exit(1)
    typer.echo(f"route {report.route}, version {report.target}")
    if report.calibration is not None:
        c = report.calibration
        typer.echo(
            f"calibration of {c.n} reviewed answers: ECE {c.ece:.3f}, Brier {c.brier:.3f}, "
            f"kept {c.accuracy:.1%} at mean confidence {c.mean_confidence:.3f}"
        )
    p = report.proposal
    if p.verdict is Verdict.TOO_FEW:
        typer.echo(
            f"too few reviewed answers to propose a threshold: {p.reviewed}; at least "
            f"{2 * p.needed} are needed ({p.needed} under the threshold in each half)"
        )
        raise typer.Exit(1)
    if p.verdict is Verdict.UNREACHABLE:
        best = "none" if p.best_precision is None else f"{p.best_precision:.1%}"
        typer.echo(
            f"no threshold reaches precision {p.target:.0%}: among at least {p.needed} "
            f"escalated answers reviewers changed at best {best}"
        )
        raise typer.Exit(1)
    held = p.held_out
    assert p.threshold is not None and p.fit_precision is not None and held is not None
    typer.secho(f"proposed threshold {p.threshold:.3f} (escalate confidence under it)", bold=True)
    typer.echo(f"precision on the fit half: {p.fit_precision:.1%}")
    if held.estimate is not None and held.low is not None and held.high is not None:
        typer.echo(
            f"precision held out: {held.estimate:.1%} [{held.low:.1%}, {held.high:.1%}] "
            f"({held.hits} of {held.n} changed)"
        )
    if report.rate is not None:
        r = report.rate
        typer.echo(
            f"escalations a day at the recent rate: {r.per_day:.1f} "
            f"({r.below} of {r.answered} answers over {r.days:.2f} days)"
        )


def thresholds(
    ctx: typer.Context,
    route: Annotated[str, typer.Argument(help="The route.")],
    target_precision: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=0.99,
            help="Of the escalated answers, the share reviewers should change.",
        ),
    ] = 0.9,
    version: Annotated[
        str | None,
        typer.Option(help="The adapter version `name@N` (default: the one reviewed last)."),
    ] = None,
    window_days: Annotated[
        float, typer.Option(min=1, max=3650, help="Reviewed answers this recent.")
    ] = 90,
) -> None:
    now = clock.now()

    async def run(sessions: async_sessionmaker[Any]) -> ThresholdReport:
        since = now - timedelta(days=window_days)
        return await propose_threshold(sessions, route, version, target_precision, now, since)

    _report(with_sessions(settings_of(ctx), run))
