"""Every metric, declared once, in a registry owned by the app (no global registry).

Label values are bounded: routes come from configuration (an unknown route is ``-``), arms
and statuses are small fixed sets. Never request ids; key ids only for keys that carry limits
(a set an admin configures), and only their public id.
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
        self.records_shipped = Counter(
            "loragate_records_shipped",
            "Request records moved from the spool into the database.",
            registry=r,
        )
        self.records_dropped = Counter(
            "loragate_records_dropped",
            "Request records lost, by reason: spool_full (LORAGATE_RECORDS_WHEN_FULL=drop, or "
            "the 503 that refused a request), spool_write_failed (the OS refused the append), "
            "torn (a frame cut by a crash), rejected (the database refused the row).",
            ["reason"],
            registry=r,
        )
        self.record_write_failures = Counter(
            "loragate_record_write_failures",
            "Records whose shipping failed because the database could not be reached; they "
            "stay in the spool and are shipped again (not lost).",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "loragate_spool_bytes", "Bytes of request records in the local spool.", registry=r
        )
        self.spool_oldest_unshipped = Gauge(
            "loragate_spool_oldest_unshipped_seconds",
            "Age of the oldest record not yet in the database (0 when none waits).",
            registry=r,
        )
        self.adapter_loaded = Gauge(
            "loragate_adapter_loaded",
            "1 when the replica serves the adapter version, else 0.",
            ["pool", "replica", "version"],
            registry=r,
        )
        self.replica_versions_held = Gauge(
            "loragate_engine_replica_versions_held",
            "Adapter versions the replica serves, as the last reconcile pass saw them.",
            ["pool", "replica"],
            registry=r,
        )
        self.replica_versions_running = Gauge(
            "loragate_engine_replica_versions_running",
            "Adapter versions this gateway had requests in flight on at the replica, at the last "
            "reconcile pass: the slots its traffic keeps busy.",
            ["pool", "replica"],
            registry=r,
        )
        self.adapter_saturated = Counter(
            "loragate_adapter_saturated",
            "Requests that found every replica holding their version saturated while a replica "
            "without it had room; the version's replica set grows on the next reconcile pass.",
            ["pool", "version"],
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
        self.client_schema_checks = Counter(
            "loragate_client_schema_checks",
            "Clients' response_format schemas past their cheap bounds, by outcome: cached (a "
            "verdict kept from before), checked (in a worker thread), shed (too many waiting).",
            ["outcome"],
            registry=r,
        )
        self.connections_closed = Counter(
            "loragate_client_connections_closed",
            "Client connections the gateway closed, by reason: header_timeout, body_timeout, "
            "send_timeout (the client read nothing), shed_idle_cap and shed_idle_client_cap "
            "(idle, closed to make room), over_cap and over_client_cap (refused: none idle), "
            "pipeline_full (answers not read), body_unread (answered before its body was in).",
            ["reason"],
            registry=r,
        )
        self.unauthenticated = Counter(
            "loragate_unauthenticated_requests",
            "Requests refused for a missing or unknown key, by error code; they get no request "
            "record.",
            ["code"],
            registry=r,
        )
        self.rate_limited = Counter(
            "loragate_rate_limited",
            "Requests refused with 429 by a key's limits, by key id and limit "
            "(rpm, tpm or max_concurrent).",
            ["key", "limit"],
            registry=r,
        )
        self.rate_limit_store_errors = Counter(
            "loragate_rate_limit_store_errors",
            "Failures to reach the store the limits are counted in, by operation (take or give "
            "back); requests then pass or are refused as LORAGATE_LIMITS_WHEN_STORE_DOWN says.",
            ["operation"],
            registry=r,
        )
        self.key_lookups = Counter(
            "loragate_key_lookups",
            "Key ids not in the snapshot, by outcome: found or unknown (a database lookup), "
            "remembered (known unknown until the next refresh), skipped (lookup budget spent), "
            "loaded (refused a lookup, then loaded by the look for changes it asked for).",
            ["outcome"],
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
        self.review_sla_breaches = Counter(
            "loragate_review_sla_breaches",
            "Review items that grew older than their risk tier's target age while open (each "
            "counted once, by one replica: sum over replicas).",
            ["route", "tier"],
            registry=r,
        )
        self.review_overdue = Gauge(
            "loragate_review_overdue_items",
            "Open review items older than their risk tier's target age, per tier.",
            ["tier"],
            registry=r,
        )
        self.review_qa_changed_share = Gauge(
            "loragate_review_qa_changed_share",
            "Per route: the share of QA-sampled (unescalated) answers reviewers corrected or "
            "rejected; bound is estimate, low or high (95 % Wilson interval). NaN before any.",
            ["route", "bound"],
            registry=r,
        )
        self.review_kappa = Gauge(
            "loragate_review_kappa",
            "Per route: Cohen's kappa of two reviewers' independent decisions (approve, correct, "
            "reject). NaN while undefined.",
            ["route"],
            registry=r,
        )
        self.review_field_agreement = Gauge(
            "loragate_review_field_agreement",
            "Per route: the share of fields two reviewers set alike when both corrected an "
            "answer. NaN before any.",
            ["route"],
            registry=r,
        )

        self.drift_score = Gauge(
            "loragate_drift_score",
            "Drift of a feature of the route's current version against its reference: PSI for "
            "numbers, Jensen-Shannon distance for categories (NaN while insufficient).",
            ["route", "target", "feature"],
            registry=r,
        )
        self.drift_status = Gauge(
            "loragate_drift_status",
            "1 for the feature's drift status (ok, warn, drift, insufficient), 0 for the others.",
            ["route", "target", "feature", "status"],
            registry=r,
        )
        self.drift_status_changes = Counter(
            "loragate_drift_status_changes",
            "Drift status changes seen by this replica, by the status a feature changed to.",
            ["route", "target", "feature", "status"],
            registry=r,
        )
        self.service_value = Gauge(
            "loragate_service_value",
            "A service signal of the route's current version over the drift window: "
            "latency_p95_ms, ttft_p95_ms, error_rate (5xx share), limit_rate (share of answers "
            "cut by a limit); NaN without values. Service health, never drift.",
            ["route", "target", "signal"],
            registry=r,
        )
        self.service_target = Gauge(
            "loragate_service_target",
            "The route's target for the service signal (its own, or the gateway's default).",
            ["route", "target", "signal"],
            registry=r,
        )
        self.service_status = Gauge(
            "loragate_service_status",
            "1 for the service signal's status (ok, breach, insufficient), 0 for the others.",
            ["route", "target", "signal", "status"],
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

    def track_spool(self, size: Callable[[], int], oldest_s: Callable[[], float]) -> None:
        self.spool_bytes.set_function(lambda: float(size()))
        self.spool_oldest_unshipped.set_function(oldest_s)
