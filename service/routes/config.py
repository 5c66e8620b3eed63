"""Routes declared in a YAML file and synced into the database.

```yaml
routes:
  - name: chat                 # what clients send as `model`
    pool: default              # engine pool (default: the first pool)
    target: base               # `base`, or an adapter version NAME@N; omit it to keep
                               # the target an SRE switched to (routes set-target)
    max_tokens_cap: 512        # optional, else the global cap
    default_max_tokens: 128    # optional, used when the client sends none
    description: General chat
  - name: ticket-triage
    output_schema: tickets.schema.json   # a JSON Schema (2020-12), inline or a file next to
                                          # this one; answers are constrained and validated
    risk: high                 # low | medium (default) | high | critical: the review
                               # defaults of README "Risk tiers and review"
    review:                    # optional; see README "Output contracts"
      escalate: below          # never | sample | below | always
      threshold: 0.6
      invalid: escalate        # escalate | refuse (422)
      retry_invalid: 1
    monitoring:                # optional: service targets and drift minimums
      service: {latency_p95_ms: 4000, error_budget: 0.01}
      drift: {min_samples: 50, reference_min_samples: 100}   # a quiet route
```
(`service/routes/monitoring.py` lists the `monitoring` block's settings.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import now
from service.db import repositories
from service.db.models import AdapterVersion, Route
from service.guard import SchemaRefused
from service.guard.route_guard import RouteContract
from service.guard.tiers import DEFAULT_RISK, Risk, TierConflict
from service.review.callback_urls import CallbackRefused, place
from service.routes.monitoring import MonitoringSpec
from service.settings import EnginePoolSettings

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
BASE_TARGET = "base"


class RouteSpec(BaseModel):
    name: str
    pool: str | None = None
    target: str | None = None  # base, or NAME@N; omitted: keep the route's current target
    max_tokens_cap: int | None = Field(default=None, ge=1)
    default_max_tokens: int | None = Field(default=None, ge=1)
    description: str = ""
    output_schema: dict[str, Any] | str | None = None  # inline, or a file relative to the YAML
    review: dict[str, Any] | None = None
    risk: Risk = DEFAULT_RISK  # the tier whose review defaults `review` overrides
    monitoring: MonitoringSpec | None = None  # service targets and drift minimums

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ROUTE_NAME.match(value) or "@" in value:
            raise ValueError("route names are 1-128 letters, digits, '.', '_', ':' or '-' (no '@')")
        return value

    @model_validator(mode="after")
    def _defaults_fit(self) -> RouteSpec:
        if (
            self.max_tokens_cap is not None
            and self.default_max_tokens is not None
            and self.default_max_tokens > self.max_tokens_cap
        ):
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        return self


class RoutesFile(BaseModel):
    routes: list[RouteSpec]


class RoutesConfigError(ValueError):
    pass


def load_routes_file(path: Path) -> list[RouteSpec]:
    try:
        raw = yaml.safe_load(path.read_text())
        parsed = RoutesFile.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise RoutesConfigError(f"cannot read routes from {path}: {exc}") from exc
    names = [r.name for r in parsed.routes]
    if len(names) != len(set(names)):
        raise RoutesConfigError(f"{path}: route names must be unique")
    return [_with_contract(spec, path.parent) for spec in parsed.routes]


def _with_contract(spec: RouteSpec, base: Path) -> RouteSpec:
    """Read a schema file named by the spec, and refuse a bad schema or policy at load time."""
    schema = spec.output_schema
    if isinstance(schema, str):
        try:
            schema = json.loads((base / schema).read_text())
        except RecursionError as exc:
            raise RoutesConfigError(
                f"route {spec.name!r}: JSON schema refused (depth): {schema} nests too deeply"
            ) from exc
        except (OSError, ValueError) as exc:
            raise RoutesConfigError(f"route {spec.name!r}: cannot read {schema}: {exc}") from exc
        spec = spec.model_copy(update={"output_schema": schema})
    if isinstance(schema, dict) or spec.review is not None or spec.risk is not DEFAULT_RISK:
        try:
            RouteContract.build(
                schema if isinstance(schema, dict) else None, spec.review, spec.risk
            )
        except (SchemaRefused, ValidationError, TierConflict) as exc:
            raise RoutesConfigError(f"route {spec.name!r}: {exc}") from exc
    _check_callback(spec)
    return spec


def _check_callback(spec: RouteSpec) -> None:
    """A callback URL a server could read two ways is refused here, not skipped at decision
    time; whether it is in the allow-list is the gateway's to say (it holds the list)."""
    url = (spec.review or {}).get("callback_url")
    if not isinstance(url, str):
        return
    try:
        place(url)
    except CallbackRefused as exc:
        raise RoutesConfigError(f"route {spec.name!r}: callback_url {url!r}: {exc}") from exc


def resolve(spec: RouteSpec, pools: list[EnginePoolSettings]) -> dict[str, Any]:
    """The database row for a spec: pool checked, `base` replaced by the pool's model name.

    Without a `target` the row has none: an existing route keeps the target it was switched to.
    """
    by_name = {p.name: p for p in pools}
    pool = by_name.get(spec.pool) if spec.pool else pools[0]
    if pool is None:
        raise RoutesConfigError(
            f"route {spec.name!r} names pool {spec.pool!r}; known pools: {sorted(by_name)}"
        )
    row: dict[str, Any] = {
        "name": spec.name,
        "pool": pool.name,
        "max_tokens_cap": spec.max_tokens_cap,
        "default_max_tokens": spec.default_max_tokens,
        "description": spec.description,
        "updated_at": now(),
        "output_schema": spec.output_schema,
        "review_policy": spec.review,
        "risk": spec.risk.value,
        "monitoring": spec.monitoring.row() if spec.monitoring is not None else None,
    }
    if spec.target is None:
        return row
    if spec.target in (BASE_TARGET, pool.base_model):
        row["target"] = pool.base_model
    elif "@" in spec.target:
        row["target"] = spec.target  # an adapter version, checked against the database
    else:
        raise RoutesConfigError(
            f"route {spec.name!r}: target {spec.target!r} is not served by pool {pool.name!r} "
            f"(use '{BASE_TARGET}', {pool.base_model!r} or an adapter version NAME@N)"
        )
    return row


async def sync_routes(
    session: AsyncSession, specs: list[RouteSpec], pools: list[EnginePoolSettings]
) -> list[str]:
    rows = [resolve(spec, pools) for spec in specs]
    base_models = {p.name: p.base_model for p in pools}
    for row in rows:
        target = row.get("target")
        if target is not None and target != base_models[row["pool"]]:
            version = await session.get(AdapterVersion, target)
            if version is None or version.pool != row["pool"]:
                raise RoutesConfigError(
                    f"route {row['name']!r}: no adapter version {target!r} in pool {row['pool']!r}"
                )
        existing = await session.get(Route, row["name"])
        if existing is None and target is None:
            row["target"] = base_models[row["pool"]]
        await repositories.upsert_route(session, row)
    return [row["name"] for row in rows]


DEFAULT_ROUTES = [RouteSpec(name="chat", description="The base model, for general chat.")]
