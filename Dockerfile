# One image for the gateway and for the Dask scheduler and workers that Dask
# Gateway starts (dask_gateway_config.yaml names this image), so that client and
# workers always run the same versions of dask, distributed, zarr and s3fs.
#
# Debian's own Python in a venv on Debian's slim image: the tests build this
# same file on a base they make locally from Debian's packages (debootstrap),
# which a python:* image could not be rebuilt from.
FROM debian:bookworm-slim AS debian-python

# ca-certificates: the object store and the hub over HTTPS.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*


FROM debian-python AS venv

# binutils: strip, for the compiled modules' debug symbols (70 MB that nothing at run time reads).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3-venv binutils \
    && rm -rf /var/lib/apt/lists/*

# A package index other than PyPI (a mirror, or the wheelhouse the tests serve on
# loopback): docker build --build-arg PIP_INDEX_URL=https://mirror.example.org/simple
ARG PIP_INDEX_URL=https://pypi.org/simple
# Apps of your own (docs/apps.md), each a package declaring the entry point
# science_gateway.apps: pip requirements, such as a package on your index, or a
# directory of this build context under examples/apps/:
# docker build --build-arg GATEWAY_APP_PACKAGES=./examples/apps/julia-set
ARG GATEWAY_APP_PACKAGES=""
COPY requirements.txt /tmp/requirements.txt
COPY examples/apps/ /build/examples/apps/
WORKDIR /build
# Then out of the venv: pip and setuptools (nothing installs at run time), the
# packages' own test suites, and debug symbols. Libraries vendored into *.libs
# are left as they are: their headers were rewritten (patchelf), which strip can break.
# hadolint ignore=SC2086
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
    && if [ -n "$GATEWAY_APP_PACKAGES" ]; then /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $GATEWAY_APP_PACKAGES; fi \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
    && find /opt/venv -depth -type d -name tests -path "*/site-packages/*/tests" -exec rm -rf {} + \
    && find /opt/venv -name "*.so" -not -path "*.libs/*" -exec strip --strip-debug {} + \
    && rm -r /tmp/requirements.txt /build


FROM debian-python

# PYTHONPATH: workers import the region code and the built-in apps (science_gateway) from /app.
# MPLCONFIGDIR: matplotlib writes its font cache there (0.1 s, at the first preview); the root is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    MPLCONFIGDIR=/tmp/matplotlib

COPY --from=venv /opt/venv /opt/venv
RUN groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin gateway

WORKDIR /app
COPY gateway.py gunicorn.conf.py ./
COPY science_gateway/ science_gateway/
# The jobs page at GET /: its template, script and style.
COPY templates/ templates/
COPY static/ static/

USER 10001

EXPOSE 8000 8001
# On the probe port that GATEWAY_PROBE_ADDRESS sets (8001 unless it says otherwise).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GATEWAY_PROBE_ADDRESS', ':8001').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# gunicorn.conf.py: one worker process with threads, because the Dask cluster
# belongs to the process that created it and several processes would each start
# one; a graceful timeout longer than a job, so that SIGTERM lets jobs finish.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "gateway:app"]
