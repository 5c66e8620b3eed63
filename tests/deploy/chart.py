"""Render the Helm chart offline (Helm's own engine, no cluster, no helm binary) and read what
it renders: manifests by kind, pods, containers, and the environment a container would get."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "loragate"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "lg"
NAMESPACE = "ai"
K8S_VERSION = "1.31"
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "Job", "DaemonSet"})
HOOK = "helm.sh/hook"
HOOK_WEIGHT = "helm.sh/hook-weight"

Doc = dict[str, Any]


@cache
def chart() -> helm.Chart:
    helm.disable_logging()  # Helm logs that files/monitoring is a link, at every load
    return helm.Chart.load(CHART_DIR)


def combinations() -> dict[str, Doc]:
    """The default values and every example under ci/ (the real combinations), by name."""
    found: dict[str, Doc] = {"default": {}}
    for path in CI_VALUES:
        found[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text())
    return found


def render(
    values: Doc | None = None,
    *,
    loaded: helm.Chart | None = None,
    revision: int = 1,
    upgrade: bool = False,
) -> list[Doc]:
    """Every manifest the chart renders, parsed (empty documents dropped)."""
    rendered = (loaded or chart()).render(
        values or {},
        name=RELEASE,
        namespace=NAMESPACE,
        revision=revision,
        is_install=not upgrade,
        is_upgrade=upgrade,
    )
    docs: list[Doc] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def notes(values: Doc | None = None) -> str:
    """What `helm install` prints."""
    rendered = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def ident(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def workloads(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]


def containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers") or []
    yield from spec["containers"]


def container(spec: Doc, name: str) -> Doc:
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"container {name}: {len(found)}"
    return found[0]


def component(doc: Doc) -> str:
    labels: Mapping[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels["app.kubernetes.io/component"]


def gateway(docs: list[Doc]) -> Doc:
    return named(docs, "Deployment", f"{RELEASE}-loragate-gateway")


def hook_of(doc: Doc) -> tuple[frozenset[str], int] | None:
    """(events, weight) of a Helm hook, None for a release object."""
    annotations = doc["metadata"].get("annotations") or {}
    if HOOK not in annotations:
        return None
    events = frozenset(e.strip() for e in annotations[HOOK].split(","))
    return events, int(annotations.get(HOOK_WEIGHT, "0"))


@dataclass(frozen=True)
class EnvFromCluster:
    """Secrets that exist before the release (existingSecret values), for resolving env."""

    secrets: Mapping[str, Mapping[str, str]]


def environment(
    docs: list[Doc], spec: Doc, name: str, existing: EnvFromCluster | None = None
) -> dict[str, str]:
    """The environment the named container starts with: literal values, ConfigMap and Secret
    keys (the rendered ones, else ``existing``), and $(VAR) references expanded as the kubelet
    expands them."""
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in of_kind(docs, "ConfigMap")}
    secrets: dict[str, dict[str, str]] = {}
    for doc in of_kind(docs, "Secret"):
        data = doc.get("data") or {}
        secrets[doc["metadata"]["name"]] = {
            k: base64.b64decode(v).decode() for k, v in data.items()
        }
    for secret, keys in (existing.secrets if existing else {}).items():
        secrets.setdefault(secret, dict(keys))
    env: dict[str, str] = {}
    for entry in container(spec, name).get("env") or []:
        source = entry.get("valueFrom")
        if source is None:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = configmaps[ref["name"]][ref["key"]]
        else:
            ref = source["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        env[entry["name"]] = value
    return env
