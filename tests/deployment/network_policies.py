"""What a set of Kubernetes NetworkPolicies allows, evaluated as the API documents it, from the policies as data.

A connection from pod A to port P of pod B is allowed when A's egress allows it
(no policy with Egress selects A, or one of those that do has a matching rule)
and B's ingress allows it (likewise). Policies select pods of their own
namespace; a peer without a namespaceSelector is in the policy's namespace.
Policies see pod (container) ports: a named port is looked up on the
destination pod.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Policy = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, named container ports, namespace) or, with ``ip``, an address outside the cluster."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    namespace: str = "science"
    ip: str | None = None

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector; the empty selector selects everything."""
    selector = selector or {}
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def _peer_matches(peer: dict[str, Any], endpoint: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if endpoint.ip is None:
            # Pod addresses are private: the tests keep them out of every ipBlock by giving pods none.
            return False
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(excluded) for excluded in block.get("except", [])
        )
    if endpoint.ip is not None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], endpoint.namespace_labels)
    else:
        in_namespace = endpoint.namespace == policy_namespace
    return in_namespace and ("podSelector" not in peer or selects(peer["podSelector"], endpoint.labels))


def _port_matches(ports: list[dict[str, Any]] | None, destination: Endpoint, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for allowed in ports:
        if allowed.get("protocol", "TCP") != protocol:
            continue
        if "port" not in allowed:
            return True
        first = allowed["port"]
        if isinstance(first, str):
            first = destination.ports.get(first)
        if first is not None and first <= port <= allowed.get("endPort", first):
            return True
    return False


def _direction_allows(
    policies: list[tuple[Policy, str]], subject: Endpoint, peer: Endpoint, destination: Endpoint, port: int, protocol: str, direction: str
) -> bool:
    if subject.ip is not None:
        return True  # outside the cluster: no policy of ours applies
    applying = [
        (policy, namespace)
        for policy, namespace in policies
        if namespace == subject.namespace
        and selects(policy["spec"].get("podSelector"), subject.labels)
        and direction.capitalize() in policy["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applying:
        return True
    peers_key = "to" if direction == "egress" else "from"
    return any(
        _port_matches(rule.get("ports"), destination, port, protocol)
        and (not rule.get(peers_key) or any(_peer_matches(p, peer, namespace) for p in rule[peers_key]))
        for policy, namespace in applying
        for rule in policy["spec"].get(direction) or []
    )


def allowed(policies: list[tuple[Policy, str]], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether ``source`` may open a connection to ``port`` of ``destination`` under these (policy, namespace) pairs."""
    return _direction_allows(policies, source, destination, destination, port, protocol, "egress") and _direction_allows(
        policies, destination, source, destination, port, protocol, "ingress"
    )
