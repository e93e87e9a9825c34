"""Checks every response a test receives against the service's own OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
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


def assert_matches_openapi(method: str, path: str, response: TestResponse) -> None:
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
