# One image for the gateway and for the Dask scheduler and workers that Dask
# Gateway starts (dask_gateway_config.yaml names this image), so that client and
# workers always run the same versions of dask, distributed, zarr and s3fs.
FROM python:3.11.7-slim-bookworm

# PYTHONPATH: workers import the chunk code (random_chunks) from /app.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY gateway.py settings.py admission.py auth.py browser_login.py cluster.py fair_queue.py jobs.py probe_server.py random_array_job.py random_chunks.py \
     readiness.py results_store.py metrics.py preview.py openapi.py gunicorn.conf.py ./
# The jobs page at GET /: its template, script and style.
COPY templates/ templates/
COPY static/ static/

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=4)"]

# gunicorn.conf.py: one worker process with threads, because the Dask cluster
# belongs to the process that created it and several processes would each start
# one; a graceful timeout longer than a job, so that SIGTERM lets jobs finish.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "gateway:app"]
