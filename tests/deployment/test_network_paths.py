"""Every hop of the notebook -> gateway -> hub / Dask Gateway -> object store path, under the NetworkPolicies deployed.

The policies are our own (deploy_gateway.yaml: the gateway pod's, and its Dask pods') and those zero-to-jupyterhub
renders from its values merged with jupyterhub_values.yaml. Helm cannot run
here, so the chart's two templates are mirrored below as data; the first test
checks that each piece mirrored is still in the chart's template text.
Pods carry the labels their charts give them: zero-to-jupyterhub's user
servers and hub (`component`, `app`, `release`, with `singleuser.extraLabels`
on user servers), the dask-gateway chart's Traefik and API server
(`app.kubernetes.io/*`, and on the API server the hub's access label), Dask
Gateway's schedulers and workers (its controller's, with the options handler's
for the gateway's own clusters), and ours from the Deployment's pod template.
"""

from __future__ import annotations

import copy
import ipaddress
import textwrap
from typing import Any

import pytest
import yaml
from dask_gateway_server.models import User

from artifacts import CHARTS, chart, dask_clusters_policy, jupyterhub_values, manifest_documents, manifests, merged, options_handler
from network_policies import Endpoint, Policy, allowed, selects
from servers import PROJECT

NAMESPACE = "science"
RELEASE = "jupyterhub"
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


def z2jh_labels(component: str) -> dict[str, str]:
    """The chart's match labels (`jupyterhub.matchLabels`), which its pods and policies share."""
    return {"component": component, "app": "jupyterhub", "release": RELEASE}


def z2jh_egress_allow_rules(values: dict[str, Any], netpol: dict[str, Any]) -> list[dict[str, Any]]:
    """templates-_helpers-netpol.tpl: `jupyterhub.networkPolicy.renderEgressRules`."""
    flags, metadata_ip = netpol["egressAllowRules"], f"{values['singleuser']['cloudMetadata']['ip']}/32"
    rules: list[dict[str, Any]] = []
    dns_peers = (
        ([{"ipBlock": {"cidr": metadata_ip}}] if flags["dnsPortsCloudMetadataServer"] else [])
        + ([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}] if flags["dnsPortsKubeSystemNamespace"] else [])
        + ([{"ipBlock": {"cidr": cidr}} for cidr in PRIVATE_RANGES] if flags["dnsPortsPrivateIPs"] else [])
    )
    if dns_peers:
        rules.append({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "to": dns_peers})
    if flags["nonPrivateIPs"]:
        rules.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [*PRIVATE_RANGES, metadata_ip]}}]})
    if flags["privateIPs"]:
        rules.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in PRIVATE_RANGES]})
    if flags["cloudMetadataServer"]:
        rules.append({"to": [{"ipBlock": {"cidr": metadata_ip}}]})
    return rules + (netpol.get("egress") or [])


def to_component(component: str, *ports: int) -> dict[str, Any]:
    """An egress rule of the chart's: to its pods of one component, on these ports."""
    return {"to": [{"podSelector": {"matchLabels": z2jh_labels(component)}}], "ports": [{"port": port} for port in ports]}


# templates-<key>_netpol.yaml, for each values key: the component its policy selects, the port
# that pods labelled hub.jupyter.org/network-access-<key> may reach, and the chart's own egress.
Z2JH_POLICIES = {
    "singleuser": ("singleuser-server", "notebook-port", [to_component("hub", 8081), to_component("proxy", 8000), to_component("autohttps", 8080, 8443)]),
    "hub": ("hub", "http", [to_component("proxy", 8001), to_component("singleuser-server", 8888)]),
}


