"""The Helm chart, rendered offline for the default values and every example under
helm/loragate/ci/: strict lint, every manifest valid against Kubernetes' schemas, every pod
hardened, the configuration accepted by the gateway's own settings, hooks in order, the values
schema refusing bad values."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
from typer.testing import CliRunner

from service.cli.app import app as cli
from service.routes.config import load_routes_file, resolve
from service.settings import Settings
from tests.deploy.chart import (
    CHART_DIR,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    Doc,
    EnvFromCluster,
    chart,
    combinations,
    component,
    container,
    containers,
    environment,
    gateway,
    hook_of,
    ident,
    named,
    notes,
    of_kind,
    pod_spec,
    render,
    workloads,
)

COMBINATIONS = combinations()
FULLNAME = f"{RELEASE}-loragate"
# The existingSecret objects the existing-secrets example names, as an operator would make them.
EXISTING = EnvFromCluster(
    {
        "loragate-db": {"url": "postgresql+asyncpg://loragate:pw@db.internal:5432/loragate"},
        "loragate-admin": {"key": "lg-0123456789ab-" + "k" * 43},
        "loragate-otlp": {"otlp-headers": "authorization=Bearer x"},
    }
)

# The parts of the prometheus-operator CRDs the chart writes (kubernetes-validate knows only
# built-in kinds): required fields, types, and nothing unknown where the chart writes.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object"},
                    "namespaceSelector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                "authorization": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["type", "credentials"],
                                    "properties": {
                                        "type": {"const": "Bearer"},
                                        "credentials": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "required": ["name", "key"],
                                            "properties": {
                                                "name": {"type": "string", "minLength": 1},
                                                "key": {"type": "string", "minLength": 1},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


@pytest.fixture(scope="module", params=sorted(COMBINATIONS))
def combination(request: pytest.FixtureRequest) -> tuple[str, Doc, list[Doc]]:
    name = request.param
    return name, COMBINATIONS[name], render(COMBINATIONS[name])


def test_every_example_is_a_real_combination() -> None:
    """The issue's combinations: default (bundled database, CPU pool, monitoring off), a GPU
    pool, a CPU pool, two pools, existing secrets, HPA on, monitoring on."""
    assert {"default", "gpu", "cpu", "two-pools", "existing-secrets", "hpa"} <= set(COMBINATIONS)
    default = render()
    assert not of_kind(default, "ServiceMonitor") and not of_kind(default, "PrometheusRule")
    assert of_kind(render(COMBINATIONS["gpu"]), "ServiceMonitor")


def test_lint_is_clean_in_strict_mode(combination: tuple[str, Doc, list[Doc]]) -> None:
    _, values, _ = combination
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not problems and not report["errors"], report


def test_every_manifest_is_valid_kubernetes(combination: tuple[str, Doc, list[Doc]]) -> None:
    _, _, docs = combination
    for doc in docs:
        assert doc["metadata"]["name"]
        assert len(doc["metadata"]["name"]) <= 63, ident(doc)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except SchemaNotFoundError:
            assert doc["kind"] in CRD_SCHEMAS, f"no schema for {ident(doc)}"
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        except ValidationError as exc:
            pytest.fail(f"{ident(doc)}: {exc.message} at {list(exc.path)}")


def test_every_reference_resolves(combination: tuple[str, Doc, list[Doc]]) -> None:
    """What the API server does not check: mounts name volumes of their pod, env and volumes
    name objects the chart renders (or the operator's existing ones), probes and Services name
    ports that exist, and every selector selects pods the chart makes."""
    name, _, docs = combination
    rendered = {ident(d) for d in docs}
    existing = {f"Secret/{s}" for s in EXISTING.secrets} | {
        "PersistentVolumeClaim/loragate-adapters",
        "PersistentVolumeClaim/models",
        "ServiceAccount/loragate",
        "ServiceAccount/default",
    }
    templates = [d["spec"]["template"] for d in workloads(docs)]
    for doc in workloads(docs):
        spec = pod_spec(doc)
        volumes = {v["name"] for v in spec.get("volumes") or []}
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates") or []}
        for c in containers(spec):
            for mount in c.get("volumeMounts") or []:
                assert mount["name"] in volumes | claims, f"{ident(doc)} {c['name']} {mount}"
            ports = {p["name"] for p in c.get("ports") or [] if "name" in p}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                assert port is None or port in ports, f"{ident(doc)} {c['name']} {probe}"
        for ref in _referenced(spec):
            assert ref in rendered | existing, f"{name}: {ident(doc)} needs {ref}"
    for doc in docs:
        selector = None
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            targets = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
            assert targets, ident(doc)
            for port in doc["spec"]["ports"]:
                names = {
                    p.get("name")
                    for t in targets
                    for c in t["spec"]["containers"]
                    for p in c.get("ports") or []
                }
                assert port["targetPort"] in names, ident(doc)
        elif doc["kind"] in {"PodDisruptionBudget", "ServiceMonitor"}:
            selector = doc["spec"]["selector"]["matchLabels"]
            pool = [t["metadata"]["labels"] for t in templates]
            if doc["kind"] == "ServiceMonitor":
                pool = [s["metadata"]["labels"] for s in of_kind(docs, "Service")]
            assert any(selector.items() <= labels.items() for labels in pool), ident(doc)
        elif doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            assert f"{target['kind']}/{target['name']}" in rendered
        elif doc["kind"] in {"Deployment", "StatefulSet"}:
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
            if doc["kind"] == "StatefulSet":
                assert f"Service/{doc['spec']['serviceName']}" in rendered, ident(doc)


def test_rendered_kinds() -> None:
    """What a default install creates, and what the options add."""
    kinds = {d["kind"] for d in render()}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    }
    everything = {d["kind"] for values in COMBINATIONS.values() for d in render(values)}
    options = {"HorizontalPodAutoscaler", "Ingress", "ServiceMonitor"}
    # A PrometheusRule (and the dashboards ConfigMap) once monitoring/ holds rules (and boards).
    assert options <= everything - kinds <= options | {"PrometheusRule"}


def test_every_pod_is_non_root_with_a_read_only_root(
    combination: tuple[str, Doc, list[Doc]],
) -> None:
    _, _, docs = combination
    assert workloads(docs)
    for doc in workloads(docs):
        spec = pod_spec(doc)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, ident(doc)
        assert pod["runAsUser"] > 0 and pod["runAsGroup"] > 0, ident(doc)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, ident(doc)
        assert spec["automountServiceAccountToken"] is False, ident(doc)
        assert spec["enableServiceLinks"] is False, ident(doc)
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), ident(doc)
        for c in containers(spec):
            sc = c["securityContext"]
            where = f"{ident(doc)} {c['name']}"
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "runAsUser" not in sc or sc["runAsUser"] > 0, where
            # A read-only root needs somewhere to write: /tmp is a volume in every container
            # that runs Python or vLLM.
            mounts = {m["mountPath"] for m in c.get("volumeMounts") or []}
            if c["name"] != "copy-model-default" and not c["name"].startswith("copy-model-"):
                assert "/tmp" in mounts or c["name"] == "wait-for-database", where


def test_gateway_probes_spool_and_drain() -> None:
    docs = render()
    deployment = gateway(docs)
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(deployment)
    gw = container(spec, "gateway")
    assert gw["args"] == ["serve"]
    assert gw["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The data dir (record spool) is a per-pod volume, and termination waits for the preStop
    # pause, the requests in flight and the spool's drain.
    mounts = {m["mountPath"]: m for m in gw["volumeMounts"]}
    data = next(v for v in spec["volumes"] if v["name"] == mounts["/var/lib/loragate"]["name"])
    assert "emptyDir" in data
    pause = int(gw["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = spec["terminationGracePeriodSeconds"]
    fields = Settings.model_fields
    first_byte_s = fields["first_byte_timeout_s"].default
    drain_s = fields["record_drain_timeout_s"].default if "record_drain_timeout_s" in fields else 0
    assert grace >= pause + first_byte_s + drain_s
    # The emptyDir holds a full spool and the model copies without the pod being evicted.
    spool_max = fields["spool_max_bytes"].default if "spool_max_bytes" in fields else 0
    assert _bytes(data["emptyDir"]["sizeLimit"]) >= spool_max + 2**30
    assert environment(docs, spec, "gateway")["LORAGATE_DATA_DIR"] == "/var/lib/loragate"


def test_gateway_configuration_is_accepted_by_the_gateway(
    combination: tuple[str, Doc, list[Doc]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The gateway container's environment, as the kubelet would build it, read by the
    gateway's own Settings: every pool with one URL per StatefulSet replica (by its stable
    name), a model copy for adapter checks where there is one, the database URL, the routes."""
    name, _, docs = combination
    spec = pod_spec(gateway(docs))
    env = environment(docs, spec, "gateway", EXISTING)
    known = {f"LORAGATE_{field.upper()}" for field in Settings.model_fields}
    helpers = {"LORAGATE_POSTGRES_PASSWORD"}
    assert {k for k in env if k.startswith("LORAGATE_")} <= known | helpers, name
    for key in list(os.environ):
        if key.startswith("LORAGATE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()

    assert settings.effective_database_url.startswith("postgresql+asyncpg://")
    assert "$(" not in settings.effective_database_url
    assert not settings.uses_managed_engine
    sets = {d["metadata"]["name"]: d for d in of_kind(docs, "StatefulSet")}
    mounts = {m["mountPath"] for m in container(spec, "gateway")["volumeMounts"]}
    for pool in settings.engines:
        statefulset = sets[f"{FULLNAME}-engine-{pool.name}"]
        replicas = statefulset["spec"]["replicas"]
        service = statefulset["spec"]["serviceName"]
        assert pool.urls == [
            f"http://{service}-{i}.{service}.{NAMESPACE}.svc:8000" for i in range(replicas)
        ]
        vllm = container(pod_spec(statefulset), "vllm")
        assert f"--served-model-name={pool.base_model}" in vllm["args"]
        assert f"--max-lora-rank={pool.max_lora_rank}" in vllm["args"]
        # The gateway sends evaluation calls at a lower priority: the engine must accept them.
        assert pool.priority_scheduling and "--scheduling-policy=priority" in vllm["args"]
        if pool.model_dir is not None:
            # The model is on a volume mounted here, or copied by an init container.
            under_mount = any(str(pool.model_dir).startswith(m + "/") for m in mounts)
            copied = any(c["name"] == f"copy-model-{pool.name}" for c in containers(spec))
            assert under_mount or copied, pool
    engines = [s for s in sets.values() if component(s) == "engine"]
    assert {p.name for p in settings.engines} == {
        s["metadata"]["labels"]["loragate.io/pool"] for s in engines
    }

    routes = env.get("LORAGATE_ROUTES_FILE")
    if routes:
        config = named(docs, "ConfigMap", f"{FULLNAME}-config")
        file = tmp_path / "routes.yaml"
        file.write_text(config["data"]["routes.yaml"])
        for spec_ in load_routes_file(file):
            resolve(spec_, settings.engine_pools())  # raises on an unknown pool


def test_adapters_are_written_by_gateways_and_read_by_every_engine_at_the_same_path(
    combination: tuple[str, Doc, list[Doc]],
) -> None:
    _, _, docs = combination
    store = str(Settings(data_dir=Path("/var/lib/loragate")).adapter_store_dir)
    spec = pod_spec(gateway(docs))
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    gw_mount = next(
        m for m in container(spec, "gateway")["volumeMounts"] if m["mountPath"] == store
    )
    assert not gw_mount.get("readOnly")
    claim = claims[gw_mount["name"]]
    engines = [d for d in of_kind(docs, "StatefulSet") if component(d) == "engine"]
    assert engines
    for engine in engines:
        espec = pod_spec(engine)
        mount = next(m for m in container(espec, "vllm")["volumeMounts"] if m["mountPath"] == store)
        assert mount["readOnly"] is True and mount.get("subPath") == gw_mount.get("subPath")
        volume = next(v for v in espec["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_engine_runs_vllm_with_runtime_lora_and_a_generating_readiness_probe() -> None:
    docs = render(COMBINATIONS["gpu"])
    engine = named(docs, "StatefulSet", f"{FULLNAME}-engine-llama")
    assert engine["spec"]["replicas"] == 3
    spec = pod_spec(engine)
    vllm = container(spec, "vllm")
    args = vllm["args"]
    assert "--enable-lora" in args
    assert "--max-loras=8" in args and "--max-lora-rank=64" in args
    assert "--tensor-parallel-size=2" in args
    assert "--model=/models/llama/Llama-3.1-8B-Instruct" in args
    structured = next(a for a in args if a.startswith("--structured-outputs-config="))
    assert json.loads(structured.split("=", 1)[1]) == {
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    probe = vllm["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["python3", "-c"] and "max_tokens" in probe[2]
    assert probe[3:] == ["llama-3.1-8b-instruct", "http://127.0.0.1:8000/v1/completions"]
    compile(probe[2], "<readiness probe>", "exec")
    # The model volume is read-only in the engine and in the gateway, at the same path.
    gw_mounts = {
        m["mountPath"]: m for m in container(pod_spec(gateway(docs)), "gateway")["volumeMounts"]
    }
    assert gw_mounts["/models/llama"]["readOnly"] is True


def test_cpu_pool_defaults_and_model_copy() -> None:
    docs = render(COMBINATIONS["two-pools"])
    small = container(pod_spec(named(docs, "StatefulSet", f"{FULLNAME}-engine-small")), "vllm")
    assert "nvidia.com/gpu" not in json.dumps(small["resources"])
    assert {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"} in small["env"]
    assert "--dtype=float32" in small["args"]
    large = container(pod_spec(named(docs, "StatefulSet", f"{FULLNAME}-engine-large")), "vllm")
    assert large["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not any(a.startswith("--tensor-parallel-size") for a in large["args"])
    copy_init = container(pod_spec(gateway(docs)), "copy-model-small")
    assert copy_init["image"] == small["image"]
    assert copy_init["args"][1:] == [
        "/var/lib/loragate/models/small",
        "/opt/loragate/models/smollm2-135m-instruct",
    ]


def test_a_pool_can_override_any_default_even_with_zero_or_false() -> None:
    values = {
        "engine": {
            "pools": [
                {
                    "name": "p",
                    "accelerator": "gpu",
                    "replicas": 0,
                    "servedModelName": "m",
                    "model": {"path": "org/model"},
                    "pdb": {"enabled": False},
                    "tolerations": [],
                }
            ]
        }
    }
    docs = render(values)
    engine = named(docs, "StatefulSet", f"{FULLNAME}-engine-p")
    assert engine["spec"]["replicas"] == 0
    assert "tolerations" not in pod_spec(engine)
    assert not [
        d for d in of_kind(docs, "PodDisruptionBudget") if "engine" in d["metadata"]["name"]
    ]


def test_gateway_scaling_pdb_and_hpa() -> None:
    docs = render(COMBINATIONS["hpa"])
    assert "replicas" not in gateway(docs)["spec"]
    hpa = named(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-gateway",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    pdb = named(render(), "PodDisruptionBudget", f"{FULLNAME}-gateway")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_ingress_with_tls() -> None:
    ingress = named(render(COMBINATIONS["gpu"]), "Ingress", FULLNAME)
    assert ingress["spec"]["tls"] == [
        {"secretName": "llm-example-com-tls", "hosts": ["llm.example.com"]}
    ]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend == {"service": {"name": FULLNAME, "port": {"name": "http"}}}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[unit]


# --- secrets ------------------------------------------------------------------------------


def test_secrets_are_generated_when_not_given() -> None:
    first, second = (
        render({"adminKey": {"bootstrap": True}}),
        render({"adminKey": {"bootstrap": True}}),
    )
    secret = named(first, "Secret", f"{FULLNAME}-database")
    password = environment(first, pod_spec(gateway(first)), "gateway")["LORAGATE_POSTGRES_PASSWORD"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    key = environment(first, pod_spec(of_kind(first, "Job")[0]), "migrate")[
        "LORAGATE_BOOTSTRAP_ADMIN_KEY"
    ]
    # The gateway's own key format: lg-<12 hex>-<secret>.
    assert re.fullmatch(r"lg-[0-9a-f]{12}-[A-Za-z0-9]{43}", key)
    again = environment(second, pod_spec(of_kind(second, "Job")[0]), "migrate")
    assert again["LORAGATE_BOOTSTRAP_ADMIN_KEY"] != key  # random each time offline ...
    # ... and read back from the live Secret at upgrades (lookup), which needs a cluster.
    template = (CHART_DIR / "templates" / "secrets.yaml").read_text()
    assert template.count('include "loragate.keptValue"') == 2
    assert hook_of(secret) is not None


def test_existing_secrets_are_used_and_none_rendered() -> None:
    docs = render(COMBINATIONS["existing-secrets"])
    assert not of_kind(docs, "Secret")
    assert not of_kind(docs, "PersistentVolumeClaim") and not of_kind(docs, "ServiceAccount")
    spec = pod_spec(gateway(docs))
    env = {e["name"]: e for e in container(spec, "gateway")["env"]}
    assert env["LORAGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "loragate-db",
        "key": "url",
    }
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]["name"] == "loragate-otlp"
    assert spec["serviceAccountName"] == "loragate"
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["loragate-adapters"]


def test_inline_credentials_go_to_secrets_never_to_pod_specs() -> None:
    values = COMBINATIONS["gpu"]
    docs = render(values)
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        assert "secret@db.internal" not in text and "abc123" not in text, ident(doc)
    env = environment(docs, pod_spec(gateway(docs)), "gateway")
    assert env["LORAGATE_DATABASE_URL"] == values["database"]["url"]
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer abc123"


# --- migrations and hook order ------------------------------------------------------------


def _hook_job(docs: list[Doc]) -> Doc:
    [job] = of_kind(docs, "Job")
    return job


def _referenced(spec: Doc) -> set[str]:
    """kind/name of every object a pod needs to start."""
    refs = {f"ServiceAccount/{spec.get('serviceAccountName', 'default')}"}
    for c in containers(spec):
        for entry in c.get("env") or []:
            source = entry.get("valueFrom") or {}
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if key in source:
                    refs.add(f"{kind}/{source[key]['name']}")
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            refs.add(f"Secret/{volume['secret']['secretName']}")
        if "configMap" in volume:
            refs.add(f"ConfigMap/{volume['configMap']['name']}")
        if "persistentVolumeClaim" in volume:
            refs.add(f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}")
    return refs


@pytest.mark.parametrize("name", ["gpu", "two-pools", "existing-secrets", "hpa"])
def test_migrations_hook_runs_before_the_release_and_after_what_it_needs(name: str) -> None:
    docs = render(COMBINATIONS[name])
    job = _hook_job(docs)
    hook = hook_of(job)
    assert hook is not None and {"pre-install", "pre-upgrade"} <= hook[0]
    events, weight = hook
    rendered = {ident(d): d for d in docs}
    for ref in _referenced(pod_spec(job)):
        if ref not in rendered:
            continue  # made by the operator (existingSecret) or the namespace's default
        needed = hook_of(rendered[ref])
        assert needed is not None, f"{ref} is created after the pre-install hook that needs it"
        assert events <= needed[0] and needed[1] < weight, ref
    # Its network policy exists before it runs.
    policy = hook_of(named(docs, "NetworkPolicy", f"{FULLNAME}-migrations"))
    assert policy is not None and policy[1] < weight
    # Steps in order: migrate (init container) before anything else of the Job.
    spec = pod_spec(job)
    steps = [c["args"] for c in containers(spec) if c["name"] != "wait-for-database"]
    assert steps[0] == ["db", "upgrade"]
    assert [a for c in spec["containers"] for a in c["args"]]  # the last step is the container


def test_with_the_bundled_database_migrations_are_a_job_the_gateways_wait_for() -> None:
    """A pre-install hook would run before the bundled PostgreSQL exists: migrations run in a
    Job of the release revision, the gateways wait for the schema and the Job for the database."""
    docs = render(revision=7)
    job = _hook_job(docs)
    assert hook_of(job) is None
    assert job["metadata"]["name"] == f"{FULLNAME}-migrate-7"
    jspec = pod_spec(job)
    assert [c["name"] for c in containers(jspec)][:2] == ["wait-for-database", "migrate"]
    wait = container(pod_spec(gateway(docs)), "wait-for-schema")
    assert "loragate db check" in wait["args"][0]
    # The Secrets the database and the Job need are created before anything else.
    for secret in of_kind(docs, "Secret"):
        assert hook_of(secret) == (frozenset({"pre-install", "pre-upgrade"}), -10)
    with pytest.raises(helm.HelmRenderError, match="bundled PostgreSQL"):
        render({"migrations": {"mode": "hook"}})


def test_argocd_presync_follows_the_same_order() -> None:
    docs = render(COMBINATIONS["hpa"])
    waves = {}
    for doc in docs:
        annotations = doc["metadata"].get("annotations") or {}
        if "argocd.argoproj.io/hook" in annotations:
            assert annotations["argocd.argoproj.io/hook"] == "PreSync"
            waves[ident(doc)] = int(annotations["argocd.argoproj.io/sync-wave"])
    assert waves[f"Secret/{FULLNAME}-database"] < waves[f"Job/{FULLNAME}-migrate"]


def test_every_command_the_chart_runs_exists_in_the_cli(
    combination: tuple[str, Doc, list[Doc]],
) -> None:
    _, _, docs = combination
    runner = CliRunner()
    for doc in workloads(docs):
        for c in containers(pod_spec(doc)):
            if "loragate" not in c["image"].split(":")[0].split("/")[-1] or "engine" in c["image"]:
                continue
            args = c.get("args") or []
            if c.get("command") == ["sh", "-c"]:
                args = re.findall(r"loragate ((?:[\w-]+ ?)+)", args[0])[0].split()
            elif c.get("command"):
                continue  # plain Python (wait-for-database)
            result = runner.invoke(cli, [*args, "--help"])
            assert result.exit_code == 0, f"{ident(doc)} {c['name']}: loragate {args}"


def test_admin_key_bootstrap_command_exists() -> None:
    docs = render({"adminKey": {"bootstrap": True}})
    step = container(pod_spec(_hook_job(docs)), "bootstrap-admin-key")
    result = CliRunner().invoke(cli, [*step["args"], "--help"])
    assert result.exit_code == 0, result.output


# --- values schema -------------------------------------------------------------------------


def _pool(**overrides: Any) -> Doc:
    pool: Doc = {"name": "p", "accelerator": "gpu", "servedModelName": "m", "model": {"path": "x"}}
    return {"engine": {"pools": [{**pool, **overrides}]}}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"gatway": {"replicas": 2}}, "gatway"),
        ({"gateway": {"replicas": 0}}, "replicas"),
        ({"gateway": {"replicas": "2"}}, "replicas"),
        ({"gateway": {"securityContext": {"runAsUser": 0, "runAsGroup": 0}}}, "runAsUser"),
        ({"database": {"url": "postgresql://u:p@db/x"}}, "url"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"migrations": {"mode": "later"}}, "mode"),
        ({"engine": {"pools": []}}, "pools"),
        (_pool(name="Big_Pool"), "name"),
        (_pool(accelerator="tpu"), "accelerator"),
        (_pool(maxLoraRank=12), "maxLoraRank"),
        (_pool(model={}), "path"),
        (_pool(gpus=-1), "gpus"),
        ({"postgresql": {"password": "p@ss/word"}}, "password"),
        ({"adapterStore": {"accessModes": ["ReadWriteSometimes"]}}, "accessModes"),
        ({"networkPolicy": {"enabled": "yes"}}, "enabled"),
        ({"otlp": {"endpoint": "collector:4318"}}, "endpoint"),
    ],
)
def test_values_schema_refuses_bad_values(values: Doc, complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"database": {"url": "postgresql+asyncpg://u:p@db/x"}}, "postgresql.enabled=false"),
        ({"postgresql": {"enabled": False}}, "no database"),
        ({"fullnameOverride": "a" * 40, **_pool(name="b" * 10)}, "over 52 characters"),
        (
            {"engine": {"pools": [_pool()["engine"]["pools"][0]] * 2}},
            "used twice",
        ),
        (
            {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
            "minReplicas",
        ),
    ],
)
def test_contradictory_values_are_refused(values: Doc, complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=complaint):
        render(values)


def test_values_schema_accepts_every_example() -> None:
    for name, values in COMBINATIONS.items():
        chart().validate_schema(values)  # raises on a refusal
        assert name


# --- monitoring ----------------------------------------------------------------------------


def test_dashboards_and_rules_are_picked_up_from_monitoring(tmp_path: Path) -> None:
    """New files under monitoring/ reach the chart without template edits; other JSON and YAML
    there (a promtool test, a config) are left out."""
    copy_dir = tmp_path / "loragate"
    shutil.copytree(CHART_DIR, copy_dir, symlinks=False)
    monitoring = copy_dir / "files" / "monitoring"
    (monitoring / "dashboards").mkdir(exist_ok=True)
    board = {"title": "loragate traffic", "panels": [{"type": "timeseries", "title": "RPS"}]}
    (monitoring / "dashboards" / "traffic.json").write_text(json.dumps(board))
    (monitoring / "not-a-dashboard.json").write_text(json.dumps({"kind": "settings"}))
    rules = {
        "groups": [{"name": "loragate", "rules": [{"alert": "NoHealthyReplica", "expr": "1"}]}]
    }
    (monitoring / "alerts.rules.yml").write_text(yaml.safe_dump(rules))
    (monitoring / "alerts.test.yml").write_text(yaml.safe_dump({"rule_files": ["x"], "tests": []}))
    values = {
        "metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboards": {"enabled": True}}
    }
    docs = render(values, loaded=helm.Chart.load(copy_dir))
    boards = named(docs, "ConfigMap", f"{FULLNAME}-dashboards")
    assert set(boards["data"]) >= {"traffic.json"} and "not-a-dashboard.json" not in boards["data"]
    assert json.loads(boards["data"]["traffic.json"]) == board
    assert boards["metadata"]["labels"]["grafana_dashboard"] == "1"
    rule = named(docs, "PrometheusRule", FULLNAME)
    assert rules["groups"][0] in rule["spec"]["groups"]
    jsonschema.validate(rule, CRD_SCHEMAS["PrometheusRule"])
    off = render(
        {"metrics": {"prometheusRule": {"enabled": False}}}, loaded=helm.Chart.load(copy_dir)
    )
    assert not of_kind(off, "PrometheusRule")


def test_service_monitor_scrapes_the_gateway() -> None:
    docs = render(COMBINATIONS["gpu"])
    monitor = named(docs, "ServiceMonitor", f"{FULLNAME}-gateway")
    service = named(docs, "Service", FULLNAME)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # /metrics needs a key: the admin key's Secret unless another is named.
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert credentials == {"name": f"{FULLNAME}-admin-key", "key": "admin-key"}
    own = {"metrics": {"serviceMonitor": {"enabled": True, "keySecret": {"name": "scraper"}}}}
    monitor = named(render(own), "ServiceMonitor", f"{FULLNAME}-gateway")
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert credentials == {"name": "scraper", "key": "admin-key"}


def test_install_notes_say_how_to_reach_the_api_and_get_a_key() -> None:
    text = notes()
    assert f"port-forward svc/{FULLNAME} 8080:8080" in text
    assert f"get secret {FULLNAME}-admin-key" in text  # made by the migrations job
    assert "bundled PostgreSQL is for trying" in text
    by_hand = notes({"adminKey": {"bootstrap": False}, **COMBINATIONS["gpu"]})
    assert f"exec deploy/{FULLNAME}-gateway -- loragate keys bootstrap" in by_hand
    assert "bundled" not in by_hand


# --- documentation -------------------------------------------------------------------------


def _leaves(values: Doc, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in {"commonLabels"}:
            found |= _leaves(value, path + ".")
        else:
            found.add(path)
    return found


def test_readme_documents_every_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    leaves = _leaves(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))

    def covered(path: str, by: set[str]) -> bool:
        return any(path == d or path.startswith(d + ".") for d in by)

    missing = {leaf for leaf in leaves if not covered(leaf, documented)}
    assert not missing, f"values without a row in helm/loragate/README.md: {sorted(missing)}"
    pool_rows = {d.removeprefix("engine.pools[].") for d in documented if "[]" in d}
    pool_keys = set(
        json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]["engine"][
            "properties"
        ]["pools"]["items"]["properties"]
    )
    assert pool_rows == pool_keys
    unknown = {d for d in documented - {f"engine.pools[].{k}" for k in pool_keys}}
    unknown = {
        d for d in unknown if not any(leaf == d or leaf.startswith(d + ".") for leaf in leaves)
    }
    assert not unknown, f"rows for values that do not exist: {sorted(unknown)}"
