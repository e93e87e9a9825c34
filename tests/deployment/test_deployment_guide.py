"""docs/deployment.md's commands against the files they act on: chart versions, the upgrade, the teardown."""

from __future__ import annotations

import re
import shlex

import yaml

from artifacts import CHARTS, chart, disruption_budget, jupyterhub_values, manifests
from science_gateway.settings import load_settings
from servers import PROJECT

GUIDE = PROJECT / "docs" / "deployment.md"
# Where a helm command of the charts is written: the guide, and the values files' own headers.
HELM_COMMANDS_IN = [GUIDE, PROJECT / "dask_gateway_config.yaml", PROJECT / "jupyterhub_values.yaml"]
# The JupyterHub each zero-to-jupyterhub chart version runs (its changelog: "4.4.0 upgrades JupyterHub to 5.5.0").
Z2JH_JUPYTERHUB = {"4.4.0": "5.5.0"}


def pinned(package: str) -> str:
    (version,) = re.findall(rf"^{re.escape(package)}==(\S+)$", (PROJECT / "requirements.txt").read_text(), flags=re.MULTILINE)
    return version


def commands(text: str) -> list[list[str]]:
    """Each command of the text's shell lines, continuation lines joined (in comments too), as words."""
    joined = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"^\s*#\s*(or:\s*)?", "", line).strip()
        for command in re.split(r";|&&|\|\|", line):
            try:
                words = shlex.split(command, comments=True)
            except ValueError:
                continue
            if words:
                found.append(words)
    return found


def helm_installs(chart_name: str) -> list[tuple[str, list[str]]]:
    """Every `helm upgrade` of that chart written in the guide and the values files, with the file it is in."""
    return [
        (path.name, words)
        for path in HELM_COMMANDS_IN
        for words in commands(path.read_text())
        if words[:2] == ["helm", "upgrade"] and chart_name in words[2:5]
    ]


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def test_the_dask_gateway_chart_is_the_version_of_the_pinned_client() -> None:
    installs = helm_installs("dask-gateway")
    assert len(installs) >= 3, "step 4, the teardown's restore, and the values file's header"
    for where, words in installs:
        assert option(words, "--repo") == "https://helm.dask.org", where
        assert option(words, "--version") == pinned("dask-gateway"), f"{where}: {' '.join(words)}"


def test_the_zero_to_jupyterhub_chart_is_pinned_to_the_version_the_guide_names() -> None:
    installs = helm_installs("jupyterhub")
    assert len(installs) >= 3, "step 3, the teardown, and the values file's header"
    versions = {option(words, "--version") for _, words in installs}
    assert len(versions) == 1 and None not in versions, installs
    (version,) = versions
    hub = Z2JH_JUPYTERHUB[version]
    guide = " ".join(GUIDE.read_text().split())
    assert f"zero-to-jupyterhub's `{version}`, which runs JupyterHub {hub}" in guide
    # The gateway's own jupyterhub, the client of the hub's API, as the guide names it beside the chart's.
    client = pinned("jupyterhub")
    assert f"`jupyterhub` package (`requirements.txt`: {client})" in guide
    assert ("the test suite runs are that newer version" in guide) == (tuple(map(int, client.split("."))) > tuple(map(int, hub.split("."))))
    chart("zero-to-jupyterhub-chart")  # skips where the reference is absent
    assert f"chart appVersion {hub})" in (CHARTS / "zero-to-jupyterhub-chart" / "SOURCE.md").read_text(), "the chart the tests read"


def section(start: str, end: str) -> str:
    text = GUIDE.read_text()
    return text[text.index(start) : text.index(end, text.index(start))]


UPGRADE = ("7. **Roll out a new version", "8. **Remove everything**")
TEARDOWN = ("8. **Remove everything**", "\nThe pod runs as")


