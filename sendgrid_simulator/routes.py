"""Which SendGrid endpoint a method and path name: the endpoint key counts requests and scopes rate limits."""

from __future__ import annotations

from typing import NamedTuple


class Route(NamedTuple):
    endpoint: str  # e.g. "GET /v3/marketing/lists/{id}"
    action: str  # handler name on the API
    scope: str | None  # scope the key needs (None: any valid key)
    params: dict[str, str]


_READ, _WRITE = "marketing.read", "marketing.write"
_TABLE: list[tuple[str, tuple[str, ...], str, str | None]] = [
    ("PUT", ("v3", "marketing", "contacts"), "upsert_contacts", _WRITE),
    ("DELETE", ("v3", "marketing", "contacts"), "delete_contacts", _WRITE),
    ("GET", ("v3", "marketing", "contacts", "count"), "contact_count", _READ),
    ("GET", ("v3", "marketing", "contacts", "imports", "{id}"), "get_import", _READ),
    ("POST", ("v3", "marketing", "contacts", "search", "emails"), "search_emails", _READ),
    ("GET", ("v3", "marketing", "lists"), "get_lists", _READ),
    ("POST", ("v3", "marketing", "lists"), "create_list", _WRITE),
    ("GET", ("v3", "marketing", "lists", "{id}"), "get_list", _READ),
    ("GET", ("v3", "marketing", "lists", "{id}", "contacts", "count"), "list_count", _READ),
    ("DELETE", ("v3", "marketing", "lists", "{id}", "contacts"), "remove_from_list", _WRITE),
    ("GET", ("v3", "marketing", "field_definitions"), "get_fields", _READ),
    ("POST", ("v3", "marketing", "field_definitions"), "create_field", _WRITE),
    ("GET", ("v3", "scopes"), "get_scopes", None),
]


def _match(pattern: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for expected, actual in zip(pattern, parts, strict=True):
        if expected.startswith("{"):
            if not actual:
                return None
            params[expected[1:-1]] = actual
        elif expected != actual:
            return None
    return params


def route(method: str, path: str) -> Route | None:
    """The route, a Route with action "method_not_allowed" for a known path, or None for an unknown one."""
    parts = path.strip("/").split("/")
    path_known = None
    for verb, pattern, action, scope in _TABLE:
        params = _match(pattern, parts)
        if params is None:
            continue
        template = "/" + "/".join(pattern)
        if verb == method:
            return Route(f"{method} {template}", action, scope, params)
        path_known = Route(f"{method} {template}", "method_not_allowed", None, params)
    return path_known
