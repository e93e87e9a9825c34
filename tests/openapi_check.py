"""Checks every response a test receives against the service's own OpenAPI document."""

from __future__ import annotations

import re
from typing import Any, Protocol

import jsonschema
import requests
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from science_gateway.openapi import openapi_document

DOCUMENT = openapi_document()


def _route(path: str) -> str:
    for template in DOCUMENT["paths"]:
        pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^?]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not in the OpenAPI document")


class Answer(Protocol):
    """What the check reads of a response: Flask's test response, or :class:`HttpAnswer` over HTTP."""

    @property
    def status_code(self) -> int: ...
    @property
    def is_json(self) -> bool: ...
    @property
    def json(self) -> Any: ...
    @property
    def headers(self) -> Any: ...


def assert_matches_openapi(method: str, path: str, response: Answer) -> None:
    """The status is documented for this operation, so is a Retry-After it carries, and the JSON body fits its schema."""
    operation = DOCUMENT["paths"][_route(path.split("?", 1)[0])][method.lower()]
    documented = operation["responses"].get(str(response.status_code))
    assert documented, f"{method} {path} answered {response.status_code}, which the document does not list"
    if "Retry-After" in response.headers:
        assert "Retry-After" in documented.get("headers", {}), f"{method} {path}'s {response.status_code} carries Retry-After, which the document does not list"
    content = documented.get("content", {})
    if "application/json" in content:
        assert response.is_json, f"{method} {path} should answer JSON"
        schema = {**content["application/json"]["schema"], "components": DOCUMENT["components"]}
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(response.json)


class CheckedClient:
    """Flask's test client, with every response checked against the OpenAPI document."""

    def __init__(self, client: FlaskClient) -> None:
        self._client = client

    def _call(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        response = self._client.open(path, method=method, **kwargs)
        assert_matches_openapi(method, path, response)
        return response

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self._call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self._call("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self._call("DELETE", path, **kwargs)


class HttpAnswer:
    """A response over HTTP read as Flask's test response is read: ``json`` a property, ``None`` for no JSON body."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.text = response.text

    @property
    def is_json(self) -> bool:
        return self.response.headers.get("Content-Type", "").split(";")[0].strip() == "application/json"

    @property
    def json(self) -> Any:
        return self.response.json() if self.is_json else None


class CheckedHttp:
    """:class:`CheckedClient` over HTTP, for a gateway under gunicorn: each path is under ``url``."""

    def __init__(self, session: requests.Session, url: str, timeout: float = 180) -> None:
        self._session = session
        self._url = url
        self._timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> HttpAnswer:
        prepared = self._session.prepare_request(requests.Request(method, f"{self._url}{path}", **kwargs))
        # The path as given: preparing it removes dot segments (/jobs/.. would be /), which the test client sends.
        prepared.url = self._url + requests.utils.requote_uri(path)
        response = HttpAnswer(self._session.send(prepared, timeout=self._timeout))
        assert_matches_openapi(method, path, response)
        return response

    def get(self, path: str, **kwargs: Any) -> HttpAnswer:
        return self._call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> HttpAnswer:
        return self._call("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> HttpAnswer:
        return self._call("DELETE", path, **kwargs)
