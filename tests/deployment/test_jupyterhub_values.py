"""jupyterhub_values.yaml against the zero-to-jupyterhub chart's own schema, and against what the gateway needs."""

from urllib.parse import urlsplit

import yaml
from jupyterhub.roles import get_default_roles

from artifacts import chart, helm_values, jupyterhub_values, manifests, readers_opt_in_values
from science_gateway.settings import load_settings
from servers import PROJECT

ACCESS_SCOPES = {"access:services!service=science-gateway", "access:services!service=dask-gateway"}


def test_our_values_merged_over_the_charts_fit_its_schema() -> None:
    errors = chart("zero-to-jupyterhub-chart").errors(jupyterhub_values())
    assert not errors, "\n".join(errors)


def test_the_schema_catches_a_misplaced_key() -> None:
    assert chart("zero-to-jupyterhub-chart").errors({"singleuser": {"networkPolicy": {"egres": []}}}), "the check must be able to fail"


def test_notebook_tokens_keep_jupyterhubs_server_scopes_and_gain_both_services() -> None:
    """A notebook's JUPYTERHUB_API_TOKEN has the `server` role's scopes, limited to those its user holds."""
    roles = jupyterhub_values()["hub"]["loadRoles"]
    (default_server,) = [role for role in get_default_roles() if role["name"] == "server"]
    assert set(roles["server"]["scopes"]) == set(default_server["scopes"]) | ACCESS_SCOPES
    assert ACCESS_SCOPES <= set(roles["user"]["scopes"]) and "self" in roles["user"]["scopes"]
    assert roles["science-gateway"] == {"services": ["science-gateway"], "scopes": ["access:services!service=dask-gateway"]}


def test_both_services_are_registered_under_the_names_the_gateway_and_dask_gateway_check() -> None:
    env = {variable.name: variable.value for variable in manifests().deployment.spec.template.spec.containers[0].env}
    services = jupyterhub_values()["hub"]["services"]
    assert set(services) == {env["JUPYTERHUB_SERVICE_NAME"], helm_values()["gateway"]["auth"]["jupyterhub"]["jupyterhubServiceName"]}
    assert "url" not in services["dask-gateway"] and services["dask-gateway"]["display"] is False, "Dask Gateway has its own Traefik"


def test_the_hubs_proxy_serves_the_gateway_and_its_home_page_lists_it_with_the_login_coming_back_there() -> None:
    """The service's url is the gateway's Service; the proxy's prefix, the hub's redirect after a login and the
    gateway's own settings agree."""
    deployment, service, _ = manifests()
    env = {variable.name: variable.value for variable in deployment.spec.template.spec.containers[0].env}
    registered = jupyterhub_values()["hub"]["services"]["science-gateway"]
    assert registered["url"] == f"http://{service.metadata.name}" and service.spec.ports[0].port == 80
    assert registered["display"] is True and registered["oauth_no_confirm"] is True
    # JupyterHub's proxy serves a service at /services/<name>/ of the hub's address.
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == f"/services/{env['JUPYTERHUB_SERVICE_NAME']}/"
    assert registered["oauth_redirect_uri"] == env["JUPYTERHUB_OAUTH_CALLBACK_URL"]
    assert urlsplit(env["JUPYTERHUB_OAUTH_CALLBACK_URL"]).path == f"{env['JUPYTERHUB_SERVICE_PREFIX']}oauth_callback"
    # The gateway accepts this configuration as it starts.
    settings = load_settings({**env, "JUPYTERHUB_API_TOKEN": "a-token"})
    assert (settings.service_prefix, settings.oauth_callback_url) == (env["JUPYTERHUB_SERVICE_PREFIX"], registered["oauth_redirect_uri"])


def test_the_admin_group_is_the_gateways() -> None:
    groups = jupyterhub_values()["hub"]["config"]["JupyterHub"]["load_groups"]
    assert list(groups) == ["gateway-admins"], "GATEWAY_ADMIN_GROUP's default"


def test_notebooks_are_told_where_the_gateway_and_dask_gateway_are() -> None:
    deployment, service, _ = manifests()
    environment = jupyterhub_values()["singleuser"]["extraEnv"]
    assert environment["GATEWAY_URL"] == f"http://{service.metadata.name}" and service.spec.ports[0].port == 80
    gateways = {variable.name: variable.value for variable in deployment.spec.template.spec.containers[0].env}
    for name in ("DASK_GATEWAY__ADDRESS", "DASK_GATEWAY__PROXY_ADDRESS", "DASK_GATEWAY__AUTH__TYPE"):
        assert environment[name] == gateways[name], f"notebooks reach Dask Gateway as the gateway does: {name}"


def test_notebooks_hold_no_storage_key_unless_the_operator_gives_them_the_readers_as_documented() -> None:
    environment = jupyterhub_values()["singleuser"]["extraEnv"]
    assert not [name for name in environment if name.startswith("AWS_")], "each user reads their own results through the gateway"
    opted_in = readers_opt_in_values()["singleuser"]["extraEnv"]
    assert set(opted_in) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
    for name, entry in opted_in.items():
        reference = entry["valueFrom"]["secretKeyRef"]
        assert (reference["name"], reference["key"]) == ("gateway-results-reader", name)
        assert reference.get("optional", False) == (name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"))
    merged = {**jupyterhub_values(), "singleuser": {**jupyterhub_values()["singleuser"], "extraEnv": {**environment, **opted_in}}}
    errors = chart("zero-to-jupyterhub-chart").errors(merged)
    assert not errors, "\n".join(errors)
    gateway_secrets = {source.secret_ref.name for source in manifests().deployment.spec.template.spec.containers[0].env_from}
    assert "gateway-results-reader" not in gateway_secrets


def test_the_values_file_is_one_yaml_document_that_the_readme_shows() -> None:
    assert len(list(yaml.safe_load_all((PROJECT / "jupyterhub_values.yaml").read_text()))) == 1
    assert "--values jupyterhub_values.yaml" in (PROJECT / "docs" / "deployment.md").read_text()
