"""The apps a gateway offers: the built-ins and those installed under the entry-point group ``science_gateway.apps``.

Each is checked once, at start-up: an entry point that does not load, a class
that is not an :class:`App`, a schema that is not valid JSON Schema (draft
2020-12) or two apps of one name stop the start-up with :class:`AppLoadError`
naming the package and the app. ``GATEWAY_APPS`` may restrict the list.

Parameters are checked against the app's schema before anything is written or
sent to the cluster (:meth:`Apps.check`); a query string's values are read as
the JSON values the schema asks for first (:meth:`Apps.from_query`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ..errors import GatewayError
from ..job_parameters import InvalidParameters
from .base import App
from .coarsen import Coarsen
from .random_array import RandomArray

ENTRY_POINT_GROUP = "science_gateway.apps"
BUILT_IN: tuple[type[App], ...] = (RandomArray, Coarsen)
# Where a built-in app comes from, as an error names it.
BUILT_IN_PACKAGE = "science-gateway (built in)"
# An app's name is a path segment of /apps/<name> and a metric label: lower-case words joined by "-".
NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
# The most schema errors one answer lists, and the longest reason it gives.
MAX_ERRORS = 20
MAX_REASON = 300


class AppLoadError(RuntimeError):
    """An app could not be offered; the message names its package and what to change. The gateway does not start."""


class UnknownApp(GatewayError, LookupError):
    """No app of this name is offered here; the answer lists those that are."""

    status, code = 404, "unknown_app"

    def __init__(self, name: str, offered: Iterable[str]) -> None:
        self.offered = sorted(offered)
        shown = name if len(name) <= 40 else name[:40] + "..."
        super().__init__(f"no app {shown!r} here; the apps are {', '.join(self.offered)} (GET /apps)")

    def details(self) -> dict[str, Any]:
        return {"apps": self.offered}


class ParametersRefused(InvalidParameters):
    """Parameters the app's schema refuses; ``error.details`` lists each failing field by JSON pointer, with the reason."""

    def __init__(self, app: str, failures: list[dict[str, str]]) -> None:
        first = failures[0]
        more = f" (and {len(failures) - 1} more in error.details)" if len(failures) > 1 else ""
        super().__init__(f"invalid parameters for app {app!r}: {first['pointer'] or '/'}: {first['reason']}{more}")
        self.failures = failures

    def details(self) -> dict[str, Any]:
        return {"details": self.failures}


class Apps:
    """The apps offered, by name."""

    def __init__(self, apps: Mapping[str, App]) -> None:
        self._apps = dict(apps)
        self._validators = {name: Draft202012Validator(app.parameters) for name, app in apps.items()}

    def __iter__(self) -> Iterator[App]:
        return iter(self._apps.values())

    def get(self, name: str) -> App:
        """The app of this name; :class:`UnknownApp` listing the apps otherwise."""
        app = self._apps.get(name) if isinstance(name, str) else None
        if app is None:
            raise UnknownApp(str(name), self._apps)
        return app

    def check(self, app: App, parameters: Any) -> dict[str, Any]:
        """The parameters, if the app's schema accepts them (whole numbers as integers); :class:`ParametersRefused` otherwise."""
        failures: list[dict[str, str]] = []
        for error in sorted(self._validators[app.name].iter_errors(parameters), key=lambda error: list(map(str, error.absolute_path))):
            pointer = "".join(f"/{_escaped(part)}" for part in error.absolute_path)
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                known = app.parameters.get("properties", {})
                failures += [
                    {"pointer": f"{pointer}/{_escaped(name)}", "reason": f"unknown parameter; the parameters are {', '.join(known)}"}
                    for name in error.instance
                    if name not in known
                ]
            else:
                failures.append({"pointer": pointer, "reason": _shortened(error.message)})
        if failures:
            raise ParametersRefused(app.name, failures[:MAX_ERRORS])
        return _whole_numbers(parameters)

    def schema_checks(self) -> dict[str, Callable[[Any], bool]]:
        """For each app, whether its schema accepts parameters: what a stored record's parameters are checked with."""
        return {name: validator.is_valid for name, validator in self._validators.items()}

    def from_query(self, app: App, query: Mapping[str, str]) -> dict[str, Any]:
        """Query-string values as the JSON values the schema asks for: "7" an integer, "1000,1000" a list; the schema then checks them."""
        properties = app.parameters.get("properties", {})
        return {name: _from_text(value, properties.get(name, {})) for name, value in query.items()}


