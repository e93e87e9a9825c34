"""Every setting the service reads, read and validated in one place at start-up.

The service's own settings are ``GATEWAY_*`` environment variables. Dask Gateway
is configured the way dask-gateway itself is (``DASK_GATEWAY__ADDRESS`` and the
rest of the ``gateway.*`` dask config), and S3 through the standard ``AWS_*``
variables that botocore reads on the gateway and on every worker alike.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import dask.config

DEFAULT_RESULTS_URL = "s3://gateway-results"


class SettingsError(ValueError):
    """A setting has a value the service cannot start with; the message names it."""


@dataclass(frozen=True)
class Settings:
    results_url: str = DEFAULT_RESULTS_URL
    n_workers: int = 3
    # None: always n_workers; else Dask's adaptive scaling between n_workers and this.
    adaptive_max_workers: int | None = None
    zarr_format: Literal[2, 3] = 3
    # What a job without a shards parameter gets: "auto" (shards of about 8 MiB) or "none".
    default_shards: str = "auto"
    dask_gateway_address: str | None = None
    cluster_options: dict[str, Any] = field(default_factory=dict)
    cluster_start_timeout: float = 120.0
    job_timeout: float = 600.0
    max_elements: int = 10**8
    max_chunks: int = 10_000
    # A chunk is what a reader, a preview included, reads whole: 64 MiB is 1,600 times the tutorial's 100x100 float32 chunk.
    max_chunk_bytes: int = 64 * 2**20
    max_running_jobs: int = 4
    max_queued_jobs: int = 1000
    max_jobs_per_owner: int = 20
    # Jobs of every status one owner may have a record of: each costs the gateway memory and a stored record.
    max_records_per_owner: int = 1000
    # A room of 200 people running the README's cell at once all wait, each user at most 16 times.
    max_waiting_callers: int = 256
    max_waiting_callers_per_owner: int = 16
    # Objects of results sent at once, all readers' and one owner's; as many more may wait a moment for a place.
    max_reads: int = 64
    max_reads_per_owner: int = 32
    # Callers following a job's events at once, all and one owner's: each holds a request thread while it follows.
    max_streams: int = 256
    max_streams_per_owner: int = 8
    # Seconds a finished job's result and record are kept (None: until deleted), and the most a job may ask for.
    result_ttl: int | None = None
    max_result_ttl: int | None = None
    # How often expired results are looked for and deleted.
    expiry_interval: float = 60.0
    # Bytes of results one owner may have stored, queued or running; None: no quota.
    owner_quota_bytes: int | None = None
    probe_address: str = "0.0.0.0:8001"
    shutdown_timeout: float = 540.0
    # This process among the replicas on one results store (GATEWAY_REPLICA_ID; the pod's name in the manifest),
    # and how long a replica's lease lasts unrenewed before another takes over its jobs.
    replica_id: str = field(default="", compare=False)
    replica_lease_seconds: float = 30.0
    log_format: str = "text"
    # The apps offered, by name (GATEWAY_APPS, comma-separated); None: every app installed.
    apps: tuple[str, ...] | None = None
    auth: str = "none"
    jupyterhub_api_url: str | None = None
    # Kept out of repr: a logged Settings must not carry the token.
    jupyterhub_api_token: str = field(default="", repr=False)
    jupyterhub_service_name: str = "science-gateway"
    # Where the hub's proxy serves the gateway (JUPYTERHUB_SERVICE_PREFIX; JupyterHub's /services/<name>/ by default),
    # besides the gateway's own root.
    service_prefix: str = "/services/science-gateway/"
    admin_group: str = "gateway-admins"
    auth_cache_seconds: float = 60.0
    # Browser login through the hub (OAuth): where the hub sends the browser back, and the hub as browsers reach it.
    oauth_callback_url: str | None = None
    oauth_client_id: str = ""
    jupyterhub_host: str = ""
    # Seconds a browser's login lasts: the cookie's Max-Age, and the most its encrypted token is honoured after the login.
    # Past it the page sends the browser through the hub again, which returns it at once while the hub's own login holds.
    login_max_age: int = 8 * 3600

    @property
    def uses_dask_gateway(self) -> bool:
        return self.dask_gateway_address is not None


# The largest object a worker writes, a shard or a chunk of its own: it holds the object and its encoded copy while it
# writes it. A fixed limit, as results_objects' REQUEST_TIMEOUT gives an object of this size its time to travel.
MAX_SHARD_BYTES = 256 * 2**20

# gunicorn's limit_request_line (its default), named for the API document: a request line (method, path and query
# string) over it is refused by gunicorn with a 414 page of its own, before the gateway reads the request.
MAX_REQUEST_LINE = 4094

# The longest a result can be kept by a ttl: 100 years. An expiry time must be a date, and a ttl of
# 10**14 s is none (the fuzz test found one that stopped a job runner).
LONGEST_TTL = 100 * 365 * 24 * 3600
# Browsers keep a cookie 400 days at most; a Max-Age beyond the calendar could not even be written.
LONGEST_LOGIN = 400 * 24 * 3600
# Where the hub sends a browser back with its login's code: the path of JUPYTERHUB_OAUTH_CALLBACK_URL.
OAUTH_CALLBACK_PATH = "/oauth_callback"

# Each setting's default is written once, in Settings; the reading below takes it from here.
_DEFAULTS = Settings()


def _positive_number(environ: Mapping[str, str], name: str, default: float, kind: type) -> Any:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{name}={raw!r} is not {what}; unset it for the default {default}") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be greater than 0")
    return value


def _adaptive_max_workers(environ: Mapping[str, str]) -> int | None:
    if not environ.get("GATEWAY_ADAPTIVE_MAX_WORKERS", "").strip():
        return None
    maximum = _positive_number(environ, "GATEWAY_ADAPTIVE_MAX_WORKERS", 0, int)
    minimum = _positive_number(environ, "GATEWAY_N_WORKERS", _DEFAULTS.n_workers, int)
    if maximum < minimum:
        raise SettingsError(f"GATEWAY_ADAPTIVE_MAX_WORKERS={maximum} must be at least GATEWAY_N_WORKERS ({minimum}), the minimum")
    return maximum


def _optional_positive(environ: Mapping[str, str], name: str) -> int | None:
    """A whole number above 0, or None when unset."""
    return _positive_number(environ, name, 0, int) if environ.get(name, "").strip() else None


def _max_chunk_bytes(environ: Mapping[str, str]) -> int:
    limit: int = _positive_number(environ, "GATEWAY_MAX_CHUNK_BYTES", _DEFAULTS.max_chunk_bytes, int)
    if limit > MAX_SHARD_BYTES:
        # A chunk that is no shard's is an object of its own, and no object may be larger than a shard.
        raise SettingsError(f"GATEWAY_MAX_CHUNK_BYTES={limit} is over {MAX_SHARD_BYTES} (256 MiB), the largest object a worker writes")
    return limit


def _expiry_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    default, maximum = _optional_positive(environ, "GATEWAY_RESULT_TTL"), _optional_positive(environ, "GATEWAY_MAX_RESULT_TTL")
    if default is not None and maximum is not None and default > maximum:
        raise SettingsError(f"GATEWAY_RESULT_TTL={default} is over GATEWAY_MAX_RESULT_TTL={maximum}")
    for name, seconds in (("GATEWAY_RESULT_TTL", default), ("GATEWAY_MAX_RESULT_TTL", maximum)):
        if seconds is not None and seconds > LONGEST_TTL:
            raise SettingsError(f"{name}={seconds} is over {LONGEST_TTL} s (100 years); leave it unset to keep results until deleted")
    return {
        # With only a maximum, a job that asks for no ttl is kept that long, not for ever.
        "result_ttl": default if default is not None else maximum,
        "max_result_ttl": maximum,
        "expiry_interval": _positive_number(environ, "GATEWAY_EXPIRY_INTERVAL", _DEFAULTS.expiry_interval, float),
    }


REPLICA_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


def _replica_id(environ: Mapping[str, str]) -> str:
    """GATEWAY_REPLICA_ID, or the host's name and a random suffix: two processes never share one."""
    given = (environ.get("GATEWAY_REPLICA_ID") or "").strip()
    if given and not re.fullmatch(REPLICA_ID_PATTERN, given):
        raise SettingsError(f"GATEWAY_REPLICA_ID={given!r}: use letters, digits, '.', '_' and '-', at most 100")
    if given:
        return given
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:80].lstrip("._-") or "gateway"
    return f"{host}-{secrets.token_hex(4)}"


