"""How often drift monitoring raises an alarm on unchanged traffic, and how fast it judges.

    python bench/drift_false_alarms.py [--windows 2000] [--reference 1000] [--current 200 500]

Draws a reference and many current windows from one distribution (token counts: a rounded
log-normal, with ties; a five-way category; a 20 % flag) and judges each window as the gateway
does (quantile bins of the reference, PSI for numbers, Jensen-Shannon distance for categories,
default bands 0.1 / 0.2). Prints, per feature kind and window size, the share of windows that
read ``warn`` or ``drift``, and the share of whole routes (with the default feature set of a
contract route: 6 number and 6 category features) with at least one feature at ``warn`` or
``drift``. Also the output_drift gate's false failures: two arms of one version, ``min_samples``
answers each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from service.drift.statistics import (
    Bands,
    MinSamples,
    Status,
    compare_categories,
    compare_numbers,
    edges_from,
    js_distance,
    quantile_ranks,
)

CATEGORIES = ["billing", "technical", "account", "shipping", "other"]
SHARES = [0.4, 0.25, 0.15, 0.12, 0.08]
BANDS = Bands(0.1, 0.2)


def numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.lognormal(4.0, 0.6, n))


def categories(rng: np.random.Generator, n: int, shares: list[float]) -> dict[str, int]:
    values, counts = np.unique(rng.choice(CATEGORIES, n, p=shares), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def binned(values: np.ndarray, edges: tuple[float, ...]) -> list[int]:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return [int(c) for c in counts]


def measure(rng: np.random.Generator, reference: int, current: int, windows: int) -> None:
    ref_values = np.sort(numbers(rng, reference))
    edges = edges_from([ref_values[r] for r in quantile_ranks(reference, 10)])
    ref_numbers = binned(ref_values, edges)
    ref_categories = categories(rng, reference, SHARES)
    ref_flags = {"yes": int(reference * 0.2), "no": reference - int(reference * 0.2)}
    minimum = MinSamples(min(current, 200), min(current, 200))
    seen: dict[str, list[Status]] = {"number": [], "category": [], "flag": []}
    routes = {"warn": 0, "drift": 0}
    started = time.perf_counter()
    judged = 0
    for _ in range(windows):
        route: list[Status] = []
        for _feature in range(6):
            cur = binned(numbers(rng, current), edges)
            status = compare_numbers("n", edges, ref_numbers, cur, BANDS, minimum).status
            seen["number"].append(status)
            route.append(status)
        for feature in range(6):
            if feature % 2:
                cur = categories(rng, current, SHARES)
                status = compare_categories("c", ref_categories, cur, BANDS, minimum).status
                seen["category"].append(status)
            else:
                yes = int((rng.random(current) < 0.2).sum())
                status = compare_categories(
                    "f", ref_flags, {"yes": yes, "no": current - yes}, BANDS, minimum
                ).status
                seen["flag"].append(status)
            route.append(status)
        judged += len(route)
        if Status.DRIFT in route:
            routes["drift"] += 1
        elif Status.WARN in route:
            routes["warn"] += 1
    elapsed = time.perf_counter() - started
    print(f"reference {reference}, current windows of {current}, {windows} windows:")
    for kind, statuses in seen.items():
        warn = statuses.count(Status.WARN) / len(statuses)
        drift = statuses.count(Status.DRIFT) / len(statuses)
        print(f"  {kind:<9} per feature: warn {100 * warn:5.2f} %, drift {100 * drift:5.2f} %")
    print(
        f"  route (12 features): any warn {100 * routes['warn'] / windows:5.2f} %, "
        f"any drift {100 * routes['drift'] / windows:5.2f} %"
    )
    print(f"  {1e6 * elapsed / judged:.0f} us per feature judged")


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--current", type=int, nargs="+", default=[100, 200, 500])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for current in args.current:
        measure(rng, args.reference, current, args.windows)
    for samples in (50, 100, 200):
        gate(rng, samples, args.windows, 0.2)


if __name__ == "__main__":
    main()
