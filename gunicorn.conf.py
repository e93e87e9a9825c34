"""gunicorn settings, the same in the container and in ``make run``."""

# One worker process: the Dask cluster belongs to the process that created it,
# and several processes would each start a cluster of their own. Threads let
# that one process serve many requests while jobs wait on the cluster.
workers = 1
worker_class = "gthread"
threads = 16
bind = "0.0.0.0:8000"
# With threads, this is the worker's heartbeat, not a limit on a request: a job
# may run up to GATEWAY_JOB_TIMEOUT (600 s by default).
timeout = 120
# On SIGTERM a running job gets this long to finish before the worker is killed.
graceful_timeout = 630
accesslog = "-"
errorlog = "-"
# gunicorn's control socket manages workers at run time, which a one-worker
# service does not need; every instance on a host would share its one path, and
# a container's read-only home could not hold it.
control_socket_disable = True
