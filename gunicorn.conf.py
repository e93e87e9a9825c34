"""gunicorn settings, the same in the container and in ``make run``."""

import os
import signal

# One worker process: the Dask cluster belongs to the process that created it,
# and several processes would each start a cluster of their own. Threads let
# that one process serve many requests while jobs wait on the cluster.
from science_gateway.access_log import LoginSecretsHidden
from science_gateway.settings import MAX_REQUEST_LINE, load_settings

# Requests that hold their thread for long (a waiting /submit_job, a preview being
# drawn) take at most GATEWAY_MAX_WAITING_CALLERS threads, the followers of jobs'
# events at most GATEWAY_MAX_STREAMS, and result reads at most
# GATEWAY_MAX_READS, with as many more waiting a moment for a place (admission.py);
# these stay free for the quick ones, /jobs polling and the page, whatever the load.
# A waiting thread blocks on its job's event and costs no CPU (docs/operations.md).
QUICK_REQUEST_THREADS = 16

workers = 1
worker_class = "gthread"
_settings = load_settings()
threads = _settings.max_waiting_callers + _settings.max_streams + 2 * _settings.max_reads + QUICK_REQUEST_THREADS
bind = "0.0.0.0:8000"
# With threads, this is the worker's heartbeat, not a limit on a request: a job
# may run up to GATEWAY_JOB_TIMEOUT (600 s by default).
timeout = 120
# On SIGTERM the worker is killed after this long. Running jobs get
# GATEWAY_SHUTDOWN_TIMEOUT (540 s by default) of it to finish; the rest is for
# cancelling the unfinished ones, recording them and stopping the cluster.
graceful_timeout = 630
# The API document's 414 (science_gateway/openapi.py) names this limit.
limit_request_line = MAX_REQUEST_LINE
accesslog = "-"
errorlog = "-"
# gunicorn's log lines, but the OAuth callback's: its query holds the login's code and state (access_log.py).
logger_class = LoginSecretsHidden
# gunicorn's control socket manages workers at run time, which a one-worker
# service does not need; every instance on a host would share its one path, and
# a container's read-only home could not hold it.
control_socket_disable = True
# X-Forwarded-Proto and the like are believed only from these addresses: gunicorn's
# own variable, and its default of loopback alone, made explicit. Nothing here needs
# them: the login cookie is Secure when the callback URL is https, not when a header says so.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def post_worker_init(worker):
    """Serve the probes on their own port, and tell the jobs of a SIGTERM when it arrives.

    The probe server runs in this process, where the app's readiness is kept
    (probe_server.py). gunicorn's own SIGTERM handler stops taking connections
    and lets the requests in flight finish; queued jobs must not start
    meanwhile, and the time running jobs get to finish counts from the signal.
    """
    from gateway import probe_answer, services
    from science_gateway.probe_server import ProbeServer

    gateway = services(worker.wsgi)
    ProbeServer(gateway.settings.probe_address, lambda path: probe_answer(gateway, path)).start()
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        gateway.jobs.stop_starting_jobs()
        gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, stop)


def worker_exit(server, worker):
    """Stop the gateway (its running jobs finish, then its cluster) before the interpreter begins to exit.

    At the exit, Python shuts down its thread pools before the atexit hooks run: a job whose tasks were
    still being sent then (one started a moment before SIGTERM) failed with "cannot schedule new futures
    after shutdown". Here the pools still work; the atexit hook, for other servers, finds it stopped.
    """
    from gateway import services

    services(worker.wsgi).close()
