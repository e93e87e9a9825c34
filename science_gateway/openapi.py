"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``, built from the apps offered.

Each app's parameters schema is a component (``<app>.parameters``), and the
body of ``POST /jobs`` is one of a job of each app; ``/submit_job``'s query
parameters are the first app's, as a query string writes them.
"""

from __future__ import annotations

import copy
from typing import Any

from .apps.base import App
from .apps.registry import Apps, load_apps
from .job_parameters import JOB_ID_PATTERN, JOB_ID_RULE
from .job_records import MAX_PAGE, OUTPUT_DTYPES, STATUSES
from .settings import LONGEST_TTL, MAX_REQUEST_LINE

PREVIEW_SIZES = ("full", "thumbnail")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = headers
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed job id or parameter; the message says what is allowed, and error.details lists each parameter the app's schema refuses by JSON pointer",
        401: "With GATEWAY_AUTH=jupyterhub: no JupyterHub token, or one the hub does not accept",
        403: "With GATEWAY_AUTH=jupyterhub: the token does not grant access:services!service=<this service>, or another site made a browser send its login cookie",
        404: "No such job of the caller's (another user's job is not found either), no such source, no such app (unknown_app, error.apps lists them), no such object in its result, or no such route",
        405: "Method not allowed",
        409: "The id names a job of other parameters (error.differences names each), the job was cancelled, it or a source is not done, or a source was deleted",
        # Size limits are products of sides and the operator's settings, which no JSON Schema states: parameters
        # that fit their app's schema may still be over one, and this is the one answer they get for it.
        413: "The job's array is over a size limit, named in the message (GATEWAY_MAX_ELEMENTS, GATEWAY_MAX_CHUNKS, GATEWAY_MAX_CHUNK_BYTES, 256 MiB a shard), even with parameters that fit the app's schema; or the body is over 16 KiB",
        415: "The Content-Type is not application/json, even with no body",
        416: "No byte of the requested range is in the object; Content-Range says its size",
        429: "Over a limit on waiting callers (all, or one owner's), queued jobs, one owner's jobs, one owner's records, stored bytes, one owner's reads or streams of events (all, or one owner's) (error.limit, error.setting; error.usage for quota_exceeded); Retry-After says when to try again",
        500: "The job failed on the cluster (job_failed), or the gateway failed unexpectedly (internal_error; its log says more)",
        502: "The job failed because the results store failed (storage_error; error.job is its record): submit it again once the store is back",
        503: (
            "A shared dependency is out: the results store failed or cannot be reached (storage_error), the job records "
            "are not read yet (storage_error), or no working Dask cluster (cluster_not_ready); error.dependency names it "
            "(results_store, job_records, cluster) and Retry-After says when to try again; nothing is kept of the request. "
            "Or the gateway is stopping (gateway_stopping, Retry-After), the job was interrupted by a stop (interrupted), "
            "or JupyterHub cannot be asked about a token (auth_unavailable)"
        ),
        504: "The job ran over GATEWAY_JOB_TIMEOUT and was cancelled",
    }
    return {str(status): _json(meaning[status], "Error", _RETRY_AFTER if status in (429, 503) else None) for status in statuses}


# The seconds to wait before trying again: with every 429, and with a 503 of a dependency's outage or of a stop.
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before sending the request again", "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": f"A job id: {JOB_ID_RULE}.",
    "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
}
_PAIR = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
# An integer as a query string writes it (digits alone), and a positive one, at most 12 digits (the apps' sides are at most 2**40).
_INTEGER_TEXT, _POSITIVE_TEXT = "-?(0|[1-9][0-9]{0,11})", "[1-9][0-9]{0,11}"
TTL_DESCRIPTION = "Seconds the result is kept once the job has finished, at most GATEWAY_MAX_RESULT_TTL; absent: GATEWAY_RESULT_TTL"
_LOCATION = {"Location": {"description": "The job's record", "schema": {"type": "string"}}}
_OWNER = {
    "name": "owner",
    "in": "path",
    "required": True,
    "description": "The job's owner: the caller (any caller) or, for members of GATEWAY_ADMIN_GROUP, any user; for anyone else, 404",
    "schema": {"type": "string"},
}
_OBJECT_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "An object of the result's Zarr group, such as zarr.json or data/c.0.0: path segments of letters, digits, '.', '_' and '-'",
    "schema": {"type": "string"},
}
_RESULT_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
    "Accept-Ranges": {"schema": {"const": "bytes"}},
}

# The dependencies /readyz reports, each named by a 503 of its outage (error.dependency).
DEPENDENCIES = ("cluster", "results_store", "job_records")
# Beside them in /readyz: this replica, the others seen, and whether one runs where there may be only one.
READINESS_PARTS = (*DEPENDENCIES, "replicas")
_DEPENDENCY = {
    "type": "object",
    "required": ["ready", "reason"],
    "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string", "description": "Why it is not ready; empty when it is"}},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "url": {"type": "string", "description": "With job_exists: the existing result"},
                    "differences": {
                        "type": "object",
                        "description": "With job_exists: each parameter of the request that differs from the existing job's",
                        "additionalProperties": {"type": "object", "required": ["existing", "requested"], "properties": {"existing": {}, "requested": {}}},
                    },
                    "limit": {"type": "integer", "description": "With 429: the limit that was reached"},
                    "setting": {"type": "string", "description": "With 429: the setting that sets that limit"},
                    "usage": {"type": "integer", "description": "With quota_exceeded: the owner's stored bytes"},
                    "details": {
                        "type": "array",
                        "description": "With invalid_parameters from an app's schema: each failing parameter by JSON pointer, and why",
                        "items": {"type": "object", "required": ["pointer", "reason"], "properties": {"pointer": {"type": "string"}, "reason": {"type": "string"}}},
                    },
                    "apps": {"type": "array", "items": {"type": "string"}, "description": "With unknown_app: the apps offered"},
                    "dependency": {
                        "type": "string",
                        "enum": list(DEPENDENCIES),
                        "description": "With a 503 of a dependency's outage: the part of /readyz that is out",
                    },
                    "job": _ref("Job"),
                },
            }
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "status", "url", "array_url", "http_url", "app", "app_version", "parameters", "shape", "chunks", "dtype", "progress", "submitted_at"],
        "properties": {
            "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "owner": {"type": ["string", "null"], "description": "The JupyterHub user who submitted it; null without authentication"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "url": {"type": "string", "description": "The result: a Zarr group holding the array 'data'"},
            "array_url": {"type": "string", "description": "The Zarr array itself"},
            "http_url": {
                "type": "string",
                "format": "uri",
                "description": "The result's Zarr group, read through this gateway by its owner (and admins) with their token: xr.open_zarr(http_url, storage_options={'headers': {'Authorization': 'token <token>'}})",
            },
            "app": {"type": "string", "description": "The app that computes it (GET /apps/{app})"},
            "app_version": {"type": "string"},
            "parameters": {"type": "object", "description": "The app's parameters as planned: every default filled in, a drawn seed included"},
            "shape": {**_PAIR, "description": "The shape of the array written, 'data'"},
            "chunks": _PAIR,
            "dtype": {"type": "string", "enum": sorted(OUTPUT_DTYPES)},
            "shards": {"oneOf": [_PAIR, {"type": "null"}], "description": "Zarr 3 shards, each one object; null: one object per chunk"},
            "progress": {
                "type": "object",
                "required": ["chunks_written", "chunks_total"],
                "properties": {"chunks_written": {"type": "integer", "minimum": 0}, "chunks_total": {"type": "integer", "minimum": 1}},
            },
            "submitted_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "seconds": {"type": ["number", "null"], "description": "Running time, once finished"},
            "ttl": {"type": ["integer", "null"], "description": "Seconds the result is kept once finished; null: until deleted"},
            "expires_at": {"type": ["string", "null"], "format": "date-time", "description": "When the result and record are deleted; set when the job finishes"},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                ]
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["owner", "stored_bytes", "jobs", "quota_bytes"],
        "properties": {
            "owner": {"type": ["string", "null"], "description": "null without authentication: then every caller is one owner"},
            "stored_bytes": {"type": "integer", "minimum": 0},
            "jobs": {"type": "integer", "minimum": 0},
            "quota_bytes": {"type": ["integer", "null"], "description": "GATEWAY_OWNER_QUOTA_BYTES; null: no quota"},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "next_cursor": {"type": ["string", "null"], "description": "Pass as ?cursor= for the next page; null on the last"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status", "failing", "message", *READINESS_PARTS],
        "properties": {
            "status": {"enum": ["ready", "degraded"], "description": "degraded: a dependency is out, and the requests that need it answer 503 with Retry-After"},
            "failing": {"type": "array", "items": {"enum": list(READINESS_PARTS)}, "description": "The dependencies that are out"},
            "message": {"type": "string", "description": "Why each is out; empty when ready"},
            **{name: _DEPENDENCY for name in READINESS_PARTS},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "App": {
        "type": "object",
        "required": ["name", "version", "description", "parameters"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "description": {"type": "string"},
            "parameters": {"type": "object", "description": "The JSON Schema (draft 2020-12) of the app's parameters"},
        },
    },
    "AppList": {"type": "object", "required": ["apps"], "properties": {"apps": {"type": "array", "items": _ref("App")}}},
}
_JOB_FIELDS = {
    "job_id": {"type": "string", "pattern": JOB_ID_PATTERN, "description": "Picked by the service when absent"},
    "ttl": {"type": ["integer", "null"], "minimum": 1, "maximum": LONGEST_TTL, "description": TTL_DESCRIPTION},
}
# The first app: /submit_job's, and that of a POST /jobs body without "app".
FIRST_APP = "random-array"


def _parameters_name(app: App) -> str:
    return f"{app.name}.parameters"


def _app_schemas(apps: Apps) -> dict[str, Any]:
    """Each app's parameters, and the body of POST /jobs: a job of one of the apps, or the first app's parameters beside job_id and ttl."""
    schemas: dict[str, Any] = {_parameters_name(app): copy.deepcopy(app.parameters) for app in apps}
    requests = []
    for app in apps:
        name = f"{app.name}.job"
        schemas[name] = {
            "type": "object",
            "additionalProperties": False,
            # Parameters the app requires make "parameters" required too.
            "required": ["app", "parameters"] if app.parameters.get("required") else ["app"],
            "properties": {"app": {"const": app.name}, "parameters": _ref(_parameters_name(app)), **_JOB_FIELDS},
        }
        requests.append(_ref(name))
    first = next((app for app in apps if app.name == FIRST_APP), None)
    if first is not None:
        schemas["FirstAppJob"] = {
            "type": "object",
            "additionalProperties": False,
            "description": f"Without \"app\": a job of {FIRST_APP}, its parameters beside job_id and ttl",
            "properties": {**copy.deepcopy(first.parameters["properties"]), **_JOB_FIELDS},
        }
        requests.append(_ref("FirstAppJob"))
    schemas["JobRequest"] = {"oneOf": requests}
    return schemas


def _list_pattern(schema: dict[str, Any]) -> str:
    """A list of integers as a query string writes it (1000,1000), as many as the schema allows."""
    items = schema.get("items", {})
    item = _POSITIVE_TEXT if items.get("minimum", 0) >= 1 else _INTEGER_TEXT
    count = schema.get("minItems", 2)
    if count == schema.get("maxItems"):
        return "^" + ",".join([item] * count) + "$"
    return f"^{item}(,{item})+$"


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema as a query string writes its value: a list as 1,2; null left out."""
    branches = [*schema.get("oneOf", ()), *schema.get("anyOf", ())]
    if branches:
        written = [_query_schema(branch) for branch in branches if branch.get("type") != "null"]
        return written[0] if len(written) == 1 else {"anyOf": written}
    types = [schema["type"]] if isinstance(schema.get("type"), str) else [kind for kind in schema.get("type", []) if kind != "null"]
    if types == ["array"]:
        return {"type": "string", "pattern": _list_pattern(schema)}
    kept = {key: value for key, value in schema.items() if key in ("enum", "minimum", "maximum", "pattern", "default")}
    return {**kept, "type": types[0]} if len(types) == 1 else kept


