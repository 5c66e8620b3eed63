"""What a route may say about its monitoring (the `monitoring` block of its YAML entry).

```yaml
    monitoring:
      service:                  # targets of the service signal (defaults: LORAGATE_SERVICE_*)
        latency_p95_ms: 4000    # p95 latency of successful requests
        ttft_p95_ms: 1500       # p95 time to first token of successful streams
        error_budget: 0.01      # share of requests that may fail with 5xx
        limit_budget: 0.05      # share of answers that may end at a limit (finish_reason length)
      drift:                    # for a quiet route (defaults: LORAGATE_DRIFT_*)
        min_samples: 50         # values a feature needs in the current window
        reference_min_samples: 100
        false_alarm_rate: 0.01  # share of unchanged windows that may read warn or drift
```

Smaller minimums judge a quiet route sooner and catch less: ``loragate drift minimums`` prints
what each choice costs, measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The smallest minimums a route may choose: the smallest the false-alarm bench measures.
LEAST_WINDOW = 20
LEAST_REFERENCE = 50


class ServiceTargetsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_p95_ms: float | None = Field(default=None, gt=0)
    ttft_p95_ms: float | None = Field(default=None, gt=0)
    error_budget: float | None = Field(default=None, ge=0, lt=1)
    limit_budget: float | None = Field(default=None, ge=0, lt=1)


class DriftSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_samples: int | None = Field(default=None, ge=LEAST_WINDOW)
    reference_min_samples: int | None = Field(default=None, ge=LEAST_REFERENCE)
    false_alarm_rate: float | None = Field(default=None, gt=0, le=0.1)


class MonitoringSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: ServiceTargetsSpec = Field(default_factory=ServiceTargetsSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)

    def row(self) -> dict[str, Any] | None:
        """The database column: only what the route sets; None when it sets nothing."""
        found = self.model_dump(exclude_none=True)
        kept = {k: v for k, v in found.items() if v}
        return kept or None

    @classmethod
    def of_row(cls, row: Mapping[str, Any] | None) -> MonitoringSpec:
        return cls.model_validate(row or {})