def z2jh_policy(values: dict[str, Any], key: str) -> Policy:
    """The policy the chart renders for ``key`` (`singleuser` or `hub`), with interNamespaceAccessLabels left at `ignore`."""
    component, port, egress = Z2JH_POLICIES[key]
    netpol = values[key]["networkPolicy"]
    assert netpol["enabled"] and netpol["interNamespaceAccessLabels"] == "ignore"
    allowed_ports = [{"ports": [{"port": number} for number in netpol["allowedIngressPorts"]]}] if netpol.get("allowedIngressPorts") else []
    from_labelled = [{"podSelector": {"matchLabels": {f"hub.jupyter.org/network-access-{key}": "true"}}}]
    return {
        "spec": {
            "podSelector": {"matchLabels": z2jh_labels(component)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": allowed_ports + [{"ports": [{"port": port}], "from": from_labelled}] + (netpol.get("ingress") or []),
            "egress": egress + z2jh_egress_allow_rules(values, netpol),
        }
    }


# Each piece of the templates that the functions above mirror, as it stands in the chart.
MIRRORED = {
    "templates-singleuser_netpol.yaml": [
        'hub.jupyter.org/network-access-singleuser: "true"',
        "- port: notebook-port",
        '{{- $_ := merge (dict "componentLabel" "hub") . }} {{- include "jupyterhub.matchLabels" $_ | nindent 14 }} ports: - port: 8081',
        '{{- $_ := merge (dict "componentLabel" "proxy") . }} {{- include "jupyterhub.matchLabels" $_ | nindent 14 }} ports: - port: 8000',
        "- port: 8080 - port: 8443",
        "{{- with .Values.singleuser.networkPolicy.ingress }}",
        '(include "jupyterhub.networkPolicy.renderEgressRules" (list . .Values.singleuser.networkPolicy))',
    ],
    "templates-hub_netpol.yaml": [
        'hub.jupyter.org/network-access-hub: "true"',
        "- ports: - port: http from:",
        "{{- with .Values.hub.networkPolicy.ingress }}",
        "- port: 8001",
        "- port: 8888",
        '(include "jupyterhub.networkPolicy.renderEgressRules" (list . .Values.hub.networkPolicy))',
    ],
    "templates-_helpers-netpol.tpl": [
        "{{- if $netpol.egressAllowRules.dnsPortsKubeSystemNamespace }}",
        "kubernetes.io/metadata.name: kube-system",
        "{{- if $netpol.egressAllowRules.nonPrivateIPs }}",
        "cidr: 0.0.0.0/0 except:",
        "{{- if $netpol.egressAllowRules.privateIPs }}",
        "{{- with $netpol.egress }}",
    ],
    "templates-_helpers.tpl": [
        'component: {{ include "jupyterhub.componentLabel" . }}',
        'app: {{ .appLabel | default (include "jupyterhub.appLabel" .) | quote }}',
        "release: {{ .Release.Name | quote }}",
    ],
}


@pytest.mark.parametrize("template", sorted(MIRRORED))
def test_the_chart_templates_still_say_what_is_mirrored_here(template: str) -> None:
    chart("zero-to-jupyterhub-chart")  # skips where the reference is absent
    text = " ".join((CHARTS / "zero-to-jupyterhub-chart" / template).read_text().split())
    missing = [piece for piece in MIRRORED[template] if " ".join(piece.split()) not in text]
    assert not missing, f"{template} changed: {missing}"


def gateway_endpoint() -> Endpoint:
    pod = manifests().deployment.spec.template
    (container,) = pod.spec.containers
    return Endpoint("gateway", dict(pod.metadata.labels), {port.name: port.container_port for port in container.ports}, NAMESPACE)


# The Prometheus operator's label on the Prometheus pods it runs.
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}


def dask_pod_labels(identity: str, component: str) -> dict[str, str]:
    """A scheduler's or worker's labels: dask-gateway's controller's own, and the options handler's for the identity's clusters."""
    own = {"app.kubernetes.io/name": "dask-gateway", "gateway.dask.org/instance": "dask-gateway", "app.kubernetes.io/component": f"dask-{component}"}
    return {**own, **options_handler()({}, User(identity)).get(f"{component}_extra_pod_labels", {})}