def load_apps(only: Iterable[str] | None = None) -> Apps:
    """The built-in apps and the installed ones, checked; only those named in ``only`` (GATEWAY_APPS) when given."""
    found: dict[str, tuple[str, App]] = {}
    for package, app in _candidates():
        if app.name in found:
            raise AppLoadError(
                f"two apps are named {app.name!r}: one of package {found[app.name][0]} and one of package {package}; "
                "uninstall one of the packages, or rename its app"
            )
        found[app.name] = (package, app)
    if only is not None:
        unknown = sorted(set(only) - set(found))
        if unknown:
            raise AppLoadError(f"GATEWAY_APPS names {', '.join(unknown)}, which no installed package offers; the apps are {', '.join(found)}")
        found = {name: found[name] for name in only}
    return Apps({name: app for name, (_, app) in found.items()})


def _candidates() -> Iterable[tuple[str, App]]:
    for app_class in BUILT_IN:
        yield BUILT_IN_PACKAGE, checked_app(app_class, BUILT_IN_PACKAGE)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        package = f"{entry_point.dist.name} {entry_point.dist.version}" if entry_point.dist else "(unknown package)"
        try:
            loaded = entry_point.load()
        except Exception as exc:
            what = f"package {package}: the app {entry_point.name!r} ({entry_point.value})"
            raise AppLoadError(f"{what} could not be loaded: {type(exc).__name__}: {exc}") from exc
        yield package, checked_app(loaded, package)


def checked_app(app_class: Any, package: str) -> App:
    """One of ``app_class``, if it keeps the app contract; :class:`AppLoadError` naming the package, the app and what is wrong otherwise."""
    if not (isinstance(app_class, type) and issubclass(app_class, App)):
        raise AppLoadError(f"package {package}: {app_class!r} is not a subclass of science_gateway.apps.App")
    name = getattr(app_class, "name", None)
    label = f"package {package}: app {name!r} ({app_class.__module__}.{app_class.__qualname__})"
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise AppLoadError(f"{label}: its name must be lower-case letters and digits in words joined by '-'")
    for attribute in ("version", "description"):
        if not isinstance(getattr(app_class, attribute, None), str) or not getattr(app_class, attribute).strip():
            raise AppLoadError(f"{label}: its {attribute} must be a string that is not empty")
    schema = getattr(app_class, "parameters", None)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise AppLoadError(f"{label}: its parameters are not a valid JSON Schema (draft 2020-12): {exc.message}") from None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise AppLoadError(f"{label}: its parameters schema must describe an object (\"type\": \"object\")")
    try:
        return app_class()
    except Exception as exc:
        raise AppLoadError(f"{label}: it could not be made without arguments: {type(exc).__name__}: {exc}") from exc


def _shortened(reason: str) -> str:
    """A reason of at most about ``MAX_REASON`` characters: a long value is cut in its middle, so that why it is refused stays."""
    if len(reason) <= MAX_REASON:
        return reason
    return reason[: MAX_REASON // 2] + "..." + reason[-MAX_REASON // 2 :]


def _escaped(part: Any) -> str:
    # RFC 6901: "~" and "/" in a name are written "~0" and "~1".
    return str(part).replace("~", "~0").replace("/", "~1")


def _whole_numbers(value: Any) -> Any:
    """JSON has one number type: 100.0 is the integer 100 (as JSON Schema counts it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {name: _whole_numbers(item) for name, item in value.items()}
    return value


def _types(schema: Mapping[str, Any]) -> set[str]:
    """The JSON types a schema allows, its branches (oneOf, anyOf) included."""
    declared = schema.get("type", [])
    types = {declared} if isinstance(declared, str) else set(declared)
    for branch in (*schema.get("oneOf", ()), *schema.get("anyOf", ())):
        types |= _types(branch)
    return types


def _items(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    for branch in (schema, *schema.get("oneOf", ()), *schema.get("anyOf", ())):
        if "array" in _types(branch) and isinstance(branch.get("items"), dict):
            return branch["items"]
    return {}


def _from_text(text: str, schema: Mapping[str, Any]) -> Any:
    types = _types(schema)
    # As the API document writes integers: digits alone, no sign but "-", no leading zero. Longer
    # digits stay text, which the schema refuses: int() of thousands of digits raises.
    if "integer" in types and re.fullmatch(r"-?(0|[1-9][0-9]{0,29})", text, re.ASCII):
        return int(text)
    if "number" in types and re.fullmatch(r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?", text, re.ASCII):
        return float(text)
    if "boolean" in types and text in ("true", "false"):
        return text == "true"
    if "array" in types and "," in text:
        return [_from_text(item, _items(schema)) for item in text.split(",")]
    return text
