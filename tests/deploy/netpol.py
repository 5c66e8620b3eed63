"""Which connections a set of NetworkPolicies admits, by the rules of the Kubernetes API.

A connection from ``src`` to ``dst`` on a port is admitted when the source side admits it as
egress and the destination side as ingress. A side admits everything when no policy selects
its pod for that direction; otherwise one rule of one selecting policy must match the peer and
the port. Endpoints outside the cluster (``namespace`` None) are matched by ipBlock only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str
    namespace: str | None = None  # None: outside the cluster
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector; the empty selector selects everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


class Cluster:
    def __init__(
        self, policies: list[Doc], namespace: str, namespaces: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.policies = policies
        self.namespace = namespace  # where the release (and its policies) lives
        self.namespace_labels = namespaces

    def _selecting(self, pod: Endpoint, direction: str) -> list[Doc]:
        if pod.namespace != self.namespace:
            return []
        return [
            p
            for p in self.policies
            if direction in p["spec"].get("policyTypes", ["Ingress"])
            and selects(p["spec"]["podSelector"], pod.labels)
        ]

    def _peer(self, peer: Mapping[str, Any], other: Endpoint) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            address = ipaddress.ip_address(other.ip)
            if address not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
        if other.namespace is None:
            return False
        if "namespaceSelector" in peer:
            ns_labels = self.namespace_labels.get(other.namespace, {})
            if not selects(peer["namespaceSelector"], ns_labels):
                return False
        elif other.namespace != self.namespace:
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], other.labels)

    @staticmethod
    def _port(
        rules: list[Mapping[str, Any]] | None, port: int, protocol: str, dst: Endpoint
    ) -> bool:
        if not rules:
            return True
        for rule in rules:
            if rule.get("protocol", "TCP") != protocol:
                continue
            wanted = rule.get("port")
            if wanted is None:
                return True
            if isinstance(wanted, str):
                wanted = dst.ports.get(wanted)
            end = rule.get("endPort", wanted)
            if wanted is not None and wanted <= port <= end:
                return True
        return False

    def _side(
        self,
        pod: Endpoint,
        other: Endpoint,
        direction: str,
        port: int,
        protocol: str,
        dst: Endpoint,
    ) -> bool:
        selecting = self._selecting(pod, direction)
        if not selecting:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer(p, other) for p in peers):
                    continue
                if self._port(rule.get("ports"), port, protocol, dst):
                    return True
        return False

    def admits(self, src: Endpoint, dst: Endpoint, port: int | str, protocol: str = "TCP") -> bool:
        number = dst.ports[port] if isinstance(port, str) else port
        return self._side(src, dst, "Egress", number, protocol, dst) and self._side(
            dst, src, "Ingress", number, protocol, dst
        )

    def covered(self, pod: Endpoint) -> bool:
        """Some policy restricts both directions of this pod."""
        return bool(self._selecting(pod, "Ingress")) and bool(self._selecting(pod, "Egress"))
