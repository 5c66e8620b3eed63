"""Routes declared in a YAML file and synced into the database.

```yaml
routes:
  - name: chat                 # what clients send as `model`
    pool: default              # engine pool (default: the first pool)
    target: base               # `base` = the pool's base model
    max_tokens_cap: 512        # optional, else the global cap
    default_max_tokens: 128    # optional, used when the client sends none
    description: General chat
```
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import repositories
from service.settings import EnginePoolSettings

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
BASE_TARGET = "base"


class RouteSpec(BaseModel):
    name: str
    pool: str | None = None
    target: str = BASE_TARGET
    max_tokens_cap: int | None = Field(default=None, ge=1)
    default_max_tokens: int | None = Field(default=None, ge=1)
    description: str = ""

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
    return parsed.routes


def resolve(spec: RouteSpec, pools: list[EnginePoolSettings]) -> dict[str, Any]:
    """The database row for a spec: pool checked, `base` replaced by the pool's model name."""
    by_name = {p.name: p for p in pools}
    pool = by_name.get(spec.pool) if spec.pool else pools[0]
    if pool is None:
        raise RoutesConfigError(
            f"route {spec.name!r} names pool {spec.pool!r}; known pools: {sorted(by_name)}"
        )
    target = pool.base_model if spec.target in (BASE_TARGET, pool.base_model) else None
    if target is None:
        raise RoutesConfigError(
            f"route {spec.name!r}: target {spec.target!r} is not served by pool {pool.name!r} "
            f"(only '{BASE_TARGET}' / {pool.base_model!r} until adapter versions exist)"
        )
    return {
        "name": spec.name,
        "pool": pool.name,
        "target": target,
        "max_tokens_cap": spec.max_tokens_cap,
        "default_max_tokens": spec.default_max_tokens,
        "description": spec.description,
        "updated_at": datetime.now(UTC),
    }


async def sync_routes(
    session: AsyncSession, specs: list[RouteSpec], pools: list[EnginePoolSettings]
) -> list[str]:
    rows = [resolve(spec, pools) for spec in specs]
    for row in rows:
        await repositories.upsert_route(session, row)
    return [row["name"] for row in rows]


DEFAULT_ROUTES = [RouteSpec(name="chat", description="The base model, for general chat.")]
