"""How often drift monitoring flags a route on unchanged traffic, what it catches, how fast.

    python bench/drift_false_alarms.py [--windows 2000] [--seed 1]

Draws a reference and many current windows from one distribution (token counts: a rounded
log-normal, with ties; a five-way category; a 20 % flag) and judges each window as the gateway
does (quantile bins of the reference, PSI for numbers, Jensen-Shannon distance for categories,
default bands 0.1 / 0.2, a chi-square p-value per feature). A route has 12 features (6 number,
3 category and 3 flag features: a contract route's model features, with room to spare).

For each pair of minimums (records of the reference, values of a window) it prints the share
of windows in which the route shows some feature at ``warn`` or ``drift``:

- before: each feature judged alone by its bands (the rule up to this version);
- after: the route judged as a whole (``judge_route``: Holm's correction across its features at
  the false-alarm rate, 1 %), as the gateway now does;

and, after, the share of windows in which one category feature whose mix moved (shares
0.4/0.25/0.15/0.12/0.08 -> 0.25/0.25/0.2/0.15/0.15, Jensen-Shannon distance about 0.17, inside
the warn band) and one whose labels were shuffled (the demo's @2, distance about 0.46) are
caught at ``drift``/``warn`` or ``drift``. ``service/drift/minimums.py`` keeps this table for
the reports. Then the output_drift gate's false failures: two arms of one version,
``min_samples`` answers each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.drift.statistics import (
    FALSE_ALARM_RATE,
    Bands,
    FeatureDrift,
    MinSamples,
    Status,
    compare_categories,
    compare_numbers,
    edges_from,
    js_distance,
    judge_route,
    quantile_ranks,
)

CATEGORIES = ["billing", "technical", "account", "shipping", "other"]
SHARES = [0.4, 0.25, 0.15, 0.12, 0.08]
MOVED = [0.25, 0.25, 0.2, 0.15, 0.15]
SHUFFLED = [0.08, 0.12, 0.4, 0.15, 0.25]
BANDS = Bands(0.1, 0.2)
NUMBERS, CATEGORY_FEATURES = 6, 6  # half of the category features are yes/no flags
# (reference, window) minimums: the defaults first, then smaller ones for quiet routes.
PER_REFERENCE = 50
MINIMUMS = ((500, 200), (1000, 200), (500, 500), (250, 100), (100, 50), (50, 20))


def numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.lognormal(4.0, 0.6, n))


def categories(rng: np.random.Generator, n: int, shares: Sequence[float]) -> dict[str, int]:
    values, counts = np.unique(rng.choice(CATEGORIES, n, p=list(shares)), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def binned(values: np.ndarray, edges: tuple[float, ...]) -> list[int]:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return [int(c) for c in counts]


@dataclass(frozen=True)
class Reference:
    edges: tuple[float, ...]
    numbers: list[int]
    categories: dict[str, int]
    flags: dict[str, int]


def reference(rng: np.random.Generator, n: int) -> Reference:
    values = np.sort(numbers(rng, n))
    edges = edges_from([values[r] for r in quantile_ranks(n, 10)])
    yes = int((rng.random(n) < 0.2).sum())
    return Reference(
        edges, binned(values, edges), categories(rng, n, SHARES), {"yes": yes, "no": n - yes}
    )


def window(
    rng: np.random.Generator,
    ref: Reference,
    n: int,
    minimum: MinSamples,
    moved: Sequence[float] | None = None,
) -> list[FeatureDrift]:
    """One window's 12 features against ``ref``; the first category feature drawn from
    ``moved`` shares when given."""
    out = [
        compare_numbers("n", ref.edges, ref.numbers, binned(numbers(rng, n), ref.edges),
                        BANDS, minimum)
        for _ in range(NUMBERS)
    ]  # fmt: skip
    for feature in range(CATEGORY_FEATURES):
        if feature % 2 == 0:
            shares = moved if moved is not None and feature == 0 else SHARES
            cur = categories(rng, n, shares)
            out.append(compare_categories("c", ref.categories, cur, BANDS, minimum))
        else:
            yes = int((rng.random(n) < 0.2).sum())
            flags = {"yes": yes, "no": n - yes}
            out.append(compare_categories("f", ref.flags, flags, BANDS, minimum))
    return out


def flagged(statuses: Sequence[Status]) -> tuple[bool, bool]:
    """(some feature at warn or drift, some feature at drift)."""
    return (Status.WARN in statuses or Status.DRIFT in statuses), Status.DRIFT in statuses


@dataclass(frozen=True)
class Row:
    reference: int
    window: int
    before_any: float  # share of windows, bands alone: some feature at warn or drift
    before_drift: float
    after_any: float  # judged as a route (Holm at the false-alarm rate)
    after_drift: float
    moved: float  # share of windows whose moved category feature reads warn or drift
    shuffled: float  # ... whose shuffled one reads drift
    us_per_window: float


def measure(rng: np.random.Generator, ref_n: int, cur_n: int, windows: int) -> Row:
    """A fresh reference every PER_REFERENCE windows: the rate over many routes' references,
    not the luck of one."""
    minimum = MinSamples(ref_n, cur_n)
    before = np.zeros(2)
    after = np.zeros(2)
    started = time.perf_counter()
    for k in range(windows):
        if k % PER_REFERENCE == 0:
            ref = reference(rng, ref_n)
        features = window(rng, ref, cur_n, minimum)
        before += flagged([f.status for f in features])
        after += flagged([f.status for f in judge_route(features).features])
    elapsed = time.perf_counter() - started
    caught = np.zeros(2)
    power_windows = max(100, windows // 4)
    for k, moved in enumerate((MOVED, SHUFFLED)):
        for j in range(power_windows):
            if j % PER_REFERENCE == 0:
                ref = reference(rng, ref_n)
            first = judge_route(window(rng, ref, cur_n, minimum, moved)).features[NUMBERS]
            wanted = (Status.WARN, Status.DRIFT) if k == 0 else (Status.DRIFT,)
            caught[k] += first.status in wanted
    before, after, caught = before / windows, after / windows, caught / power_windows
    return Row(
        ref_n, cur_n, before[0], before[1], after[0], after[1], caught[0], caught[1],
        1e6 * elapsed / windows,
    )  # fmt: skip


def percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def print_table(rows: Sequence[Row], windows: int) -> None:
    print(
        f"Unchanged traffic, {windows} windows per row, a route of {NUMBERS + CATEGORY_FEATURES} "
        f"features; after = judged as a route at a {percent(FALSE_ALARM_RATE)} false-alarm rate"
    )
    header = ("reference", "window", "before: any warn", "before: any drift",
              "after: any warn/drift", "after: any drift", "moved mix caught",
              "shuffled caught")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" ---: " for _ in header) + "|")
    for r in rows:
        cells = (f"{r.reference:,}", f"{r.window:,}", percent(r.before_any),
                 percent(r.before_drift), percent(r.after_any), percent(r.after_drift),
                 percent(r.moved), percent(r.shuffled))  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print(f"judging a route of 12 features: {np.mean([r.us_per_window for r in rows]):.0f} us")


def gate(rng: np.random.Generator, samples: int, trials: int, limit: float) -> None:
    fails = 0
    worst = 0.0
    for _ in range(trials):
        a = categories(rng, samples, SHARES)
        b = categories(rng, samples, SHARES)
        labels = sorted(set(a) | set(b))
        distance = js_distance([a.get(c, 0) for c in labels], [b.get(c, 0) for c in labels])
        worst = max(worst, distance)
        fails += distance > limit
    print(
        f"output_drift gate, {samples} answers per arm, same version: fails "
        f"{100 * fails / trials:.2f} % at {limit} (largest distance {worst:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    moved = js_distance([int(1000 * s) for s in SHARES], [int(1000 * s) for s in MOVED])
    shuffled = js_distance([int(1000 * s) for s in SHARES], [int(1000 * s) for s in SHUFFLED])
    print(f"moved mix: Jensen-Shannon distance {moved:.3f}; shuffled: {shuffled:.3f}")
    print_table([measure(rng, r, c, args.windows) for r, c in MINIMUMS], args.windows)
    for samples in (50, 100, 200):
        gate(rng, samples, args.windows, 0.2)


if __name__ == "__main__":
    main()
