"""The one Dask cluster the service keeps for every job.

It comes from Dask Gateway when dask-gateway is configured (``DASK_GATEWAY__ADDRESS``
and the rest of dask-gateway's own settings), and is a ``distributed.LocalCluster``
otherwise. It is obtained in the background so that the web process starts, and
answers its health and readiness checks, even while the gateway is unreachable or
refuses the login; failed attempts are retried with backoff and their reason is
what readiness reports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import dask.config
from dask_gateway import Gateway
from dask_gateway.client import GatewayServerError
from distributed import Client, LocalCluster

from .auth import why_dask_gateway_refused
from .errors import DependencyUnavailable
from .settings import Settings

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 60.0
# A readiness check must answer even when the scheduler does not.
SCHEDULER_QUERY_TIMEOUT = "5s"


# glibc settings for the worker processes, in place of distributed's default of
# returning freed memory to the system past 64 KiB: with that default every
# chunk-sized buffer was a fresh mapping, and a 400 MB job cost the workers
# 640,000 page faults and more CPU time than writing to S3 did. Buffers up to
# 64 MiB now come from the heap and are reused; at most 128 MiB is kept idle.
WORKER_MALLOC_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}


# What the LocalCluster's workers see in place of the gateway's own variables.
LOCAL_WORKER_ENVIRON = {"JUPYTERHUB_API_TOKEN": ""}


class ClusterOptionRefused(ValueError):
    """Dask Gateway offers no such cluster option, or refuses its value; the message lists what it offers."""


def _has_other_clients(cluster: Any) -> bool:
    """Whether a client besides this one is connected to the cluster's scheduler."""
    # A client of its own, not the cluster object's: closing that object closes its clients again.
    with dask.config.set({"distributed.comm.timeouts.connect": SCHEDULER_QUERY_TIMEOUT}):
        with Client(cluster.scheduler_address, security=cluster.security, set_as_default=False) as client:
            connected = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))
    return bool(set(connected) - {client.id, "fire-and-forget"})


def _stop_left_cluster(gateway: Gateway, cluster: Any, why: str) -> None:
    # Through the gateway's API: the cluster object is closed first, which leaves the cluster running.
    cluster.close()
    logger.warning("stopping Dask cluster %s, %s", cluster.name, why)
    gateway.stop_cluster(cluster.name)


class ClusterNotReady(DependencyUnavailable, RuntimeError):
    """The service has no working Dask cluster at the moment; the message says why.

    Only what needs the cluster now is refused (a waiting ``/submit_job``, a preview to draw): a job
    submitted without waiting is queued, and runs once a cluster is had.
    """

    code, dependency = "cluster_not_ready", "cluster"


@dataclass(frozen=True)
class ClusterStatus:
    ready: bool
    kind: str
    workers: int
    wanted_workers: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "kind": self.kind,
            "workers": self.workers,
            "wanted_workers": self.wanted_workers,
            "reason": self.reason,
        }