def test_the_upgrades_sed_changes_the_pods_image_and_its_clusters_at_once() -> None:
    (sed,) = [words for words in commands(section(*UPGRADE)) if words[0] == "sed"]
    assert sed[1] == "-i" and sed[3] == "deploy_gateway.yaml"
    old, new = re.fullmatch(r"s\|([^|]+)\|([^|]+)\|g", sed[2]).groups()
    text = (PROJECT / "deploy_gateway.yaml").read_text()
    assert old != new and text.count(old) == 2
    (deployment,) = [doc for doc in yaml.safe_load_all(text.replace(old, new)) if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert container["image"].endswith(new) and load_settings(env).cluster_options == {"image": container["image"]}
    assert f"grep -c '{new}' deploy_gateway.yaml   # check: 2" in section(*UPGRADE)


def pods_selector() -> str:
    labels = manifests().deployment.spec.selector.match_labels
    return ",".join(f"{key}={value}" for key, value in labels.items())


def kubectl(text: str) -> list[list[str]]:
    return [words for words in commands(text) if words[0] == "kubectl"]


def test_the_guides_kubectl_commands_name_the_gateways_objects() -> None:
    deployment, service, _ = manifests()
    guide = GUIDE.read_text()
    for words in kubectl(guide):
        for word in words:
            if word.startswith("deployment/") and word != "deployment/hub":  # zero-to-jupyterhub's hub
                assert word == f"deployment/{deployment.metadata.name}", words
        if "-l" in words and "science-gateway" in option(words, "-l"):
            assert option(words, "-l") == pods_selector(), words
    assert f"kubectl get pdb -n $NS {disruption_budget().metadata.name}" in guide
    # The notebooks' GATEWAY_URL is the Service the upgrade's loop asks.
    assert jupyterhub_values()["singleuser"]["extraEnv"]["GATEWAY_URL"] == f"http://{service.metadata.name}"


def position(text: str, predicate) -> int:
    """The index of the first command of the text that the predicate accepts."""
    found = [index for index, words in enumerate(commands(text)) if predicate(words)]
    assert found, "no such command"
    return found[0]


def test_the_upgrade_waits_for_its_rollout_longer_than_a_pod_may_take_to_stop() -> None:
    upgrade = section(*UPGRADE)
    grace = manifests().deployment.spec.template.spec.termination_grace_period_seconds
    (status,) = [words for words in kubectl(upgrade) if words[1:3] == ["rollout", "status"]]
    assert status[3:6] == ["-n", "$NS", f"deployment/{manifests().deployment.metadata.name}"]
    timeout = re.fullmatch(r"--timeout=(\d+)m", status[-1]).group(1)
    assert int(timeout) * 60 > grace
    # The loop counts every answer the Service gives during the rollout, and the job submitted before it is looked up after.
    assert '"$GATEWAY_URL/jobs?limit=1"; done > answers.txt &' in upgrade and "sort answers.txt | uniq -c" in upgrade
    (job_id,) = re.findall(r'"job_id": "([\w-]+)"', upgrade)
    assert f'"$GATEWAY_URL/jobs/{job_id}"' in upgrade
    apply = position(upgrade, lambda words: words[:2] == ["kubectl", "apply"])
    assert position(upgrade, lambda words: words[0] == "curl") < apply < position(upgrade, lambda words: words[:2] == ["kill", "%1"])


def test_the_teardown_waits_for_the_pods_checks_for_clusters_left_and_unhooks_the_hub_before_the_secrets() -> None:
    teardown = section(*TEARDOWN)
    grace = manifests().deployment.spec.template.spec.termination_grace_period_seconds

    def at(predicate) -> int:
        return position(teardown, predicate)

    deleted = at(lambda words: words[:2] == ["kubectl", "delete"] and "deploy_gateway.yaml" in words)
    waited = at(lambda words: words[:2] == ["kubectl", "wait"])
    (wait,) = [words for words in kubectl(teardown) if words[1] == "wait"]
    assert "--for=delete" in wait and "pod" in wait and option(wait, "-l") == pods_selector()
    assert int(re.fullmatch(r"--timeout=(\d+)m", wait[-1]).group(1)) * 60 > grace
    clusters = at(lambda words: words[:3] == ["kubectl", "get", "daskclusters"])
    hub = at(lambda words: words[:3] == ["helm", "upgrade", "jupyterhub"])
    (hub_upgrade,) = [words for words in commands(teardown) if words[:3] == ["helm", "upgrade", "jupyterhub"]]
    assert "jupyterhub_values.yaml" not in hub_upgrade and "--reset-values" in hub_upgrade
    uninstalled = at(lambda words: words[:2] == ["helm", "uninstall"] and "dask-gateway" in words)
    secrets = at(lambda words: words[:4] == ["kubectl", "delete", "-n", "$NS"] and "secret" in words)
    (secret_delete,) = [words for words in kubectl(teardown) if "secret" in words]
    assert {"awsconfig", "gateway-results-workers", "gateway-results-reader"} <= set(secret_delete)
    assert deleted < waited < clusters < uninstalled, "the clusters end while Dask Gateway's controller still runs"
    assert hub < secrets, "no user server is started naming a Secret that is gone"
    assert "service:science-gateway" in teardown
    assert "deployment,service,networkpolicy,poddisruptionbudget" in teardown
