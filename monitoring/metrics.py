"""Every metric, declared once, in a registry owned by the app (no global registry).

Label values are bounded: routes come from configuration (an unknown route is ``-``), arms
and statuses are small fixed sets. Never keys or request ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNKNOWN = "-"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # labels() takes a lock and builds tuples; the hot path reuses children per label set.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        r = self.registry
        self.requests = Counter(
            "loragate_requests",
            "Inference requests by route, target, arm and HTTP status.",
            ["route", "target", "arm", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "loragate_request_duration_seconds",
            "Time from request received to response finished.",
            ["route", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loragate_time_to_first_token_seconds",
            "Time from request received to the first streamed token.",
            ["route", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "loragate_tokens",
            "Tokens by route and direction (prompt or completion).",
            ["route", "direction"],
            registry=r,
        )
        self.in_flight = Gauge(
            "loragate_in_flight_requests", "Inference requests being served.", registry=r
        )
        self.replica_healthy = Gauge(
            "loragate_engine_replica_healthy",
            "1 when the replica passed its last generation probe, else 0.",
            ["pool", "replica"],
            registry=r,
        )
        self.replica_in_flight = Gauge(
            "loragate_engine_replica_in_flight",
            "Requests in flight per engine replica.",
            ["pool", "replica"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "loragate_upstream_retries",
            "Requests retried on another replica before the first byte.",
            ["pool"],
            registry=r,
        )
        self.records_written = Counter(
            "loragate_records_written", "Request records written to the database.", registry=r
        )
        self.records_dropped = Counter(
            "loragate_records_dropped",
            "Request records dropped because the writer queue was full.",
            registry=r,
        )
        self.record_write_failures = Counter(
            "loragate_record_write_failures",
            "Request records lost because a batch insert failed.",
            registry=r,
        )
        self.record_queue_depth = Gauge(
            "loragate_record_queue_depth", "Request records waiting to be written.", registry=r
        )
        self.adapter_loaded = Gauge(
            "loragate_adapter_loaded",
            "1 when the replica serves the adapter version, else 0.",
            ["pool", "replica", "version"],
            registry=r,
        )
        self.engine_restarts = Counter(
            "loragate_managed_engine_restarts",
            "Times the managed local engine was restarted after it exited.",
            registry=r,
        )

        self.shadow_calls = Counter(
            "loragate_shadow_calls",
            "Shadow calls to a rollout's candidate: started, or shed at the concurrency cap.",
            ["route", "outcome"],
            registry=r,
        )
        self.rollout_phase = Gauge(
            "loragate_rollout_phase",
            "1 for the phase of the route's latest rollout, 0 for the other phases.",
            ["route", "phase"],
            registry=r,
        )
        self.rollout_weight = Gauge(
            "loragate_rollout_weight_percent",
            "Percent of the route's traffic the candidate takes: canary share or shadow sample.",
            ["route", "kind"],
            registry=r,
        )
        self.rollout_transitions = Counter(
            "loragate_rollout_transitions",
            "Rollout transitions made by this replica, by the event kind.",
            ["route", "kind"],
            registry=r,
        )

        self.schema_checks = Counter(
            "loragate_schema_checks",
            "Answers of routes with an output contract, by whether they were schema-valid.",
            ["route", "target", "valid"],
            registry=r,
        )
        self.confidence = Histogram(
            "loragate_answer_confidence",
            "Confidence the gateway computed from token logprobs, per route and version.",
            ["route", "target"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=r,
        )
        self.escalations = Counter(
            "loragate_escalations",
            "Answers sent to human review, by reason.",
            ["route", "reason"],
            registry=r,
        )

        self.review_depth = Gauge(
            "loragate_review_queue_depth",
            "Undecided review items (pending or claimed) per route.",
            ["route"],
            registry=r,
        )
        self.review_oldest_age = Gauge(
            "loragate_review_oldest_pending_age_seconds",
            "Age of the oldest review item nobody holds a live lease on (0 when none).",
            registry=r,
        )
        self.review_parked = Gauge(
            "loragate_review_parked_items",
            "Review items parked after leases kept expiring.",
            registry=r,
        )
        self.review_decisions = Gauge(
            "loragate_review_decisions",
            "Review decisions recorded in the database, by adapter version and kind.",
            ["target", "kind"],
            registry=r,
        )
        self.review_approved_share = Gauge(
            "loragate_review_approved_unchanged_share",
            "Per adapter version: the share of reviewed answers approved unchanged.",
            ["target"],
            registry=r,
        )

    def request_done(
        self,
        labels: tuple[str, str, str, str],
        latency_s: float,
        ttft_s: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
    ) -> None:
        """Count one finished request; ``labels`` is (route, target, arm, status)."""
        children = self._request_children.get(labels)
        if children is None:
            route, _, arm, _ = labels
            children = (
                self.requests.labels(*labels),
                self.latency.labels(route, arm),
                self.ttft.labels(route, arm),
                self.tokens.labels(route, "prompt"),
                self.tokens.labels(route, "completion"),
            )
            self._request_children[labels] = children
        requests, latency, ttft, prompt, completion = children
        requests.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if tokens_in:
            prompt.inc(tokens_in)
        if tokens_out:
            completion.inc(tokens_out)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.record_queue_depth.set_function(lambda: float(depth()))
