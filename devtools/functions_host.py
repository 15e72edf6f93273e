"""The registered functions invoked as the Functions host and the Python worker invoke them.

Shared by the tests (tests/test_functions.py re-exports these) and the local development server
(devtools/serve.py), so both call the app's functions one way: each is taken from
`function_app.app.get_functions()`; HTTP functions get a `func.HttpRequest` with route parameters parsed from
the registered route (ASP.NET-style templates, matched case-insensitively like the host); the blob trigger
gets an SDK `BlobClient` made by the blob extension's own converter from the `model_binding_data` the host
sends; a queue-triggered function gets a `func.QueueMessage` decoded by azure.functions' converter from what
an output binding was given.
"""

from __future__ import annotations

import functools
import json
import re
import typing
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_binding
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessageInConverter, QueueMessageOutConverter
from azurefunctions.extensions.base import Datum as ExtensionDatum
from azurefunctions.extensions.bindings.blob.blobClientConverter import BlobClientConverter

from function_app import app  # reads no setting at import: callers may set them later

ROUTE_PREFIX = "api"  # host.json extensions.http.routePrefix (not set: the host's default)


@functools.cache
def registered_functions() -> tuple[Any, ...]:
    """`app.get_functions()` indexes the app and may run once per process (a second call raises on the
    'duplicate' names), like the host's single indexing; every caller shares this one result."""
    return tuple(app.get_functions())


def registered(name: str) -> Any:
    return next(f for f in registered_functions() if f.get_function_name() == name)


def bindings(name: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(registered(name).get_function_json())
    return list(data["bindings"])


class CapturedOut(func.Out[Any]):
    """The worker's output-binding holder: the function sets the value, the host then sends it."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        assert self.value is not None
        return self.value


# -- HTTP -------------------------------------------------------------------------------------------------

_PARAMETER = re.compile(r"\{(\*?)(\w+)(?::[^}?]+)?(\??)\}")


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP-triggered function as the host indexes it: its route template, methods and auth level."""

    function: Any
    template: str
    methods: tuple[str, ...] | None  # None: every method
    auth_level: str  # ANONYMOUS | FUNCTION | ADMIN
    trigger_name: str
    queue_outputs: tuple[tuple[str, str], ...]  # (argument name, queue name) of each queue output binding

    @property
    def name(self) -> str:
        return str(self.function.get_function_name())

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters when `path` (below the route prefix, no query) matches the template."""
        return _route_params(self.template, path)

    @property
    def literal_segments(self) -> int:
        """ASP.NET routing prefers a template with more literal segments when two match."""
        return sum(1 for part in self.template.split("/") if not _PARAMETER.fullmatch(part))


def _route_params(template: str, path: str) -> dict[str, str] | None:
    """`{name}`, `{name:constraint}` (constraint not checked), a last `{name?}` and `{*rest}` of the
    host's templates; literals match case-insensitively, as the host's routes do."""
    pattern = ""
    position = 0
    for parameter in _PARAMETER.finditer(template):
        pattern += re.escape(template[position:parameter.start()])
        catch_all, name, optional = parameter.groups()
        body = f"(?P<{name}>.+)" if catch_all else f"(?P<{name}>[^/]+)"
        if optional and pattern.endswith("/"):
            pattern = pattern[:-1] + f"(?:/{body})?"
        else:
            pattern += body + ("?" if optional else "")
        position = parameter.end()
    pattern += re.escape(template[position:])
    match = re.fullmatch(pattern, path.strip("/"), flags=re.IGNORECASE)
    if match is None:
        return None
    return {key: value for key, value in match.groupdict().items() if value is not None}


def http_routes() -> list[HttpRoute]:
    routes = []
    for fn in registered_functions():
        binds = json.loads(fn.get_function_json())["bindings"]
        trigger = next((b for b in binds if b["type"] == "httpTrigger"), None)
        if trigger is None:
            continue
        methods = trigger.get("methods")
        routes.append(HttpRoute(
            fn, trigger.get("route") or fn.get_function_name(),
            tuple(m.upper() for m in methods) if methods else None,
            str(trigger.get("authLevel", "FUNCTION")).upper(), trigger["name"],
            tuple((b["name"], b["queueName"]) for b in binds if b["type"] == "queue" and b["direction"] == "OUT")))
    return routes


def find_route(method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | None:
    """The function serving `METHOD <path below /api/>` and its route parameters, or None (the host's 404)."""
    found = []
    for route in http_routes():
        if route.methods is not None and method.upper() not in route.methods:
            continue
        params = route.match(path)
        if params is not None:
            found.append((route, params))
    return max(found, key=lambda pair: pair[0].literal_segments) if found else None


def invoke_http(route: HttpRoute, request: func.HttpRequest) -> tuple[func.HttpResponse, dict[str, CapturedOut]]:
    """Call the function with the request and a holder per output binding (the host sends them after)."""
    kwargs: dict[str, Any] = {route.trigger_name: request}
    outputs: dict[str, CapturedOut] = {}
    for arg_name, queue_name in route.queue_outputs:
        outputs[queue_name] = kwargs[arg_name] = CapturedOut()
    response = route.function.get_user_function()(**kwargs)
    return response, outputs


def queued_messages(out: CapturedOut) -> list[str]:
    """What an output binding was given, as the host sends it: one message, or one per item of a list."""
    if out.value is None:
        return []
    return [str(item) for item in out.value] if isinstance(out.value, list) else [out.value]


# -- queue and blob triggers ------------------------------------------------------------------------------

def queue_function(queue_name: str) -> Any:
    """The function triggered by messages on `queue_name` (%SETTING% names are not resolved)."""
    for fn in registered_functions():
        for binding in json.loads(fn.get_function_json())["bindings"]:
            if binding["type"] == "queueTrigger" and binding["queueName"] == queue_name:
                return fn
    raise LookupError(f"no registered function is triggered by queue {queue_name!r}")


def deliver_queue_message(queue_name: str, body: str, *, dequeue_count: int = 1) -> None:
    """Decode the message through azure.functions' converters as the worker does, then call the function."""
    encoded = QueueMessageOutConverter.encode(body, expected_type=str)
    message = QueueMessageInConverter.decode(
        Datum(encoded.value, encoded.type),
        trigger_metadata={"Id": Datum(uuid.uuid4().hex, "string"), "DequeueCount": Datum(dequeue_count, "int")})
    assert isinstance(message, func.QueueMessage)
    queue_function(queue_name).get_user_function()(message)


def fire_blob_trigger(container: str, blob_name: str, function_name: str = "ExportOnNewSegmentFile") -> None:
    """What the worker does for a blob trigger: decode the host's model_binding_data into the SDK type the
    function's annotation asks for (through the extension's converter), then call the function."""
    fn = registered(function_name).get_user_function()
    annotation = typing.get_type_hints(fn)["client"]
    assert annotation is blob_binding.BlobClient  # streamed through the SDK, not a func.InputStream in memory
    assert BlobClientConverter.check_input_type_annotation(annotation)
    trigger = next(b for b in bindings(function_name) if b["type"] == "blobTrigger")
    content = json.dumps({"Connection": trigger["connection"], "ContainerName": container, "BlobName": blob_name})
    model_binding_data = SimpleNamespace(version="1.0", source="AzureStorageBlobs",
                                         content_type="application/json", content=content)
    client = BlobClientConverter.decode(ExtensionDatum(model_binding_data, "model_binding_data"),
                                        trigger_metadata={}, pytype=annotation)
    assert (client.container_name, client.blob_name) == (container, blob_name)
    fn(client)
