"""The chart's NetworkPolicies admit only what they should: vLLM's runtime LoRA endpoints have no
authentication, so only the gateway reaches the engines; the gateway reaches only the engines,
the database, the OTLP collector and the review callback hosts.

Each case renders the chart, places its pods (with the labels and named ports their templates
give them) and a few outsiders in a cluster, and asks which connections the policies admit."""

from __future__ import annotations

import pytest

from tests.deploy.chart import (
    NAMESPACE,
    Doc,
    combinations,
    component,
    containers,
    of_kind,
    pod_spec,
    render,
    workloads,
)
from tests.deploy.netpol import Cluster, Endpoint

COMBINATIONS = combinations()
NAMESPACES = {
    NAMESPACE: {"kubernetes.io/metadata.name": NAMESPACE},
    "apps": {"kubernetes.io/metadata.name": "apps"},
    "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
    "observability": {"kubernetes.io/metadata.name": "observability"},
}
DNS = Endpoint("kube-dns", "10.96.0.10", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
NEIGHBOUR = Endpoint("neighbour", "10.244.9.9", NAMESPACE, {"app": "something-else"})
APP = Endpoint("app", "10.244.8.8", "apps", {"app": "shop"})
COLLECTOR = Endpoint("collector", "10.244.7.7", "observability", {"app": "otel"})
INTERNET = Endpoint("internet", "93.184.216.34")
EXTERNAL_DB = Endpoint("db.internal", "10.20.1.5")
OTHER_DB = Endpoint("other-db", "10.99.0.5")
CALLBACK_HOST = Endpoint("tickets.internal", "10.30.0.7")
NEAR_CALLBACK = Endpoint("elsewhere", "10.30.1.7")


def _pods(docs: list[Doc]) -> dict[str, Endpoint]:
    """One pod per component (and per engine pool), as its template makes it."""
    pods: dict[str, Endpoint] = {}
    for i, doc in enumerate(workloads(docs)):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        name = component(doc)
        if name == "engine":
            name = f"engine-{labels['loragate.io/pool']}"
        ports = {
            p["name"]: p["containerPort"]
            for c in containers(pod_spec(doc))
            for p in c.get("ports") or []
            if "name" in p
        }
        pods[name] = Endpoint(name, f"10.244.0.{i + 10}", NAMESPACE, labels, ports)
    return pods


def _cluster(values: Doc) -> tuple[Cluster, dict[str, Endpoint]]:
    docs = render(values)
    return Cluster(of_kind(docs, "NetworkPolicy"), NAMESPACE, NAMESPACES), _pods(docs)


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_every_pod_of_the_chart_is_restricted_both_ways(name: str) -> None:
    cluster, pods = _cluster(COMBINATIONS[name])
    assert pods
    for pod in pods.values():
        assert cluster.covered(pod), pod.name


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_only_the_gateway_reaches_the_engines(name: str) -> None:
    cluster, pods = _cluster(COMBINATIONS[name])
    engines = [p for key, p in pods.items() if key.startswith("engine-")]
    assert engines
    for engine in engines:
        assert cluster.admits(pods["gateway"], engine, "http")
        for outsider in (NEIGHBOUR, APP, INTERNET, COLLECTOR):
            assert not cluster.admits(outsider, engine, "http"), outsider.name
        for own in ("migrations", "postgresql"):
            if own in pods:
                assert not cluster.admits(pods[own], engine, "http"), own
        # The engine starts nothing but name lookups: not even towards the gateway.
        assert cluster.admits(engine, DNS, 53, "UDP")
        for target in (INTERNET, pods["gateway"], NEIGHBOUR):
            assert not cluster.admits(engine, target, 443), target.name
            assert not cluster.admits(engine, target, 8080), target.name


def test_default_gateway_reaches_engines_database_and_dns_only() -> None:
    cluster, pods = _cluster({})
    gw = pods["gateway"]
    assert cluster.admits(gw, pods["postgresql"], "postgresql")
    assert cluster.admits(gw, DNS, 53, "UDP") and cluster.admits(gw, DNS, 53, "TCP")
    for target in (INTERNET, NEIGHBOUR, APP, COLLECTOR, EXTERNAL_DB):
        for port in (80, 443, 5432, 4318):
            assert not cluster.admits(gw, target, port), (target.name, port)
    # Anyone may call the API port, and nothing else.
    for caller in (NEIGHBOUR, APP, INTERNET):
        assert cluster.admits(caller, gw, "http")
        assert not cluster.admits(caller, gw, 9090)


def test_bundled_database_answers_the_gateway_and_migrations_only() -> None:
    cluster, pods = _cluster({})
    db = pods["postgresql"]
    assert cluster.admits(pods["gateway"], db, "postgresql")
    assert cluster.admits(pods["migrations"], db, "postgresql")
    for other in (pods["engine-default"], NEIGHBOUR, APP, INTERNET):
        assert not cluster.admits(other, db, "postgresql"), other.name
    for target in (INTERNET, DNS, pods["gateway"]):
        assert not cluster.admits(db, target, 443)
        assert not cluster.admits(db, target, 53, "UDP")
    # The migrations Job reaches the database and DNS, nothing else.
    assert cluster.admits(pods["migrations"], DNS, 53, "UDP")
    for target in (pods["engine-default"], INTERNET, pods["gateway"]):
        assert not cluster.admits(pods["migrations"], target, "http" if target.ports else 443)


def test_external_database_and_collector_by_their_peers() -> None:
    cluster, pods = _cluster(COMBINATIONS["gpu"])
    gw = pods["gateway"]
    assert cluster.admits(gw, EXTERNAL_DB, 5432)
    assert not cluster.admits(gw, OTHER_DB, 5432)  # outside database.networkPolicyPeers
    assert not cluster.admits(gw, EXTERNAL_DB, 22)
    assert cluster.admits(gw, COLLECTOR, 4318)
    assert not cluster.admits(gw, COLLECTOR, 4317)
    assert not cluster.admits(gw, APP, 4318)  # another namespace than the collector's
    assert not cluster.admits(gw, INTERNET, 443)
    assert cluster.admits(pods["migrations"], EXTERNAL_DB, 5432)
    assert not cluster.admits(pods["migrations"], COLLECTOR, 4318)


def test_database_port_without_peers_is_any_address_on_that_port() -> None:
    cluster, pods = _cluster(COMBINATIONS["two-pools"])
    assert cluster.admits(pods["gateway"], OTHER_DB, 5432)
    assert not cluster.admits(pods["gateway"], OTHER_DB, 5433)


def test_review_callbacks_reach_only_the_allowed_hosts() -> None:
    cluster, pods = _cluster(COMBINATIONS["cpu"])
    assert cluster.admits(pods["gateway"], CALLBACK_HOST, 443)
    assert not cluster.admits(pods["gateway"], CALLBACK_HOST, 80)
    assert not cluster.admits(pods["gateway"], NEAR_CALLBACK, 443)


def test_api_callers_can_be_limited() -> None:
    cluster, pods = _cluster(COMBINATIONS["hpa"])
    assert cluster.admits(APP, pods["gateway"], "http")
    assert not cluster.admits(NEIGHBOUR, pods["gateway"], "http")
    assert not cluster.admits(INTERNET, pods["gateway"], "http")


def test_policies_can_be_turned_off() -> None:
    assert not of_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")
