"""The science gateway's Python client: ``Gateway().submit(app, **parameters).wait()``, then ``job.open()``."""

__version__ = "0.1.0"

from .errors import (  # after __version__, which transport.py sends
    ConfigurationError,
    GatewayClientError,
    GatewayRefused,
    GatewayUnavailable,
    JobCancelled,
    JobFailed,
    JobNotDone,
    JobNotFound,
    JobUnsuccessful,
    MissingExtra,
    NotAuthenticated,
    TooManyRequests,
    WaitTimeout,
)
from .gateway import Gateway, new_job_id
from .jobs import Job

__all__ = [
    "ConfigurationError",
    "Gateway",
    "GatewayClientError",
    "GatewayRefused",
    "GatewayUnavailable",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotDone",
    "JobNotFound",
    "JobUnsuccessful",
    "MissingExtra",
    "NotAuthenticated",
    "TooManyRequests",
    "WaitTimeout",
    "new_job_id",
    "__version__",
]
