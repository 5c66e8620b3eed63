"""Adapter registration: the flow (on SQLite and PostgreSQL), the admin API, the CLI.

The fast tests use torch-free adapters for a tiny Llama (``tests.adapter_factory``) and read
their config with a stand-in for the peft worker; one fast test runs the real worker from a
gateway process and checks that process never imports torch. The ``slow`` tests build real
adapters with peft on the bundled SmolLM2 model and register them with the real worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import adapters.cli
import service.cli.app
from adapters.compat import PoolSpec
from adapters.errors import AdapterBaseModelMismatch, AdapterRegistrationConflict, AdapterRejected
from adapters.inspect import LoraSummary
from adapters.registry import (
    AdapterVersionRecord,
    NewVersion,
    RegistrationRequest,
    Registry,
    RegistryConfig,
    VersionConflict,
)
from adapters.registry_db import build_registry
from service.audit.actor import Actor
from service.auth import Role
from service.db.session import create_engine, session_factory
from service.settings import EnginePoolSettings, Settings
from tests.adapter_factory import TARGETS, peft_config, write_adapter, write_base_model
from tests.conftest import Harness, insert_key, make_settings, prepared_model, running_gateway
from tests.fake_engine import MODEL, FakeEngine

ROOT = Path(__file__).resolve().parents[2]
BASE_DIR_NAME = "tiny-base"
ADAPTERS = "/v1/admin/adapters"


async def json_inspector(adapter_dir: Path) -> LoraSummary:
    """Stands in for the peft worker: the same fields, read straight from the file."""
    return LoraSummary.from_config(json.loads((adapter_dir / "adapter_config.json").read_text()))


class CountingInspector:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, adapter_dir: Path) -> LoraSummary:
        self.calls += 1
        return await json_inspector(adapter_dir)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base_model(tmp_path_factory.mktemp("models") / BASE_DIR_NAME)


def pool_settings(model_dir: Path | None, url: str = "http://127.0.0.1:9", **kw: Any) -> Any:
    return EnginePoolSettings(
        name="default", base_model=MODEL, urls=[url], model_dir=model_dir, **kw
    )


@dataclass
class Env:
    settings: Settings
    registry: Registry

    @property
    def imports(self) -> Path:
        return self.settings.effective_import_root

    def adapter(self, relative: str, **kw: Any) -> str:
        write_adapter(self.imports / relative, **kw)
        return relative

    def stored(self) -> list[str]:
        store = self.settings.adapter_store_dir
        return sorted(p.name for p in store.iterdir()) if store.exists() else []

    async def register(self, name: str, path: str, **kw: Any) -> Any:
        return await self.registry.register(RegistrationRequest(name=name, path=path, **kw))


def settings_for(url: str, tmp_path: Path, model_dir: Path | None, **kw: Any) -> Settings:
    return make_settings(url, tmp_path, [], engines=[pool_settings(model_dir)], **kw)


@pytest.fixture
async def env(db_url: str, tmp_path: Path, base_model_dir: Path) -> AsyncIterator[Env]:
    settings = settings_for(db_url, tmp_path, base_model_dir)
    db = create_engine(db_url)
    try:
        yield Env(settings, build_registry(settings, session_factory(db), json_inspector))
    finally:
        await db.dispose()


# -- the flow, on SQLite and PostgreSQL -------------------------------------------------------


async def test_register_records_every_field_and_stores_read_only(env: Env) -> None:
    path = env.adapter("triage/run1")
    done = await env.register(
        "triage", path, changelog="first", data_snapshot_id="snap-1", created_by="k1"
    )
    v = done.version
    assert done.created
    assert (v.id, v.name, v.version, v.pool, v.base_model) == (
        "triage@1", "triage", 1, "default", MODEL,
    )  # fmt: skip
    assert (v.rank, v.alpha, v.target_modules) == (
        8,
        16.0,
        ("k_proj", "o_proj", "q_proj", "v_proj"),
    )
    assert (v.created_by, v.changelog, v.data_snapshot_id) == ("k1", "first", "snap-1")
    assert v.size_bytes == sum(p.stat().st_size for p in (env.imports / path).iterdir())
    assert v.store_path == env.settings.adapter_store_dir / v.sha256
    assert env.stored() == [v.sha256]
    stored = sorted(p.name for p in v.store_path.iterdir())
    assert stored == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for file in v.store_path.iterdir():
        assert not file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert await env.registry.get_version("triage@1") == v
    assert await env.registry.list_versions() == [v]


async def test_same_content_returns_the_same_version_new_content_the_next(env: Env) -> None:
    first = await env.register("triage", env.adapter("a", seed=1))
    shutil.copytree(env.imports / "a", env.imports / "a-copy")
    again = await env.register("triage", "a-copy", changelog="ignored")
    assert (again.created, again.version) == (False, first.version)

    second = await env.register("triage", env.adapter("b", seed=2))
    assert (second.created, second.version.id) == (True, "triage@2")
    other = await env.register("other", "a")
    assert (other.created, other.version.id) == (True, "other@1")
    # Content-addressed: the same files under two names are stored once.
    assert env.stored() == sorted({first.version.sha256, second.version.sha256})
    assert [v.id for v in await env.registry.list_versions()] == ["other@1", "triage@1", "triage@2"]
    assert [v.id for v in await env.registry.list_versions("triage")] == ["triage@1", "triage@2"]
    # Registered versions never change.
    assert await env.registry.get_version("triage@1") == first.version


async def test_concurrent_registrations_get_consecutive_versions(env: Env) -> None:
    paths = [env.adapter(f"c{i}", seed=i) for i in range(5)]
    done = await asyncio.gather(*(env.register("triage", p) for p in paths))
    assert sorted(d.version.version for d in done) == [1, 2, 3, 4, 5]
    assert len({d.version.sha256 for d in done}) == 5
    # The same content five times at once is one version.
    same = await asyncio.gather(*(env.register("dup", paths[0]) for _ in range(5)))
    assert {d.version.id for d in same} == {"dup@1"}
    assert sum(d.created for d in same) == 1
    assert len(await env.registry.list_versions("dup")) == 1


async def test_two_gateway_replicas_racing_on_one_name(env: Env, db_url: str) -> None:
    """Two registries (as two gateway processes) share only the database."""
    db = create_engine(db_url)
    try:
        other = build_registry(env.settings, session_factory(db), json_inspector)
        a, b = env.adapter("ra", seed=1), env.adapter("rb", seed=2)
        requests = [RegistrationRequest("triage", a), RegistrationRequest("triage", b)]
        done = await asyncio.gather(env.registry.register(requests[0]), other.register(requests[1]))
        assert sorted(d.version.version for d in done) == [1, 2]
        same = await asyncio.gather(
            env.registry.register(RegistrationRequest("same", a)),
            other.register(RegistrationRequest("same", a)),
        )
        assert {d.version.id for d in same} == {"same@1"}
    finally:
        await db.dispose()


async def test_a_refusal_changes_nothing(env: Env) -> None:
    env.adapter("ok")
    env.adapter("big-rank", r=32)
    with pytest.raises(AdapterRejected) as refused:
        await env.register("triage", "big-rank")
    assert refused.value.code == "adapter_rank_too_high"
    assert await env.registry.list_versions() == []
    assert env.stored() == []
    assert (await env.register("triage", "ok")).version.id == "triage@1"


# -- the flow without a database --------------------------------------------------------------


class FlakyVersions:
    """A repository whose first inserts collide, as when another replica took the number."""

    def __init__(self, collisions: int) -> None:
        self.collisions = collisions
        self.rows: list[AdapterVersionRecord] = []

    async def find_by_content(self, name: str, sha256: str) -> AdapterVersionRecord | None:
        return next((r for r in self.rows if (r.name, r.sha256) == (name, sha256)), None)

    async def insert_next(self, new: NewVersion, audit: Actor | None) -> AdapterVersionRecord:
        if self.collisions:
            self.collisions -= 1
            raise VersionConflict("uq_adapter_versions_name_version")
        version = 1 + max((r.version for r in self.rows if r.name == new.name), default=0)
        fields = {k: getattr(new, k) for k in NewVersion.__dataclass_fields__}
        row = AdapterVersionRecord(id=f"{new.name}@{version}", version=version, **fields)
        self.rows.append(row)
        return row

    async def get(self, version_id: str) -> AdapterVersionRecord | None:
        return next((r for r in self.rows if r.id == version_id), None)

    async def list_versions(self, name: str | None) -> list[AdapterVersionRecord]:
        return [r for r in self.rows if name in (None, r.name)]


def registry_on(versions: FlakyVersions, tmp_path: Path, model_dir: Path) -> Registry:
    config = RegistryConfig(
        import_root=tmp_path / "imports",
        store_dir=tmp_path / "store",
        max_bytes=10**8,
        pools=(PoolSpec("default", MODEL, 16, model_dir),),
    )
    return Registry(config, versions, json_inspector)


async def test_one_collision_is_retried(tmp_path: Path, base_model_dir: Path) -> None:
    versions = FlakyVersions(collisions=1)
    registry = registry_on(versions, tmp_path, base_model_dir)
    write_adapter(tmp_path / "imports" / "a")
    done = await registry.register(RegistrationRequest("triage", "a"))
    assert (done.created, done.version.id) == (True, "triage@1")


async def test_repeated_collisions_are_a_conflict(tmp_path: Path, base_model_dir: Path) -> None:
    registry = registry_on(FlakyVersions(collisions=2), tmp_path, base_model_dir)
    write_adapter(tmp_path / "imports" / "a")
    with pytest.raises(AdapterRegistrationConflict) as conflict:
        await registry.register(RegistrationRequest("triage", "a"))
    assert conflict.value.status == 409


async def test_known_content_is_not_inspected_again(tmp_path: Path, base_model_dir: Path) -> None:
    counting = CountingInspector()
    registry = registry_on(FlakyVersions(0), tmp_path, base_model_dir)
    registry.inspector = counting
    write_adapter(tmp_path / "imports" / "a")
    for _ in range(3):
        await registry.register(RegistrationRequest("triage", "a"))
    assert counting.calls == 1


# -- refusals through the API: each a clear 4xx, and nothing changed ---------------------------


@pytest.fixture
async def api(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, base_model_dir: Path
) -> AsyncIterator[Harness]:
    settings = make_settings(
        sqlite_url, tmp_path, [], engines=[pool_settings(base_model_dir, engine.url)]
    )
    async with running_gateway(settings, adapter_inspector=json_inspector) as harness:
        yield harness


def imports(h: Harness) -> Path:
    gw = h.app.state.gateway
    return Path(gw.settings.effective_import_root)


def store(h: Harness) -> Path:
    return Path(h.app.state.gateway.settings.adapter_store_dir)


def _missing_config(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (root / "x" / "adapter_config.json").unlink()
    return "x"


def _missing_weights(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (root / "x" / "adapter_model.safetensors").unlink()
    return "x"


def _pickle_weights(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (root / "x" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    return "x"


def _pickle_deep_inside(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (root / "x" / "checkpoint").mkdir()
    (root / "x" / "checkpoint" / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")
    return "x"


def _outside_root(root: Path, out: Path) -> str:
    return str(write_adapter(out / "x"))


def _symlink_escape(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (out / "secret.txt").write_text("not yours")
    (root / "x" / "notes.txt").symlink_to(out / "secret.txt")
    return "x"


def _symlinked_directory_escape(root: Path, out: Path) -> str:
    write_adapter(out / "x")
    root.mkdir(parents=True, exist_ok=True)
    (root / "x").symlink_to(out / "x")
    return "x"


def _dotdot(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    return "x/../x"


def _dotdot_out_of_root(root: Path, out: Path) -> str:
    write_adapter(out / "x")
    return f"../{out.name}/x"


def _url(root: Path, out: Path) -> str:
    return "https://huggingface.co/someone/some-lora"


def _hub_id(root: Path, out: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return "someone/some-lora"


def _truncated_weights(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    weights = root / "x" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return "x"


def _garbage_weights(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (root / "x" / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    return "x"


def _rank_too_high(root: Path, out: Path) -> str:
    write_adapter(root / "x", r=32)
    return "x"


def _other_base_model(root: Path, out: Path) -> str:
    # Made for another model: its config names it, and its shapes (hidden size 32) differ.
    write_adapter(root / "x", base_model="/models/other-model", hidden=32)
    return "x"


def _other_shapes_same_name(root: Path, out: Path) -> str:
    write_adapter(root / "x", base_model=BASE_DIR_NAME, hidden=32)
    return "x"


def _other_name_same_shapes(root: Path, out: Path) -> str:
    write_adapter(root / "x", base_model="HuggingFaceTB/SmolLM2-135M")
    return "x"


def _unknown_target(root: Path, out: Path) -> str:
    write_adapter(root / "x", targets=("q_proj", "qkv_proj"))
    return "x"


def _not_lora(root: Path, out: Path) -> str:
    write_adapter(root / "x", config={"peft_type": "IA3", "target_modules": ["k_proj"]})
    return "x"


def _name_too_long(root: Path, out: Path) -> str:
    return "0" * 300  # longer than a file name may be: OSError, once a 500


def _zero_lora_b(root: Path, out: Path) -> str:
    write_adapter(root / "x", zero="lora_B")  # what peft writes before training
    return "x"


def _zero_alpha(root: Path, out: Path) -> str:
    write_adapter(root / "x", config={**peft_config(8, "tiny-base", TARGETS), "lora_alpha": 0})
    return "x"


def _bad_config_json(root: Path, out: Path) -> str:
    write_adapter(root / "x")
    (root / "x" / "adapter_config.json").write_text("{not json")
    return "x"


REFUSALS: dict[str, tuple[Callable[[Path, Path], str], int, str]] = {
    "missing adapter_config.json": (_missing_config, 422, "adapter_config_missing"),
    "no safetensors weights": (_missing_weights, 422, "adapter_weights_missing"),
    ".bin weights": (_pickle_weights, 422, "adapter_pickle_weights"),
    "pickle in a subdirectory": (_pickle_deep_inside, 422, "adapter_pickle_weights"),
    "path outside the import root": (_outside_root, 400, "adapter_path_outside_root"),
    "symlink escape": (_symlink_escape, 400, "adapter_symlink_escape"),
    "symlinked directory": (_symlinked_directory_escape, 400, "adapter_path_outside_root"),
    "'..' inside": (_dotdot, 400, "adapter_path_traversal"),
    "'..' out of the root": (_dotdot_out_of_root, 400, "adapter_path_traversal"),
    "a URL": (_url, 400, "adapter_path_not_local"),
    "a hub id": (_hub_id, 400, "adapter_path_not_found"),
    "truncated safetensors": (_truncated_weights, 422, "adapter_corrupt_weights"),
    "garbage safetensors": (_garbage_weights, 422, "adapter_corrupt_weights"),
    "rank above the pool's maximum": (_rank_too_high, 422, "adapter_rank_too_high"),
    "a different base model": (_other_base_model, 422, "adapter_base_model_mismatch"),
    "shapes of another model": (_other_shapes_same_name, 422, "adapter_base_model_mismatch"),
    "named for another model": (_other_name_same_shapes, 422, "adapter_base_model_mismatch"),
    "unknown target module": (_unknown_target, 422, "adapter_unknown_target_modules"),
    "not LoRA": (_not_lora, 422, "adapter_not_lora"),
    "config not JSON": (_bad_config_json, 422, "adapter_config_invalid"),
    "all-zero lora_B": (_zero_lora_b, 422, "adapter_changes_nothing"),
    "a name too long for the filesystem": (_name_too_long, 400, "adapter_path_not_found"),
    "lora_alpha 0": (_zero_alpha, 422, "adapter_changes_nothing"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_with_a_clear_4xx_and_nothing_changed(
    api: Harness, tmp_path: Path, case: str
) -> None:
    build, status, code = REFUSALS[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    path = build(imports(api), outside)
    response = await api.client.post(
        ADAPTERS, json={"name": "triage", "path": path}, headers=api.auth(Role.SRE)
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert error["message"]
    # The server's own directories stay out of the message (the caller's path may be in it).
    for server_path in (imports(api), store(api), tmp_path / "models"):
        assert str(server_path) not in error["message"].replace(path, "")
    listing = await api.client.get(ADAPTERS, headers=api.auth(Role.SRE))
    assert listing.json()["data"] == []
    assert not store(api).exists() or list(store(api).iterdir()) == []


async def test_too_large_is_refused(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, base_model_dir: Path
) -> None:
    settings = make_settings(
        sqlite_url,
        tmp_path,
        [],
        engines=[pool_settings(base_model_dir, engine.url)],
        max_adapter_bytes=10_000,
    )
    async with running_gateway(settings, adapter_inspector=json_inspector) as h:
        write_adapter(imports(h) / "x")
        response = await h.client.post(
            ADAPTERS, json={"name": "t", "path": "x"}, headers=h.auth(Role.SRE)
        )
        assert (response.status_code, response.json()["error"]["code"]) == (
            422, "adapter_too_large",
        )  # fmt: skip


async def test_a_pool_without_model_dir_says_what_to_configure(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    settings = make_settings(sqlite_url, tmp_path, [], engines=[pool_settings(None, engine.url)])
    async with running_gateway(settings, adapter_inspector=json_inspector) as h:
        write_adapter(imports(h) / "x")
        response = await h.client.post(
            ADAPTERS, json={"name": "t", "path": "x"}, headers=h.auth(Role.SRE)
        )
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (422, "adapter_pool_not_configured")
        assert "model_dir" in error["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "a@1", "path": "x"}, "invalid_request"),
        ({"name": "", "path": "x"}, "invalid_request"),
        ({"name": "a", "path": "x", "pool": "nope"}, "adapter_pool_unknown"),
        ({"name": "a", "path": "x", "extra": 1}, "invalid_request"),
    ],
)
async def test_invalid_requests(api: Harness, body: dict[str, Any], code: str) -> None:
    write_adapter(imports(api) / "x")
    response = await api.client.post(ADAPTERS, json=body, headers=api.auth(Role.SRE))
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)


# -- the API ----------------------------------------------------------------------------------


async def test_register_get_and_list_through_the_api(api: Harness) -> None:
    write_adapter(imports(api) / "runs" / "one", seed=1)
    write_adapter(imports(api) / "runs" / "two", seed=2)
    body = {"name": "triage", "path": "runs/one", "changelog": "first", "data_snapshot_id": "s1"}
    created = await api.client.post(ADAPTERS, json=body, headers=api.auth(Role.SRE))
    assert created.status_code == 201, created.text
    v1 = created.json()
    assert v1["id"] == "triage@1" and v1["created"] is True
    assert v1["created_by"] == api.keys[Role.SRE].split("-")[1]
    assert (v1["rank"], v1["alpha"], v1["changelog"], v1["data_snapshot_id"]) == (
        8, 16.0, "first", "s1",
    )  # fmt: skip
    assert "store_path" not in v1

    again = await api.client.post(ADAPTERS, json=body, headers=api.auth(Role.ADMIN))
    assert again.status_code == 200
    assert again.json() == {**v1, "created": False}

    absolute = str(imports(api) / "runs" / "two")
    second = await api.client.post(
        ADAPTERS, json={"name": "triage", "path": absolute}, headers=api.auth(Role.ADMIN)
    )
    assert (second.status_code, second.json()["id"]) == (201, "triage@2")

    one = await api.client.get(f"{ADAPTERS}/triage@1", headers=api.auth(Role.SRE))
    assert one.json() == {k: v for k, v in v1.items() if k != "created"}
    listing = await api.client.get(ADAPTERS, params={"name": "triage"}, headers=api.auth(Role.SRE))
    assert [v["id"] for v in listing.json()["data"]] == ["triage@1", "triage@2"]
    none = await api.client.get(ADAPTERS, params={"name": "nope"}, headers=api.auth(Role.SRE))
    assert none.json() == {"object": "list", "data": []}
    missing = await api.client.get(f"{ADAPTERS}/triage@9", headers=api.auth(Role.SRE))
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "adapter_not_found")


@pytest.mark.parametrize("role", [Role.APP, Role.REVIEWER])
async def test_only_sre_and_admin_may_use_the_adapter_api(api: Harness, role: Role) -> None:
    write_adapter(imports(api) / "x")
    body = {"name": "triage", "path": "x"}
    for method, url, payload in [
        ("POST", ADAPTERS, body),
        ("GET", ADAPTERS, None),
        ("GET", f"{ADAPTERS}/triage@1", None),
    ]:
        response = await api.client.request(method, url, json=payload, headers=api.auth(role))
        assert response.status_code == 403, (method, url)
        assert response.json()["error"]["type"] == "permission_error"
    anonymous = await api.client.post(ADAPTERS, json=body)
    assert anonymous.status_code == 401
    assert (await api.client.get(ADAPTERS, headers=api.auth(Role.SRE))).json()["data"] == []


async def test_openapi_documents_the_adapter_api(api: Harness) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    post = spec["paths"][ADAPTERS]["post"]
    assert {"201", "200", "403", "422"} <= set(post["responses"])
    fields = spec["components"]["schemas"]["RegisterAdapterIn"]["properties"]
    assert all(fields[f].get("description") for f in ("name", "path", "pool", "changelog"))


# -- the gateway process stays free of torch ---------------------------------------------------

CHILD = """
import asyncio, json, sys
import httpx
from service.main import create_app
from service.settings import Settings

