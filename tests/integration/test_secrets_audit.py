"""After every other test: no secret in any response, log or record the session produced.

Every gateway of the tests holds the S3 secret key and a JupyterHub token in
its environment, as the Secret gives them in production, and the fault tests
ran every error path with them: a storage outage, refused logins, bad input,
timeouts, cancels, crashes. This reads what they left: each response body
the tests received, the logs of every gunicorn (with its LocalCluster
workers), of every S3 server, JupyterHub and dask-gateway-server and of the
schedulers and workers of its clusters (users' own among them), and every job record and metadata
document the S3 servers keep. Every password, secret key and token the tests
make has one form (helpers.new_secret), which the audit looks for; besides,
it looks for each secret a server made (the tokens the test hub issued,
moto's keys, the hub's cookie secret and its proxy's token).
"""

import os
import re
from pathlib import Path

import pytest

from helpers import SECRET_FORM

# Every secret the tests make has this form (helpers.new_secret).
SECRET = re.compile(SECRET_FORM)
# Text the session wrote; chunk objects are random bytes, and the dask-gateway-server's
# config file holds the write Secret's keys on purpose, as the Kubernetes Secret does.
WRITTEN_TEXT = ("*.log", "*.json")


# A spawned notebook server keeps its own token in its runtime file, in its user's home, as on any hub, and SeaweedFS
# its own credentials in the identities file it is started with: theirs, not a leak.
SERVERS_OWN_RECORD = re.compile(r"/home/[^/]+/\.local/share/jupyter/runtime/jpserver-\d+\.json$|/s3-identities\.json$")


def written_text(base: Path) -> list[Path]:
    return sorted(
        path for pattern in WRITTEN_TEXT for path in base.rglob(pattern) if path.is_file() and not SERVERS_OWN_RECORD.search(str(path))
    )


@pytest.mark.audit_after_all
def test_no_secret_in_any_response_log_or_record(
    tmp_path_factory: pytest.TempPathFactory, s3, audited_secrets: list[str], measured
) -> None:
    base = tmp_path_factory.getbasetemp()
    files = written_text(base)
    gateway_logs = [path for path in files if path.name in ("gateway.log", "first.log", "second.log")]
    if not gateway_logs:
        pytest.skip("no gateway ran in this session, so there is nothing to audit")
    assert SECRET.search(s3.secret_key) and SECRET.search(os.environ["JUPYTERHUB_API_TOKEN"]), "the pattern finds the secrets"

    leaks = []
    for path in files:
        text = path.read_text(errors="replace")
        found = [match.group() for match in SECRET.finditer(text)] + [secret for secret in audited_secrets if secret in text]
        leaks += [f"{path.relative_to(base)}: {secret[:12]}..." for secret in found]

    assert not leaks, leaks
    # The schedulers and workers of Dask Gateway clusters: the gateway's own and users' (alice's, from her notebook).
    cluster_logs = [path for path in files if path.parent.parent.name == "cluster-logs"]
    measured(
        f"secrets audit: {len(files)} files, {len(gateway_logs)} gateway logs, {len(cluster_logs)} Dask Gateway scheduler and worker logs, "
        f"{sum(p.stat().st_size for p in files) // 2**20} MB read, "
        f"{len(audited_secrets)} secrets that servers made looked for besides the patterned ones, none found"
    )
