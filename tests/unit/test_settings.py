import dask.config
import pytest

from science_gateway.settings import DEFAULT_RESULTS_URL, Settings, SettingsError, load_settings, parse_flag


@pytest.fixture(autouse=True)
def no_dask_config_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings read dask-gateway's YAML files too: these tests must not depend on the host's."""
    monkeypatch.setattr(dask.config, "paths", [])


def test_defaults_are_the_embedded_local_service() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.results_url == DEFAULT_RESULTS_URL == "s3://gateway-results"
    assert settings.n_workers == 3 and settings.zarr_format == 3
    assert not settings.uses_dask_gateway


def test_dask_gateway_is_used_when_its_own_address_variable_is_set() -> None:
    settings = load_settings({"DASK_GATEWAY__ADDRESS": "http://traefik-dask-gateway"})
    assert settings.uses_dask_gateway
    assert settings.dask_gateway_address == "http://traefik-dask-gateway"


def test_values_are_read_from_the_environment() -> None:
    settings = load_settings(
        {
            "GATEWAY_RESULTS_URL": "s3://bucket/prefix/",
            "GATEWAY_N_WORKERS": "5",
            "GATEWAY_ZARR_FORMAT": "2",
            "GATEWAY_CLUSTER_OPTIONS": '{"image": "registry/gateway:1.0", "worker_memory": 4}',
            "GATEWAY_JOB_TIMEOUT": "30.5",
            "GATEWAY_SHUTDOWN_TIMEOUT": "90",
        }
    )
    assert settings.results_url == "s3://bucket/prefix"
    assert settings.n_workers == 5
    assert settings.zarr_format == 2
    assert settings.cluster_options == {"image": "registry/gateway:1.0", "worker_memory": 4}
    assert settings.job_timeout == 30.5
    assert settings.shutdown_timeout == 90.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_N_WORKERS", "three"),
        ("GATEWAY_N_WORKERS", "0"),
        ("GATEWAY_N_WORKERS", "2.5"),
        ("GATEWAY_ZARR_FORMAT", "4"),
        ("GATEWAY_CLUSTER_OPTIONS", "{not json"),
        ("GATEWAY_CLUSTER_OPTIONS", '["a list"]'),
        ("GATEWAY_RESULTS_URL", "gs://bucket"),
        ("GATEWAY_RESULTS_URL", "s3://"),
        ("GATEWAY_JOB_TIMEOUT", "-1"),
        ("GATEWAY_CLUSTER_START_TIMEOUT", "soon"),
        ("GATEWAY_SHUTDOWN_TIMEOUT", "0"),
        ("GATEWAY_LOG_FORMAT", "xml"),
        ("GATEWAY_AUTH", "oauth"),
        ("GATEWAY_AUTH_CACHE_SECONDS", "0"),
        ("JUPYTERHUB_API_URL", "hub:8081/hub/api"),
        ("JUPYTERHUB_OAUTH_CALLBACK_URL", "/oauth_callback"),
        ("JUPYTERHUB_HOST", "hub.example.org"),
        ("GATEWAY_LOGIN_MAX_AGE", "8h"),
        ("GATEWAY_LOGIN_MAX_AGE", "0"),
        ("GATEWAY_LOGIN_MAX_AGE", str(10**12)),  # no date follows: every login's cookie would be a 500
        ("JUPYTERHUB_OAUTH_CALLBACK_URL", "https://gateway.example.org/oauth_callback/"),  # served, and hidden in the log, at one path
        ("JUPYTERHUB_OAUTH_CALLBACK_URL", "https://hub.example.org/services/other/oauth_callback"),  # not under the gateway's prefix
        ("JUPYTERHUB_SERVICE_PREFIX", "services/science-gateway/"),
        ("JUPYTERHUB_SERVICE_PREFIX", "/"),
        ("JUPYTERHUB_SERVICE_PREFIX", "//evil.example/"),
        ("JUPYTERHUB_SERVICE_PREFIX", "/services/science gateway/"),
        ("GATEWAY_MAX_RECORDS_PER_OWNER", "0"),
        ("GATEWAY_MAX_WAITING_CALLERS", "0"),
        ("GATEWAY_MAX_WAITING_CALLERS_PER_OWNER", "a few"),
        ("GATEWAY_MAX_READS_PER_OWNER", "0"),
        ("GATEWAY_MAX_ELEMENTS", "1e8"),
        ("GATEWAY_MAX_CHUNKS", "0"),
        ("GATEWAY_MAX_CHUNK_BYTES", "64MiB"),
        ("GATEWAY_MAX_CHUNK_BYTES", "268435457"),
        ("GATEWAY_MAX_RUNNING_JOBS", "four"),
        ("GATEWAY_MAX_QUEUED_JOBS", "many"),
        ("GATEWAY_MAX_JOBS_PER_OWNER", "-3"),
        ("GATEWAY_PROBE_ADDRESS", "8001"),
        ("GATEWAY_PROBE_ADDRESS", "0.0.0.0:99999"),
        ("GATEWAY_ADAPTIVE_MAX_WORKERS", "2"),
        ("GATEWAY_ADAPTIVE_MAX_WORKERS", "lots"),
        ("GATEWAY_DEFAULT_SHARDS", "1000,1000"),
        ("GATEWAY_RESULT_TTL", "a week"),
        ("GATEWAY_MAX_RESULT_TTL", "0"),
        ("GATEWAY_MAX_RESULT_TTL", "355687428096000"),
        ("GATEWAY_RESULT_TTL", "10000000000"),
        ("GATEWAY_EXPIRY_INTERVAL", "-5"),
        ("GATEWAY_OWNER_QUOTA_BYTES", "1.5e9"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_jupyterhub_authentication_reads_the_hubs_own_variables() -> None:
    settings = load_settings(
        {
            "GATEWAY_AUTH": "jupyterhub",
            "JUPYTERHUB_API_URL": "http://hub:8081/hub/api/",
            "JUPYTERHUB_API_TOKEN": "a-service-token",
            "GATEWAY_ADMIN_GROUP": "research-leads",
        }
    )
    assert settings.jupyterhub_api_url == "http://hub:8081/hub/api"
    assert settings.jupyterhub_service_name == "science-gateway" and settings.admin_group == "research-leads"
    assert settings.auth_cache_seconds == 60
    assert "a-service-token" not in repr(settings), "a logged Settings must not carry the token"
    assert settings.oauth_callback_url is None, "no browser login unless its callback is given"
    assert load_settings({"GATEWAY_LOGIN_MAX_AGE": "3600"}).login_max_age == 3600


def test_the_hubs_prefix_is_jupyterhubs_for_the_service_unless_given_and_the_callback_may_be_under_it() -> None:
    assert Settings().service_prefix == load_settings({}).service_prefix == "/services/science-gateway/"
    assert load_settings({"JUPYTERHUB_SERVICE_NAME": "gw"}).service_prefix == "/services/gw/"
    assert load_settings({"JUPYTERHUB_SERVICE_PREFIX": "/jhub/services/gw"}).service_prefix == "/jhub/services/gw/"
    for callback in ("https://hub.example.org/services/science-gateway/oauth_callback", "https://gateway.example.org/oauth_callback"):
        assert load_settings({"JUPYTERHUB_OAUTH_CALLBACK_URL": callback}).oauth_callback_url == callback


def test_jupyterhub_authentication_needs_the_hubs_api() -> None:
    with pytest.raises(SettingsError, match="JUPYTERHUB_API_URL"):
        load_settings({"GATEWAY_AUTH": "jupyterhub"})


def test_expiry_and_quota_settings() -> None:
    assert (Settings().result_ttl, Settings().max_result_ttl, Settings().owner_quota_bytes) == (None, None, None)
    settings = load_settings({"GATEWAY_RESULT_TTL": "3600", "GATEWAY_MAX_RESULT_TTL": "86400", "GATEWAY_OWNER_QUOTA_BYTES": "1000000000"})
    assert (settings.result_ttl, settings.max_result_ttl, settings.owner_quota_bytes) == (3600, 86400, 10**9)
    assert load_settings({"GATEWAY_MAX_RESULT_TTL": "600"}).result_ttl == 600, "a maximum alone is also the default"
    with pytest.raises(SettingsError, match="GATEWAY_RESULT_TTL=700 is over GATEWAY_MAX_RESULT_TTL=600"):
        load_settings({"GATEWAY_RESULT_TTL": "700", "GATEWAY_MAX_RESULT_TTL": "600"})


@pytest.mark.parametrize(
    ("word", "value"), [("true", True), ("Yes", True), ("1", True), ("FALSE", False), ("no", False), ("0", False), ("maybe", None), ("", None)]
)
def test_a_yes_or_no_query_parameter_takes_these_words_in_any_case(word: str, value: bool | None) -> None:
    assert parse_flag(word) is value
