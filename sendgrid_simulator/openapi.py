"""Check received requests against SendGrid's own OpenAPI files (team kit, `../shared/sendgrid/*.json`).

One `openapi-core` object per file, chosen by path prefix; they are loaded once per process (about half a
second) and shared by every simulator. Paths no file describes (`/v3/scopes`) are not checked.

Spec quirk worked around: `ContactRequest.custom_fields` declares a single property `w1` of type string.
SendGrid's own field-definitions example gives `w1` as a *Number* field, so a valid numeric value for a field
whose ID happens to be `w1` would be refused. That property is dropped at load time (custom_fields stays a
free-form object, as the prose describes); nothing else in the files is changed.

Violation messages name the location and the rule broken (e.g. `body.contacts[0].first_name: maxLength 50`),
never the offending value, which may be personal data.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "sendgrid"
SPEC_FILES = {
    "/v3/marketing/contacts": "tsg_mc_contacts_v3.json",
    "/v3/marketing/lists": "tsg_mc_lists_v3.json",
    "/v3/marketing/field_definitions": "tsg_mc_custom_fields_v3.json",
}
SERVER_URL = "https://api.sendgrid.com"  # the `servers` entry of every file

_LOADED: dict[str, Any] = {}
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Violation:
    method: str
    path: str
    spec: str
    messages: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.spec}): {'; '.join(self.messages)}"


def specs_available(spec_dir: Path = SPEC_DIR) -> bool:
    return all((spec_dir / name).is_file() for name in SPEC_FILES.values())


def missing_specs_reason(spec_dir: Path = SPEC_DIR) -> str:
    return f"SendGrid OpenAPI files not found in {spec_dir} (team kit ../shared/sendgrid/); validation unavailable"


def _patched(name: str, document: dict[str, Any]) -> dict[str, Any]:
    if name == "tsg_mc_contacts_v3.json":
        custom = document["components"]["schemas"]["ContactRequest"]["properties"].get("custom_fields", {})
        custom.get("properties", {}).pop("w1", None)
    return document


def _load(spec_dir: Path, name: str) -> Any:
    from openapi_core import OpenAPI  # noqa: PLC0415 - dev-only dependency, loaded only when validating

    cache_key = str(spec_dir / name)
    with _LOAD_LOCK:
        if cache_key not in _LOADED:
            document = json.loads((spec_dir / name).read_text(encoding="utf-8"))
            _LOADED[cache_key] = OpenAPI.from_dict(_patched(name, document))
        return _LOADED[cache_key]


class RequestValidator:
    def __init__(self, spec_dir: Path = SPEC_DIR) -> None:
        if not specs_available(spec_dir):
            raise FileNotFoundError(missing_specs_reason(spec_dir))
        self._spec_dir = spec_dir
        for name in SPEC_FILES.values():  # load now, not on the first request
            _load(spec_dir, name)

    @staticmethod
    def spec_for(path: str) -> str | None:
        for prefix, name in SPEC_FILES.items():
            if path == prefix or path.startswith(prefix + "/"):
                return name
        return None

    def validate(self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str],
                 body: bytes | None) -> Violation | None:
        name = self.spec_for(path)
        if name is None:
            return None
        from openapi_core.testing import MockRequest  # noqa: PLC0415 - see _load

        request = MockRequest(SERVER_URL, method, path, args=dict(query), headers=dict(headers), data=body or None,
                              content_type=headers.get("Content-Type", "application/json"))
        try:
            _load(self._spec_dir, name).validate_request(request)
        except Exception as exc:  # every openapi-core error is a violation to report
            return Violation(method, path, name, tuple(_describe(exc)))
        return None


def _describe(exc: BaseException) -> list[str]:
    cause = exc.__cause__
    schema_errors = getattr(cause, "schema_errors", None) or getattr(exc, "schema_errors", None)
    prefix = "body" if "Body" in type(exc).__name__ else type(exc).__name__
    if schema_errors:
        where = f"{prefix}" if prefix == "body" else f"{exc}"
        return [f"{where}{_json_path(e)}: {e.validator} {_rule(e.validator_value)}" for e in schema_errors]
    return [f"{type(exc).__name__}: {exc}" if "body" not in str(exc).lower() else type(exc).__name__]


def _json_path(error: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in getattr(error, "absolute_path", []))


def _rule(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