def endpoints(values: dict[str, Any]) -> dict[str, Endpoint]:
    notebook_labels = {**z2jh_labels("singleuser-server"), **values["singleuser"]["extraLabels"]}
    dask_gateway = {"app.kubernetes.io/name": "dask-gateway", "app.kubernetes.io/instance": "dask-gateway"}
    dask_ports = {"scheduler": 8786, "dashboard": 8787, "api": 8788}
    return {
        "notebook": Endpoint("notebook", notebook_labels, {"notebook-port": 8888}, NAMESPACE),
        "notebook elsewhere": Endpoint("notebook in another namespace", notebook_labels, {"notebook-port": 8888}, "other"),
        "gateway": gateway_endpoint(),
        "hub": Endpoint("hub", z2jh_labels("hub"), {"http": 8081}, NAMESPACE),
        "proxy": Endpoint("proxy", z2jh_labels("proxy"), {"http": 8000, "api": 8001}, NAMESPACE),
        "traefik": Endpoint("traefik", {**dask_gateway, "app.kubernetes.io/component": "traefik"}, {"web": 8000, "traefik": 9000}, NAMESPACE),
        # The chart labels its API server's pods for the hub's policy itself (templates/gateway/deployment.yaml,
        # since dask/dask-gateway#352 in 2020): the server checks tokens with the hub's pod directly.
        "dask-gateway api": Endpoint(
            "api", {**dask_gateway, "app.kubernetes.io/component": "gateway", "hub.jupyter.org/network-access-hub": "true"}, {"api": 8000}, NAMESPACE
        ),
        "scheduler": Endpoint("scheduler", dask_pod_labels("service:science-gateway", "scheduler"), dask_ports, NAMESPACE),
        "worker": Endpoint("worker", dask_pod_labels("service:science-gateway", "worker"), dask_ports, NAMESPACE),
        "alice's worker": Endpoint("alice's worker", dask_pod_labels("alice", "worker"), dask_ports, NAMESPACE),
        # Where docs/operations.md's scrape rule expects Prometheus, and the same pod elsewhere.
        "prometheus": Endpoint("prometheus", PROMETHEUS_LABELS, {"web": 9090}, "monitoring"),
        "prometheus here": Endpoint("prometheus in the gateway's namespace", PROMETHEUS_LABELS, {"web": 9090}, NAMESPACE),
        "dns": Endpoint("kube-dns", {"k8s-app": "kube-dns"}, {"dns": 53}, "kube-system"),
        # Addresses as data only: no traffic goes anywhere. 203.0.113.0/24 is a documentation range.
        "object store": Endpoint("object store", ip="203.0.113.10"),
        "private address": Endpoint("private address", ip="10.0.0.5"),
        "cloud metadata": Endpoint("cloud metadata", ip="169.254.169.254"),
    }


def deployed_with(hub_values: dict[str, Any]) -> tuple[list[tuple[Policy, str]], dict[str, Endpoint]]:
    """Our policies and the chart's, rendered from these values over the chart's own, with the pods they select."""
    values = merged(chart("zero-to-jupyterhub-chart").values, hub_values)
    policies = [
        (manifest_documents()["NetworkPolicy"], NAMESPACE),
        (dask_clusters_policy(), NAMESPACE),
        *((z2jh_policy(values, key), NAMESPACE) for key in Z2JH_POLICIES),
        (proxy_egress_policy(values), NAMESPACE),
    ]
    return policies, endpoints(values)


def proxy_egress_policy(values: dict[str, Any]) -> Policy:
    """The proxy's policy (proxy.chp.networkPolicy), egress only: its template is not in the reference, so only what the
    values render through the shared `renderEgressRules` is modelled (its own rules reach the hub and user servers,
    which the gateway's paths do not need). Ingress is left open, as the chart's is to the proxy's public port."""
    netpol = values["proxy"]["chp"]["networkPolicy"]
    assert netpol["enabled"] and netpol["interNamespaceAccessLabels"] == "ignore"
    return {
        "spec": {
            "podSelector": {"matchLabels": z2jh_labels("proxy")},
            "policyTypes": ["Egress"],
            "egress": z2jh_egress_allow_rules(values, netpol),
        }
    }


@pytest.fixture(scope="module")
def deployed() -> tuple[list[tuple[Policy, str]], dict[str, Endpoint]]:
    return deployed_with(jupyterhub_values())


def gateway_pod_port() -> int:
    """The port the Service sends notebooks' requests to, on the gateway's pod."""
    _, service, _ = manifests()
    (port,) = service.spec.ports
    return gateway_endpoint().ports.get(port.target_port, port.target_port)


# (from, to, port, protocol, why): each a hop the product needs.
NEEDED = [
    ("notebook", "gateway", None, "TCP", "a notebook calls http://gateway-svc"),
    ("proxy", "gateway", None, "TCP", "the hub's proxy serves the gateway to browsers at /services/science-gateway/"),
    ("hub", "gateway", None, "TCP", "the hub checks that the service answers at its url"),
    ("gateway", "hub", 8081, "TCP", "the gateway checks callers' tokens with the hub"),
    ("gateway", "traefik", 8000, "TCP", "the gateway obtains its cluster and reaches its scheduler through Traefik"),
    ("gateway", "dns", 53, "UDP", "the gateway resolves the Services' and the object store's names"),
    ("gateway", "object store", 443, "TCP", "the gateway writes records and checks readiness in the object store"),
    ("notebook", "traefik", 8000, "TCP", "a notebook starts its user's own Dask cluster"),
    ("notebook", "object store", 443, "TCP", "a notebook opens results"),
    ("dask-gateway api", "hub", 8081, "TCP", "Dask Gateway checks users' and the gateway's tokens with the hub"),
    ("worker", "object store", 443, "TCP", "the gateway's workers write results and read sources"),
    ("worker", "scheduler", 8786, "TCP", "the gateway's workers join their scheduler"),
    ("scheduler", "worker", 8788, "TCP", "and it reaches them"),
    ("worker", "dns", 53, "UDP", "they resolve the scheduler's Service and the object store's name"),
    ("scheduler", "dask-gateway api", 8000, "TCP", "the scheduler reports to Dask Gateway's API"),
]

