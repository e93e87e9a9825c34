"""An object store behind TLS with a private CA, as an in-cluster store often is: AWS_CA_BUNDLE is all the service needs.

The gateway checks and reads through botocore, and it and its workers write through obstore:
both must trust the CA the operator names, and nothing else.
"""

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import zarr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.gunicorn_gateway import start_gunicorn_gateway
from devtools.local_s3 import LocalS3, start_local_s3
from devtools.processes import stop_process
from helpers import new_secret, wait_for
from science_gateway.apps.random_array import random_chunk
from science_gateway.region_writes import chunk_selections


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, issuer_key, *, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture()
def private_ca(tmp_path: Path) -> dict[str, Path]:
    """A CA of the test's own, and a certificate for 127.0.0.1 it signed: the chain rclone serves, and its key.

    And ``another_ca``: a CA that signed nothing here, as an operator who names the wrong one names it.
    """
    ca_key, server_key, another_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_certificate = _certificate("test private CA", ca_key, None, ca_key, ca=True)
    server_certificate = _certificate("127.0.0.1", server_key, ca_certificate, ca_key, ca=False)
    another_ca = _certificate("test private CA", another_key, None, another_key, ca=True)
    paths = {"ca": tmp_path / "ca.pem", "chain": tmp_path / "chain.pem", "key": tmp_path / "key.pem", "another_ca": tmp_path / "another-ca.pem"}
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca_certificate.public_bytes(pem))
    paths["another_ca"].write_bytes(another_ca.public_bytes(pem))
    paths["chain"].write_bytes(server_certificate.public_bytes(pem) + ca_certificate.public_bytes(pem))
    paths["key"].write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )  # fmt: skip
    return paths


@pytest.fixture()
def tls_s3(private_ca: dict[str, Path], tmp_path: Path) -> Iterator[LocalS3]:
    """An S3 server behind TLS with the private CA's certificate, and the bucket ``results``."""
    s3 = start_local_s3(
        tmp_path / "s3", ("results",), access_key=f"tls-access-{secrets.token_hex(4)}", secret_key=new_secret(),
        tls=(private_ca["chain"], private_ca["key"]),
    )  # fmt: skip
    assert s3.endpoint_url.startswith("https://")
    yield s3
    s3.stop()


def test_a_store_with_a_private_ca_takes_jobs_when_aws_ca_bundle_names_it(private_ca: dict[str, Path], tls_s3: LocalS3, tmp_path: Path) -> None:
    environ = {**os.environ, **tls_s3.environ(), "AWS_CA_BUNDLE": str(private_ca["ca"]), "GATEWAY_RESULTS_URL": "s3://results"}
    gateway = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log")
    try:
        for shards in ("none", "auto"):
            answer = requests.get(f"{gateway.url}/submit_job/behind-tls-{shards}?seed=5&shards={shards}", timeout=120)
            assert answer.status_code == 200 and answer.json()["status"] == "done", answer.text
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
                patch.setenv(name, environ[name])
            for shards in ("none", "auto"):
                array = zarr.open_group(f"s3://results/behind-tls-{shards}", mode="r", storage_options={"skip_instance_cache": True})["data"]
                selection = chunk_selections(array.shape, array.chunks)[-1]
                np.testing.assert_array_equal(array[selection], random_chunk(5, len(chunk_selections(array.shape, array.chunks)) - 1, selection, "float32"))
    finally:
        stop_process(gateway.process, timeout=60)
    assert "certificate" not in gateway.log().lower(), "no TLS complaint on the way"


def test_a_store_whose_certificate_another_ca_signed_is_refused_and_nothing_is_written(
    private_ca: dict[str, Path], tls_s3: LocalS3, tmp_path: Path
) -> None:
    """AWS_CA_BUNDLE naming a CA that did not sign the store's certificate: the gateway trusts that CA alone, not the store."""
    stored = sorted(path.relative_to(tls_s3.data_dir) for path in tls_s3.data_dir.rglob("*"))
    environ = {**os.environ, **tls_s3.environ(), "AWS_CA_BUNDLE": str(private_ca["another_ca"]), "GATEWAY_RESULTS_URL": "s3://results"}
    gateway = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        def refused() -> dict | None:
            # Before its first check, readiness has the store not checked yet; and until the first read of the records has failed,
            # a submission is told they are not read yet, not why.
            answer = requests.get(f"{gateway.url}/readyz", timeout=30)
            assert answer.status_code == 200, "the process serves, the store refused or not"
            store, records = answer.json()["results_store"], answer.json()["job_records"]
            not_refused_yet = store["ready"] or store["reason"] == "not checked yet"
            return None if not_refused_yet or "could not be read" not in records["reason"] else store

        store = wait_for(refused, 120, "readiness to refuse the store and the first read of the records to fail")
        assert "certificate" in store["reason"].lower(), store
        posted = requests.post(f"{gateway.url}/jobs", json={"job_id": "never-written"}, timeout=60)
        assert (posted.status_code, posted.json()["error"]["code"], posted.headers["Retry-After"]) == (503, "storage_error", "10"), posted.text
        assert "certificate" in posted.json()["error"]["message"].lower(), posted.text
    finally:
        stop_process(gateway.process, timeout=60)
    assert sorted(path.relative_to(tls_s3.data_dir) for path in tls_s3.data_dir.rglob("*")) == stored, "nothing was written"
    assert tls_s3.secret_key not in gateway.log()