async def main():
    app = create_app(Settings(_env_file=None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            r = await client.post(
                "/v1/admin/adapters", json={"name": "triage", "path": "x"},
                headers={"Authorization": "Bearer " + sys.argv[1]}, timeout=300,
            )
    heavy = sorted(m for m in ("torch", "peft", "transformers") if m in sys.modules)
    print(json.dumps({"status": r.status_code, "body": r.json(), "imported": heavy}))

asyncio.run(main())
"""


@pytest.mark.heavy
async def test_registration_runs_peft_in_a_worker_and_the_gateway_never_imports_torch(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, base_model_dir: Path
) -> None:
    pytest.importorskip("peft")
    sre = await insert_key(sqlite_url, Role.SRE)
    write_adapter(tmp_path / "imports" / "x")
    pools = [pool_settings(base_model_dir, engine.url).model_dump(mode="json")]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LORAGATE_")}
    child_env |= {
        "LORAGATE_DATABASE_URL": sqlite_url,
        "LORAGATE_DATA_DIR": str(tmp_path),
        "LORAGATE_ENGINES": json.dumps(pools),
        "PYTHONPATH": str(ROOT),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, sre, cwd=tmp_path, env=child_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["status"] == 201, result
    assert result["body"]["id"] == "triage@1"
    assert result["body"]["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert result["imported"] == []


# -- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_model_dir: Path) -> Iterator[Path]:
    for name in list(os.environ):
        if name.upper().startswith("LORAGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    pools = [pool_settings(base_model_dir).model_dump(mode="json")]
    monkeypatch.setenv("LORAGATE_ENGINES", json.dumps(pools))
    assert runner.invoke(service.cli.app.app, ["db", "upgrade"]).exit_code == 0
    yield tmp_path


def cli(*args: str) -> Any:
    return runner.invoke(service.cli.app.app, list(args))


@pytest.mark.parametrize("command", [["adapters"], ["adapters", "register"], ["adapters", "list"]])
def test_adapter_commands_have_help(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_cli_registers_and_lists(cli_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def with_json_inspector(settings: Settings, sessions: Any, inspector: Any = None) -> Registry:
        return build_registry(settings, sessions, json_inspector)

    monkeypatch.setattr(adapters.cli, "build_registry", with_json_inspector)
    write_adapter(cli_db / "imports" / "one")
    args = ["adapters", "register", "triage", "imports/one", "--changelog", "first"]
    result = cli(*args, "--data-snapshot", "snap-9")
    assert result.exit_code == 0, result.output
    assert "registered triage@1" in result.output
    assert "rank:    8" in result.output
    again = cli(*args)
    assert "already registered as triage@1" in again.output

    (cli_db / "imports" / "bad").mkdir()
    refused = cli("adapters", "register", "triage", "imports/bad")
    assert refused.exit_code == 1
    assert refused.output.startswith("error: ") and "adapter_config.json" in refused.output
    # The CLI's user may register any directory they can read, typed relative to the current
    # directory, but no file in it may point outside it.
    write_adapter(cli_db / "elsewhere" / "two", r=4)
    monkeypatch.chdir(cli_db / "elsewhere")
    outside = cli("adapters", "register", "triage", "two")
    assert outside.exit_code == 0, outside.output
    assert "registered triage@2" in outside.output and "rank:    4" in outside.output
    (cli_db / "elsewhere" / "three").mkdir()
    (cli_db / "elsewhere" / "three" / "adapter_config.json").symlink_to(
        cli_db / "imports" / "one" / "adapter_config.json"
    )
    escaping = cli("adapters", "register", "triage", "three")
    assert escaping.exit_code == 1 and "link to outside" in escaping.output

    listing = cli("adapters", "list")
    assert listing.exit_code == 0
    assert "triage@1" in listing.output and "by=cli" in listing.output and "first" in listing.output
    assert "data=snap-9" in listing.output


# -- slow: real peft adapters on the real model, read by the real worker ----------------------


@dataclass(frozen=True)
class PeftAdapters:
    model_dir: Path
    out: Path


@pytest.fixture(scope="session")
def peft_adapters(tmp_path_factory: pytest.TempPathFactory) -> PeftAdapters:
    pytest.importorskip("peft")
    model_dir = prepared_model()
    out = tmp_path_factory.mktemp("peft")
    done = subprocess.run(
        [sys.executable, "-m", "tests.make_peft_adapters", str(out), str(model_dir)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return PeftAdapters(model_dir, out)


@pytest.mark.slow
async def test_real_peft_adapters_with_the_real_worker(
    peft_adapters: PeftAdapters, sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    pool = EnginePoolSettings(
        name="default",
        base_model="smollm2-135m-instruct",
        urls=[engine.url],
        max_lora_rank=16,
        model_dir=peft_adapters.model_dir,
    )
    settings = make_settings(sqlite_url, tmp_path, [], engines=[pool])
    shutil.copytree(peft_adapters.out, settings.effective_import_root)
    async with running_gateway(settings) as h:

        async def post(name: str, path: str) -> Any:
            body = {"name": name, "path": path}
            return await h.client.post(ADAPTERS, json=body, headers=h.auth(Role.SRE), timeout=300)

        good, rank32, other = await asyncio.gather(
            post("triage", "good"), post("triage", "rank32"), post("triage", "other_base")
        )
        assert good.status_code == 201, good.text
        assert (good.json()["rank"], good.json()["alpha"]) == (8, 16.0)
        assert good.json()["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
        assert (rank32.status_code, rank32.json()["error"]["code"]) == (
            422, "adapter_rank_too_high",
        )  # fmt: skip
        assert (other.status_code, other.json()["error"]["code"]) == (
            422, "adapter_base_model_mismatch",
        )  # fmt: skip
        assert (await post("triage", "good")).status_code == 200
        v2 = await post("triage", "good_v2")
        assert (v2.status_code, v2.json()["id"]) == (201, "triage@2")
        assert len(list(settings.adapter_store_dir.iterdir())) == 2


@pytest.mark.slow
async def test_other_base_shapes_alone_are_refused(peft_adapters: PeftAdapters) -> None:
    """The tiny model's adapter, renamed to claim the right base model, is still refused."""
    from adapters.compat import BaseModel, check_adapter
    from adapters.tensors import model_weight_shapes
    from adapters.validation import read_adapter

    contents = read_adapter(peft_adapters.out / "other_base")
    config = dict(contents.config, base_model_name_or_path=str(peft_adapters.model_dir))
    base = BaseModel(
        frozenset({"smollm2-135m-instruct"}), model_weight_shapes(peft_adapters.model_dir)
    )
    with pytest.raises(AdapterBaseModelMismatch):
        check_adapter(LoraSummary.from_config(config), contents.tensors, base, 16)


def test_the_managed_pool_validates_against_the_prepared_model(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    (pool,) = settings.engine_pools()
    assert pool.model_dir == tmp_path / "models" / "smollm2-135m-instruct"
    custom = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        managed_engine={"model_dir": tmp_path / "mine"},
    )
    assert custom.engine_pools()[0].model_dir == tmp_path / "mine"