REFUSED = [
    ("notebook", "gateway", 80, "TCP", "policies see pod ports: the Service's port 80 is not the pod's"),
    ("notebook", "gateway", 9000, "TCP", "only the gateway's own port"),
    ("notebook", "gateway", 8001, "TCP", "not the probe port: the kubelet's, and kubectl port-forward's"),
    ("notebook elsewhere", "gateway", None, "TCP", "user servers of this namespace only"),
    ("proxy", "gateway", 8001, "TCP", "the proxy not the probe port"),
    ("hub", "gateway", 8001, "TCP", "nor the hub"),
    ("traefik", "gateway", None, "TCP", "nor does Dask Gateway"),
    ("scheduler", "gateway", None, "TCP", "nor the Dask cluster"),
    ("gateway", "notebook", 8888, "TCP", "the gateway never calls notebooks"),
    ("gateway", "proxy", 8001, "TCP", "nor the proxy's API"),
    ("gateway", "traefik", 9000, "TCP", "nor Traefik's dashboard"),
    ("gateway", "scheduler", 8786, "TCP", "the scheduler only through Traefik"),
    ("gateway", "dask-gateway api", 8000, "TCP", "Dask Gateway's API only through Traefik"),
    ("gateway", "private address", 443, "TCP", "nothing else in the cluster's private ranges"),
    ("gateway", "cloud metadata", 80, "TCP", "not the cloud metadata server"),
    ("gateway", "object store", 80, "TCP", "the object store over HTTPS only"),
    ("gateway", "dns", 8000, "TCP", "kube-system only for DNS"),
    ("prometheus", "gateway", None, "TCP", "Prometheus only with the rule docs/operations.md shows"),
    ("worker", "cloud metadata", 80, "TCP", "the gateway's workers never reach the node's credentials"),
    ("scheduler", "cloud metadata", 80, "TCP", "nor does its scheduler"),
]


def hop(deployed, source: str, destination: str, port: int | None, protocol: str) -> bool:
    policies, pods = deployed
    return allowed(policies, pods[source], pods[destination], port if port is not None else gateway_pod_port(), protocol)


@pytest.mark.parametrize(("source", "destination", "port", "protocol", "why"), NEEDED, ids=[f"{s}->{d}" for s, d, *_ in NEEDED])
def test_each_hop_the_product_needs_is_allowed(deployed, source: str, destination: str, port: int | None, protocol: str, why: str) -> None:
    assert hop(deployed, source, destination, port, protocol), why


@pytest.mark.parametrize(("source", "destination", "port", "protocol", "why"), REFUSED, ids=[f"{s}->{d}:{p}" for s, d, p, *_ in REFUSED])
def test_nothing_else_reaches_or_leaves_the_gateway(deployed, source: str, destination: str, port: int | None, protocol: str, why: str) -> None:
    assert not hop(deployed, source, destination, port, protocol), why


def test_the_notebooks_port_is_the_gateways_pod_port() -> None:
    assert gateway_pod_port() == 8000
    assert jupyterhub_values()["singleuser"]["networkPolicy"]["egress"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}]


def broken_hops(deployed) -> list[str]:
    return [why for source, destination, port, protocol, why in NEEDED if not hop(deployed, source, destination, port, protocol)]


@pytest.mark.parametrize("position", [0, 1], ids=["the gateway's", "its Dask pods'"])
def test_every_rule_of_our_policies_serves_a_needed_hop(deployed, position: int) -> None:
    """Without any one of its rules, some needed hop fails: the policy allows nothing beyond them."""
    policies, pods = deployed
    ours = policies[position][0]
    for direction in ours["spec"]["policyTypes"]:
        direction = direction.lower()
        for index in range(len(ours["spec"][direction])):
            rules = [rule for at, rule in enumerate(ours["spec"][direction]) if at != index]
            without = {**ours, "spec": {**ours["spec"], direction: rules}}
            reduced = [*policies[:position], (without, NAMESPACE), *policies[position + 1 :]]
            assert broken_hops((reduced, pods)), f"{direction} rule {index} serves no needed hop"