def _first_app_query(apps: Apps) -> list[dict[str, Any]]:
    first = next((app for app in apps if app.name == FIRST_APP), None)
    properties = first.parameters["properties"] if first is not None else {}
    return [
        {"name": name, "in": "query", "schema": _query_schema(schema), **({"description": schema["description"]} if "description" in schema else {})}
        for name, schema in properties.items()
    ]


# An event's id as a caller sends it back: a whole number below 10**16, which JSON and JavaScript hold exactly
# for every id a gateway gives (microseconds since 1970).
LAST_EVENT_ID_PATTERN = "^[0-9]{1,16}$"

# What a probe or a Prometheus scrape reaches without a token.
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


# gunicorn's answer, not the gateway's: it refuses a request line over its limit before the gateway reads it.
_REQUEST_LINE_TOO_LONG = {
    "description": f"The request line (method, path and query string) is over {MAX_REQUEST_LINE} bytes: gunicorn refuses it with an HTML page, before the gateway reads the request",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def _with_request_line_limit(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation may be answered 414 by gunicorn."""
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"]["414"] = _REQUEST_LINE_TOO_LONG
    return paths


def _with_authentication(paths: dict[str, Any]) -> dict[str, Any]:
    """Every other operation takes the JupyterHub token, and may answer 401, 403 or 503 for it."""
    for path, operations in paths.items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{}, {"jupyterhubToken": []}]
            operation["responses"] = {**operation["responses"], **_errors(401, 403, 503)}
    return paths


def _job_paths(prefix: str, owner: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's operations under ``prefix``: the caller's own job at /jobs/{job_id}, an owner's at /users/{owner}/jobs/{job_id}.

    The more specific paths come first, as the routes take them.
    """
    job = [*owner, _JOB_ID]
    result = {
        "summary": "An object of a done job's result (its Zarr group, the record's http_url), read-only: Range of one part, ETag, If-None-Match",
        "responses": {
            "200": {"description": "The whole object", "headers": _RESULT_HEADERS, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "206": {"description": "The requested bytes; Content-Range says which", "headers": _RESULT_HEADERS, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "304": {"description": "Unchanged since the ETag given in If-None-Match"},
            **_errors(400, 404, 409, 416, 429, 503),
        },
    }
    return {
        f"{prefix}/preview.png": {
            "get": {
                "summary": "A colour-mapped picture of a finished job's array, averaged down on the workers to at most 500 values a side",
                "parameters": [
                    *job,
                    {"name": "size", "in": "query", "schema": {"type": "string", "enum": list(PREVIEW_SIZES), "default": "full"}, "description": "thumbnail: at most 96 pixels a side, one per averaged value, no title or colour bar"},
                ],
                "responses": {
                    "200": {"description": "PNG: 600x500 pixels with title and colour bar, or the thumbnail", "headers": {"ETag": {"schema": {"type": "string"}}}, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                    "304": {"description": "Unchanged since the ETag given in If-None-Match"},
                    **_errors(400, 404, 409, 429, 500, 503),
                },
            }
        },
        f"{prefix}/events": {
            "get": {
                "summary": "The job's record at each change, as Server-Sent Events, until it is done, failed or cancelled; Last-Event-ID resumes after that event",
                "parameters": [
                    *job,
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN}, "description": "The id of the last event received: only later events are sent"},
                ],
                "responses": {
                    "200": {
                        "description": "text/event-stream: 'retry: 2000', then for each change 'id: <increasing integer>', 'event: job' and 'data: <the record, as GET of the job answers it>'; a ': keep-alive' comment at least every 15 s; closed after the final event",
                        "headers": {"Cache-Control": {"schema": {"type": "string", "const": "no-cache"}}, "X-Accel-Buffering": {"schema": {"type": "string", "const": "no"}}},
                        # The schema of each event, as a client's parser gives it (its fields); data is the record's JSON.
                        "content": {"text/event-stream": {"schema": {
                            "type": "object",
                            "required": ["id", "event", "data"],
                            "properties": {
                                "id": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
                                "event": {"const": "job"},
                                "data": {"type": "string", "contentMediaType": "application/json"},
                                "retry": {"type": "integer"},
                            },
                        }}},
                    },
                    "204": {"description": "The job is finished and Last-Event-ID is its final event's, or later: nothing more will come"},
                    **_errors(400, 404, 429, 503),
                },
            }
        },
        f"{prefix}/cancel": {
            "post": {
                "summary": "Cancel a queued or running job, as DELETE does, but never delete one: a job that finished first keeps its result",
                "parameters": job,
                "responses": {
                    "200": _json("Cancelled (or cancelled already)", "Job"),
                    "409": _json("job_finished: the job is done or failed; error.job is its record", "Error"),
                    **_errors(400, 404, 503),
                },
            }
        },
        f"{prefix}/result/{{key}}": {"get": {**result, "parameters": [*job, _OBJECT_KEY]}},
        f"{prefix}/result": {"get": {**result, "summary": "The result's root: it has no object of its own (404); its objects are below it", "parameters": job}},
        prefix: {
            "get": {"summary": "A job's record", "parameters": job, "responses": {"200": _json("The record", "Job"), **_errors(400, 404, 503)}},
            "delete": {
                "summary": "Cancel a queued or running job; delete a finished job's array and record",
                "parameters": job,
                "responses": {"200": _json("Cancelled", "Job"), "204": {"description": "Deleted"}, **_errors(400, 404, 503)},
            },
        },
    }


def openapi_document(apps: Apps | None = None) -> dict[str, Any]:
    """The document of a gateway offering ``apps``; by default every app installed."""
    apps = apps if apps is not None else load_apps()
    job_parameters = [
        *_first_app_query(apps),
        {"name": "ttl", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": LONGEST_TTL}, "description": TTL_DESCRIPTION},
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Science gateway",
            "version": "1.0.0",
            "description": "Runs apps' jobs on a Dask cluster and stores each result in object storage as Zarr: " + ", ".join(f"{app.name} ({app.description})" for app in apps),
        },
        "paths": _with_request_line_limit(_with_authentication({
            "/": {
                "get": {
                    "summary": "Liveness in words; the jobs page for a browser (Accept: text/html)",
                    "responses": {
                        "200": {
                            "description": "Gateway up and running! in text/plain; in text/html, the recent jobs and a form to submit one",
                            "content": {"text/plain": {"schema": {"type": "string"}}, "text/html": {"schema": {"type": "string"}}},
                        },
                        **_errors(503),
                    },
                }
            },
            "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": _json("Alive", "Health")}}},
            "/readyz": {
                "get": {
                    "summary": "This process serves requests: ready, or degraded naming the dependencies that are out; each dependency's state",
                    "responses": {
                        "200": _json("Serving: status ready, or degraded with the dependencies that are out in failing", "Ready"),
                        "503": _json("gateway_stopping: the gateway is stopping (SIGTERM) and takes no new requests; each dependency's state beside", "Error"),
                    },
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics: jobs submitted, ended by outcome, their durations, running and queued jobs, workers, S3 errors", "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/submit_job/{job_id}": {
                "get": {
                    "summary": "Submit a job (or, for an id of the caller's with these parameters, that job); by default answer once its array is completely written",
                    "parameters": [_JOB_ID, {"name": "wait", "in": "query", "schema": {"type": "boolean", "default": True}, "description": "false: answer at once, 202 (200 for a job of this id and these parameters that is done)"}, *job_parameters],
                    "responses": {"200": _json("Done", "Job"), "202": _json("Queued (wait=false), or still queued after GATEWAY_JOB_TIMEOUT: poll its Location", "Job", _LOCATION), **_errors(400, 404, 409, 413, 429, 500, 502, 503, 504)},
                }
            },
            "/jobs": {
                "get": {
                    "summary": "Jobs, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the previous page"},
                    ],
                    "responses": {"200": _json("A page of jobs", "JobList"), **_errors(400, 503)},
                },
                "post": {
                    "summary": "Submit a job of an app without waiting: {\"app\": ..., \"parameters\": {...}}, or the first app's parameters alone",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobRequest")}}},
                    "responses": {
                        "200": _json("The caller's job of this id and these parameters, done already", "Job"),
                        "202": _json("Queued (or, for an id of the caller's with these parameters, that job, queued or running)", "Job", _LOCATION),
                        **_errors(400, 404, 409, 413, 415, 429, 503),
                    },
                },
            },
            "/apps": {"get": {"summary": "The apps offered, each with the JSON Schema of its parameters", "responses": {"200": _json("The apps", "AppList")}}},
            "/apps/{name}": {
                "get": {
                    "summary": "One app",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("The app", "App"), **_errors(404)},
                }
            },
            "/usage": {
                "get": {
                    "summary": "The caller's stored bytes (done, queued and running jobs) and the quota they count against",
                    "responses": {"200": _json("Usage", "Usage"), **_errors(503)},
                }
            },
            **_job_paths("/jobs/{job_id}", []),
            **_job_paths("/users/{owner}/jobs/{job_id}", [_OWNER]),
        })),
        "components": {
            "schemas": {**_SCHEMAS, **_app_schemas(apps)},
            "securitySchemes": {
                "jupyterhubToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token <JupyterHub API token>' or 'Bearer <token>'; needed only with GATEWAY_AUTH=jupyterhub",
                }
            },
        },
    }