def _results_url(environ: Mapping[str, str]) -> str:
    url = environ.get("GATEWAY_RESULTS_URL", "").strip() or DEFAULT_RESULTS_URL
    if "://" in url and not url.startswith(("s3://", "file://")):
        raise SettingsError(
            f"GATEWAY_RESULTS_URL={url!r}: use s3://bucket[/prefix], file:///path or a plain directory"
        )
    if url.startswith("s3://") and not url[len("s3://"):].strip("/"):
        raise SettingsError(f"GATEWAY_RESULTS_URL={url!r} names no bucket; use s3://bucket[/prefix]")
    return url.rstrip("/")


def _zarr_format(environ: Mapping[str, str]) -> Literal[2, 3]:
    raw = environ.get("GATEWAY_ZARR_FORMAT", "").strip() or str(_DEFAULTS.zarr_format)
    if raw not in ("2", "3"):
        raise SettingsError(f"GATEWAY_ZARR_FORMAT={raw!r} must be 2 or 3")
    return 2 if raw == "2" else 3


def _cluster_options(environ: Mapping[str, str]) -> dict[str, Any]:
    raw = environ.get("GATEWAY_CLUSTER_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"GATEWAY_CLUSTER_OPTIONS is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise SettingsError('GATEWAY_CLUSTER_OPTIONS must be a JSON object, such as {"image": "..."}')
    return options


def _dask_gateway_address(environ: Mapping[str, str]) -> str | None:
    # dask-gateway's own configuration (DASK_GATEWAY__ADDRESS or a gateway.yaml),
    # so that the settings JupyterHub deployments already make keep working.
    config = dask.config.collect(env=environ)
    address = str(dask.config.get("gateway.address", default=None, config=config) or "").strip()
    return address or None


def _address(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = environ.get(name, "").strip() or default
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}={raw!r} must be host:port, such as {default}")
    return raw


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = environ.get(name, "").strip() or default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} must be {' or '.join(choices)}")
    return raw