class ClusterConnection:
    """Obtains the cluster in a background thread, hands out its client, shuts it down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.kind = "dask-gateway" if settings.uses_dask_gateway else "local"
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connected = threading.Event()
        self._cluster: Any = None
        self._client: Client | None = None
        self._reason = f"starting a {self.kind} cluster"
        self._failed_attempts = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin obtaining the cluster; returns at once."""
        self._thread = threading.Thread(target=self._connect_until_done, name="cluster-connect", daemon=True)
        self._thread.start()

    def wait_until_ready(self, timeout: float) -> bool:
        """True once there is a working cluster; a lost one is replaced first."""
        self._replace_if_lost()
        return self._connected.wait(timeout)

    def client(self) -> Client:
        """The client of the cluster; :class:`ClusterNotReady` if there is none yet."""
        self._replace_if_lost()
        with self._lock:
            if self._client is None:
                raise ClusterNotReady(f"Dask cluster not ready: {self._reason}")
            return self._client

    def raise_if_failing(self) -> None:
        """:class:`ClusterNotReady` when the last attempt to obtain a cluster failed.

        While a first attempt is still under way a job may wait for it; once
        one has failed, a caller should hear at once why there is no cluster.
        """
        self._replace_if_lost()
        with self._lock:
            if self._client is None and self._failed_attempts:
                raise ClusterNotReady(f"Dask cluster not ready: {self._reason}")

    def status(self) -> ClusterStatus:
        wanted = self._settings.n_workers
        try:
            client = self.client()
        except ClusterNotReady as exc:
            return ClusterStatus(False, self.kind, 0, wanted, str(exc))
        try:
            identity = client.sync(
                client.scheduler.identity, n_workers=-1, callback_timeout=SCHEDULER_QUERY_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - whatever the reason, readiness reports it
            reason = f"Dask scheduler does not answer: {type(exc).__name__}: {exc}"
            return ClusterStatus(False, self.kind, 0, wanted, reason)
        workers = len(identity.get("workers", {}))
        if workers < wanted:
            return ClusterStatus(False, self.kind, workers, wanted, f"{workers} of {wanted} Dask workers running")
        return ClusterStatus(True, self.kind, workers, wanted, "")

    def close(self) -> None:
        """Shut down the cluster this service created, and stop trying to create one."""
        self._closing.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self._settings.cluster_start_timeout + 30)
        with self._lock:
            cluster, client = self._cluster, self._client
            self._cluster = self._client = None
            self._reason = "shut down"
        self._shut_down(cluster, client)

    def _replace_if_lost(self) -> None:
        """Start obtaining a new cluster if the client has lost its scheduler.

        A client whose scheduler connection broke has already cancelled every
        future it held, so nothing is saved by waiting for it to reconnect:
        the scheduler was killed, or Dask Gateway stopped the cluster (culled
        it when idle), and the next job wants a cluster that works.
        """
        with self._lock:
            client = self._client
            if client is None or client.status == "running" or self._closing.is_set():
                return
            lost = self._cluster
            self._cluster = self._client = None
            self._connected.clear()
            self._reason = f"the Dask cluster was lost (its client is {client.status}); starting a new one"
            logger.error("%s", self._reason)
            self._thread = threading.Thread(target=self._replace, args=(lost, client), name="cluster-replace", daemon=True)
            self._thread.start()

    def _replace(self, lost: Any, client: Client) -> None:
        self._shut_down(lost, client)
        self._connect_until_done()

    def _connect_until_done(self) -> None:
        delay = FIRST_RETRY_SECONDS
        attempt = 1
        while not self._closing.is_set():
            try:
                cluster, client = self._connect()
            except Exception as exc:  # noqa: BLE001 - every failed attempt is reported and retried
                with self._lock:
                    self._failed_attempts += 1
                    self._reason = (
                        f"attempt {attempt} to start a {self.kind} cluster failed "
                        f"({self._describe_failure(exc)}); retrying in {delay:.0f} s"
                    )
                logger.error("%s", self._reason)
                self._closing.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                attempt += 1
                continue
            with self._lock:
                if not self._closing.is_set():
                    self._cluster, self._client = cluster, client
                    self._reason = ""
                    self._failed_attempts = 0
                    self._connected.set()
                    logger.info("Dask cluster ready: %s with %d workers", self.kind, self._settings.n_workers)
                    return
            self._shut_down(cluster, client)

    def _connect(self) -> tuple[Any, Client]:
        if self._settings.uses_dask_gateway:
            return self._connect_dask_gateway()
        return self._start_local_cluster()

    def _start_local_cluster(self) -> tuple[LocalCluster, Client]:
        # Loopback only: the workers need no one but this process, and an
        # all-interfaces scheduler would accept tasks from anywhere.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_MALLOC_ENVIRON}):
            cluster = LocalCluster(
                n_workers=self._settings.n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # Without a dashboard the scheduler still serves its health and metrics
                # routes; a free port keeps two clusters on one machine off 8787.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                # The workers inherit this process's environment; they write results with its
                # S3 key, but they run every job's code and have no use for its hub token.
                env=LOCAL_WORKER_ENVIRON,
            )
        self._size(cluster)
        return cluster, self._wait_for_workers(cluster, lambda: Client(cluster, set_as_default=False))

    def _connect_dask_gateway(self) -> tuple[Any, Client]:
        # This client only creates the cluster, which keeps a gateway client of its
        # own. It is left to close itself when collected: dask-gateway's Gateway
        # closes in __del__ and fails there if it was closed before.
        gateway = Gateway(address=self._settings.dask_gateway_address)
        options = gateway.cluster_options()
        for name, value in self._settings.cluster_options.items():
            try:
                options[name] = value
            except (KeyError, TypeError, ValueError) as exc:
                offered = ", ".join(options) or "none"
                raise ClusterOptionRefused(f"GATEWAY_CLUSTER_OPTIONS: {name}={value!r} is refused ({exc}); the options it offers: {offered}") from None
        cluster = self._adopt_left_cluster(gateway, dict(options)) or gateway.new_cluster(options, shutdown_on_close=True)
        self._size(cluster)
        return cluster, self._wait_for_workers(cluster, lambda: cluster.get_client(set_as_default=False))

    def _size(self, cluster: Any) -> None:
        """A fixed number of workers, or, with GATEWAY_ADAPTIVE_MAX_WORKERS, Dask's adaptive range (LocalCluster and Dask Gateway alike)."""
        if self._settings.adaptive_max_workers is None:
            cluster.scale(self._settings.n_workers)
        else:
            cluster.adapt(minimum=self._settings.n_workers, maximum=self._settings.adaptive_max_workers)

    def _adopt_left_cluster(self, gateway: Gateway, options: dict[str, Any]) -> Any:
        """A running cluster of this identity that no client uses, such as one a killed gateway left; None if there is none.

        The gateway's hub token is its own, so its identity's clusters are the
        gateway's: the newest unused one with today's options is taken, warm
        workers and all, and every other unused one is stopped rather than
        left until Dask Gateway's idle timeout. A cluster with a client is
        another gateway's (a second replica, or one still stopping) and is left.
        """
        adopted = None
        running = gateway.list_clusters(status="running")
        for report in sorted(running, key=lambda report: report.start_time, reverse=True):
            cluster = gateway.connect(report.name, shutdown_on_close=False)
            try:
                in_use = _has_other_clients(cluster)
            except (OSError, TimeoutError) as exc:
                _stop_left_cluster(gateway, cluster, f"whose scheduler does not answer ({exc})")
                continue
            if in_use:
                cluster.close()
            elif adopted is None and report.options == options:
                logger.info("adopting Dask cluster %s, which no client uses (a gateway before this one left it)", report.name)
                cluster.shutdown_on_close = True
                adopted = cluster
            else:
                _stop_left_cluster(gateway, cluster, "which no client uses (a gateway before this one left it)")
        return adopted

    def _wait_for_workers(self, cluster: Any, make_client: Callable[[], Client]) -> Client:
        try:
            client = make_client()
            client.wait_for_workers(self._settings.n_workers, timeout=self._settings.cluster_start_timeout)
        except BaseException:
            self._shut_down(cluster, None)
            raise
        return client

    def _describe_failure(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if not self._settings.uses_dask_gateway:
            return text
        address = self._settings.dask_gateway_address
        # dask-gateway-server answers 500 to a token the hub refuses with 403 (revoked or
        # unknown ones, since JupyterHub 2): a refused login all the same.
        hub_refused = isinstance(exc, GatewayServerError) and "verifying user's JupyterHub API token" in str(exc)
        if hub_refused or (isinstance(exc, aiohttp.ClientResponseError) and exc.status in (401, 403)):
            if dask.config.get("gateway.auth.type", None) == "jupyterhub":
                why = why_dask_gateway_refused(self._settings.jupyterhub_api_url, self._settings.jupyterhub_api_token)
                return f"Dask Gateway at {address} refused the login: {why}"
            return (
                f"Dask Gateway at {address} refused the login; check DASK_GATEWAY__AUTH__TYPE "
                "and its credentials, such as JUPYTERHUB_API_TOKEN"
            )
        if isinstance(exc, aiohttp.ClientConnectionError):
            return f"cannot reach Dask Gateway at {address}; check DASK_GATEWAY__ADDRESS ({text})"
        return f"Dask Gateway at {address}: {text}"

    @staticmethod
    def _shut_down(cluster: Any, client: Client | None) -> None:
        for closable in (client, cluster):
            if closable is None:
                continue
            try:
                closable.close()
            except Exception:
                logger.exception("shutting down %s failed", type(closable).__name__)