def test_every_rule_jupyterhub_values_adds_to_the_charts_policies_serves_a_needed_hop() -> None:
    """Without any one of them, some needed hop fails: the chart's labels already admit the rest."""
    ours = jupyterhub_values()

    def netpol_of(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        for key in keys:
            values = values.get(key, {})
        return values.get("networkPolicy", {})

    added = [
        (keys, direction, index)
        for keys in [(key,) for key in Z2JH_POLICIES] + [("proxy", "chp")]
        for direction in ("ingress", "egress")
        for index in range(len(netpol_of(ours, keys).get(direction) or []))
    ]
    assert added, "jupyterhub_values.yaml adds rules (the notebooks' egress to the gateway and Traefik)"
    for keys, direction, index in added:
        reduced = copy.deepcopy(ours)
        del netpol_of(reduced, keys)[direction][index]
        assert broken_hops(deployed_with(reduced)), f"{'.'.join(keys)}.networkPolicy.{direction}[{index}] serves no needed hop"


def test_the_gateway_pod_has_the_label_the_hubs_policy_admits() -> None:
    assert manifests().deployment.spec.template.metadata.labels["hub.jupyter.org/network-access-hub"] == "true"


def scrape_rule() -> dict[str, Any]:
    """The ingress rule docs/operations.md tells an operator to add for Prometheus: the section's YAML block."""
    section = (PROJECT / "docs" / "operations.md").read_text().split("**Scraping it on Kubernetes.**", 1)[1]
    (rule,) = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    return rule


def test_the_scrape_rule_the_docs_show_admits_prometheus_and_nothing_else(deployed) -> None:
    policies, pods = deployed
    ours = policies[0][0]
    scraped = {**ours, "spec": {**ours["spec"], "ingress": [*ours["spec"]["ingress"], scrape_rule()]}}
    with_rule = ([(scraped, NAMESPACE), *policies[1:]], pods)
    assert hop(with_rule, "prometheus", "gateway", None, "TCP"), "Prometheus reaches /metrics on the gateway's pod port"
    assert not hop(with_rule, "prometheus here", "gateway", None, "TCP"), "only in its own namespace"
    others = [(source, destination, port, protocol, why) for source, destination, port, protocol, why in REFUSED if source != "prometheus"]
    assert not [why for source, destination, port, protocol, why in others if hop(with_rule, source, destination, port, protocol)]
    assert not broken_hops(with_rule)


def test_the_dask_pods_policy_selects_the_gateways_schedulers_and_workers_alone(deployed) -> None:
    """Users' own clusters get no label from the options handler: the policy is the gateway's business alone."""
    _, pods = deployed
    selector = dask_clusters_policy()["spec"]["podSelector"]
    chosen = [name for name, pod in pods.items() if pod.ip is None and selects(selector, pod.labels)]
    assert chosen == ["scheduler", "worker"]



def object_store_policy() -> Policy:
    """The policy docs/deployment.md tells an operator to add for an object store on a private address or another port."""
    section = (PROJECT / "docs" / "deployment.md").read_text().split("**An object store on a private address or another port**", 1)[1]
    return yaml.safe_load(textwrap.dedent(section.split("```yaml\n", 1)[1].split("```", 1)[0]))


# Every pair of pods and addresses above, on each port any of them uses.
PORTS = sorted({53, 80, 443, 7480, 8000, 8001, 8080, 8081, 8443, 8786, 8787, 8788, 8888, 9000, 9090})


def allowed_hops(policies: list[tuple[Policy, str]], pods: dict[str, Endpoint]) -> set[tuple[str, str, int]]:
    return {
        (source, destination, port)
        for source in pods
        for destination in pods
        if source != destination
        for port in PORTS
        if allowed(policies, pods[source], pods[destination], port)
    }


def test_the_object_store_policy_the_docs_show_opens_the_gateways_path_to_that_store_and_nothing_else(deployed) -> None:
    policy = object_store_policy()
    assert policy["metadata"]["name"] not in {manifest_documents()["NetworkPolicy"]["metadata"]["name"], dask_clusters_policy()["metadata"]["name"]}
    ((rule,),) = [policy["spec"]["egress"]]
    ((peer,), (port,)) = rule["to"], rule["ports"]
    store_range, store_port = ipaddress.ip_network(peer["ipBlock"]["cidr"]), port["port"]
    assert store_range.is_private and store_port != 443, "the case the shipped policy does not cover"
    policies, pods = deployed
    pods = {
        **pods,
        "private store": Endpoint("object store on premises", ip=str(store_range[10])),
        "next to it": Endpoint("an address beside its range", ip=str(store_range.broadcast_address + 1)),
    }
    before = allowed_hops(policies, pods)
    after = allowed_hops([*policies, (policy, NAMESPACE)], pods)
    assert after - before == {("gateway", "private store", store_port)}
    assert before <= after
    assert not broken_hops(([*policies, (policy, NAMESPACE)], pods))