# How a yes or no is written in a query parameter (wait=false); any case.
_FLAG_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _names(environ: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """A comma-separated list of names; None when the variable is unset or empty."""
    names = tuple(part.strip() for part in environ.get(name, "").split(",") if part.strip())
    return names or None


def parse_flag(text: str) -> bool | None:
    """True or False for a yes-or-no word (true/false, 1/0, yes/no); None for anything else."""
    return _FLAG_WORDS.get(text.strip().lower())


def _url(environ: Mapping[str, str], name: str, example: str) -> str | None:
    url = environ.get(name, "").strip() or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={url!r} must be an http:// or https:// URL, such as {example}")
    return url


def _jupyterhub_api_url(environ: Mapping[str, str], auth: str) -> str | None:
    # JupyterHub sets JUPYTERHUB_API_URL for the services it starts; an external service is given it.
    url = _url(environ, "JUPYTERHUB_API_URL", "http://hub:8081/hub/api")
    url = url.rstrip("/") if url else None
    if auth == "jupyterhub" and url is None:
        raise SettingsError("GATEWAY_AUTH=jupyterhub needs JUPYTERHUB_API_URL, the hub's API, such as http://hub:8081/hub/api")
    return url


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the service's settings; raise :class:`SettingsError` naming the first bad one."""
    environ = os.environ if environ is None else environ
    return Settings(
        results_url=_results_url(environ),
        n_workers=_positive_number(environ, "GATEWAY_N_WORKERS", _DEFAULTS.n_workers, int),
        adaptive_max_workers=_adaptive_max_workers(environ),
        zarr_format=_zarr_format(environ),
        default_shards=_choice(environ, "GATEWAY_DEFAULT_SHARDS", ("auto", "none"), _DEFAULTS.default_shards),
        dask_gateway_address=_dask_gateway_address(environ),
        cluster_options=_cluster_options(environ),
        cluster_start_timeout=_positive_number(environ, "GATEWAY_CLUSTER_START_TIMEOUT", _DEFAULTS.cluster_start_timeout, float),
        job_timeout=_positive_number(environ, "GATEWAY_JOB_TIMEOUT", _DEFAULTS.job_timeout, float),
        max_elements=_positive_number(environ, "GATEWAY_MAX_ELEMENTS", _DEFAULTS.max_elements, int),
        max_chunks=_positive_number(environ, "GATEWAY_MAX_CHUNKS", _DEFAULTS.max_chunks, int),
        max_chunk_bytes=_max_chunk_bytes(environ),
        max_running_jobs=_positive_number(environ, "GATEWAY_MAX_RUNNING_JOBS", _DEFAULTS.max_running_jobs, int),
        max_queued_jobs=_positive_number(environ, "GATEWAY_MAX_QUEUED_JOBS", _DEFAULTS.max_queued_jobs, int),
        max_jobs_per_owner=_positive_number(environ, "GATEWAY_MAX_JOBS_PER_OWNER", _DEFAULTS.max_jobs_per_owner, int),
        max_records_per_owner=_positive_number(environ, "GATEWAY_MAX_RECORDS_PER_OWNER", _DEFAULTS.max_records_per_owner, int),
        max_waiting_callers=_positive_number(environ, "GATEWAY_MAX_WAITING_CALLERS", _DEFAULTS.max_waiting_callers, int),
        max_waiting_callers_per_owner=_positive_number(
            environ, "GATEWAY_MAX_WAITING_CALLERS_PER_OWNER", _DEFAULTS.max_waiting_callers_per_owner, int
        ),
        max_reads=_positive_number(environ, "GATEWAY_MAX_READS", _DEFAULTS.max_reads, int),
        max_reads_per_owner=_positive_number(environ, "GATEWAY_MAX_READS_PER_OWNER", _DEFAULTS.max_reads_per_owner, int),
        max_streams=_positive_number(environ, "GATEWAY_MAX_STREAMS", _DEFAULTS.max_streams, int),
        max_streams_per_owner=_positive_number(environ, "GATEWAY_MAX_STREAMS_PER_OWNER", _DEFAULTS.max_streams_per_owner, int),
        **_expiry_settings(environ),
        owner_quota_bytes=_optional_positive(environ, "GATEWAY_OWNER_QUOTA_BYTES"),
        probe_address=_address(environ, "GATEWAY_PROBE_ADDRESS", _DEFAULTS.probe_address),
        shutdown_timeout=_positive_number(environ, "GATEWAY_SHUTDOWN_TIMEOUT", _DEFAULTS.shutdown_timeout, float),
        replica_id=_replica_id(environ),
        replica_lease_seconds=_positive_number(environ, "GATEWAY_REPLICA_LEASE_SECONDS", _DEFAULTS.replica_lease_seconds, float),
        log_format=_choice(environ, "GATEWAY_LOG_FORMAT", ("text", "json"), _DEFAULTS.log_format),
        apps=_names(environ, "GATEWAY_APPS"),
        **_auth_settings(environ),
    )


def _auth_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    auth = _choice(environ, "GATEWAY_AUTH", ("none", "jupyterhub"), _DEFAULTS.auth)
    service_name = environ.get("JUPYTERHUB_SERVICE_NAME", "").strip() or _DEFAULTS.jupyterhub_service_name
    service_prefix = _service_prefix(environ, service_name)
    return {
        "auth": auth,
        "jupyterhub_api_url": _jupyterhub_api_url(environ, auth),
        "jupyterhub_api_token": environ.get("JUPYTERHUB_API_TOKEN", "").strip(),
        "jupyterhub_service_name": service_name,
        "service_prefix": service_prefix,
        "admin_group": environ.get("GATEWAY_ADMIN_GROUP", "").strip() or _DEFAULTS.admin_group,
        "auth_cache_seconds": _positive_number(environ, "GATEWAY_AUTH_CACHE_SECONDS", _DEFAULTS.auth_cache_seconds, float),
        "oauth_callback_url": _oauth_callback_url(environ, service_prefix),
        "oauth_client_id": environ.get("JUPYTERHUB_CLIENT_ID", "").strip(),
        "jupyterhub_host": (_url(environ, "JUPYTERHUB_HOST", "https://hub.example.org") or "").rstrip("/"),
        "login_max_age": _login_max_age(environ),
    }


def _service_prefix(environ: Mapping[str, str], service_name: str) -> str:
    # JupyterHub's own rule for a service at the hub's root, unless the hub has a base_url of its own.
    raw = environ.get("JUPYTERHUB_SERVICE_PREFIX", "").strip() or f"/services/{service_name}/"
    prefix = raw if raw.endswith("/") else f"{raw}/"
    if (
        not prefix.startswith("/") or prefix == "/" or "//" in prefix
        or any(char in prefix for char in "?#%\\") or any(ord(char) <= 0x20 or ord(char) == 0x7F for char in prefix)
    ):  # fmt: skip
        raise SettingsError(
            f"JUPYTERHUB_SERVICE_PREFIX={raw!r} must be the path where the hub's proxy serves the gateway, such as /services/{service_name}/"
        )
    return prefix


def _oauth_callback_url(environ: Mapping[str, str], service_prefix: str) -> str | None:
    url = _url(environ, "JUPYTERHUB_OAUTH_CALLBACK_URL", f"https://hub.example.org{service_prefix}{OAUTH_CALLBACK_PATH.lstrip('/')}")
    # The gateway serves the callback at this path alone, at its own root or under the hub's prefix, and keeps its
    # query (the login's code) out of the access log there alone.
    paths = (OAUTH_CALLBACK_PATH, f"{service_prefix.rstrip('/')}{OAUTH_CALLBACK_PATH}")
    if url is not None and urlsplit(url).path not in paths:
        raise SettingsError(
            f"JUPYTERHUB_OAUTH_CALLBACK_URL={url!r} must end in the path {paths[1]} (through the hub's proxy)"
            f" or {paths[0]} (at the gateway's own address), where the gateway serves it"
        )
    return url


def _login_max_age(environ: Mapping[str, str]) -> int:
    seconds: int = _positive_number(environ, "GATEWAY_LOGIN_MAX_AGE", _DEFAULTS.login_max_age, int)
    if seconds > LONGEST_LOGIN:
        raise SettingsError(f"GATEWAY_LOGIN_MAX_AGE={seconds} is over {LONGEST_LOGIN} s (400 days, the longest a browser keeps a cookie)")
    return seconds
