"""The simulator as a Python object: start/stop, configure, inject faults, inspect what the client did."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import queue
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sendgrid_simulator.api import Api, new_job_id
from sendgrid_simulator.faults import Fault, FaultKind, FaultPlan
from sendgrid_simulator.openapi import SPEC_DIR, RequestValidator, Violation
from sendgrid_simulator.ratelimit import RateLimit, RateLimiter
from sendgrid_simulator.server import SimulatorServer
from sendgrid_simulator.store import ApiError, ContactList, Job, Store, UpsertBatch, now_iso

ALL_SCOPES = frozenset({"marketing.read", "marketing.write", "scopes.read"})
DEFAULT_API_KEY = "SG.simulator-key"
_UNAUTHORIZED = ApiError.one(401, None, "authorization required")
_FORBIDDEN = ApiError.one(403, None, "access forbidden")

ApiKeys = Mapping[str, Iterable[str] | None]


@dataclass
class RequestRecord:
    method: str
    path: str  # with the query string
    endpoint: str  # "GET /v3/marketing/lists/{id}"
    status: int | None = None  # None: the connection was dropped without an answer
    seconds: float = 0.0


class Simulator:
    """A SendGrid Marketing Contacts API on loopback, with state. Dev/test only.

    api_keys: key -> scopes (None = all of ALL_SCOPES). validate_openapi: check every /v3 request against
    ../shared/sendgrid/*.json (FileNotFoundError when the files are absent). job_delay: seconds an import job
    stays `pending`. rate_limit: None, {"per_second": n} or {"limit": n, "window": s, "per_endpoint": {...}}.
    latency: seconds added to every /v3 answer.
    """

    def __init__(self, api_keys: ApiKeys | None = None, *, validate_openapi: bool = False, job_delay: float = 0.02,
                 rate_limit: RateLimit | dict[str, Any] | None = None, latency: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0, spec_dir: Path = SPEC_DIR,
                 record_batches: bool = True) -> None:
        self.store = Store()
        self.api = Api(self)
        self.faults = FaultPlan()
        self.limiter = RateLimiter(RateLimit.parse(rate_limit))
        self.job_delay = job_delay
        self.latency = latency
        self.record_batches = record_batches
        self.violations: list[Violation] = []
        self.request_log: list[RequestRecord] = []
        self.request_counts: dict[str, int] = {}
        self._keys: dict[str, frozenset[str]] = {}
        self.set_api_keys(api_keys if api_keys is not None else {DEFAULT_API_KEY: None})
        self._spec_dir = spec_dir
        self._validator = RequestValidator(spec_dir) if validate_openapi else None
        self._address = (host, port)
        self._server: SimulatorServer | None = None
        self._threads: list[threading.Thread] = []
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._idle = threading.Condition()
        self._unfinished = 0
        self._log_lock = threading.Lock()
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        self._server = SimulatorServer(self._address, self)
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name="sendgrid-sim-http", daemon=True),
            threading.Thread(target=self._work, name="sendgrid-sim-jobs", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        for sock in list(server.open_sockets):  # keep-alive connections would otherwise linger
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1]) if self.base_url else 0

    @property
    def validating(self) -> bool:
        return self._validator is not None

    # -- configuration -----------------------------------------------------------------------------

    def set_api_keys(self, api_keys: ApiKeys) -> None:
        """Replace the valid keys at once (a rotated-out key answers 401 from the next request)."""
        self._keys = {key: ALL_SCOPES if scopes is None else frozenset(scopes) for key, scopes in api_keys.items()}

    def set_rate_limit(self, rate_limit: RateLimit | dict[str, Any] | None) -> None:
        self.limiter.config = RateLimit.parse(rate_limit)
        self.limiter.reset()

    def set_validation(self, on: bool) -> None:
        self._validator = RequestValidator(self._spec_dir) if on else None

    def create_list(self, name: str, list_id: str | None = None) -> str:
        return self.store.create_list(name, list_id).id

    def create_field(self, name: str, field_type: str = "Text") -> str:
        return self.store.create_field(name, field_type).id

    def inject(self, kind: FaultKind, *, count: int = 1, method: str | None = None, path: str | None = None,
               status: int = 503, seconds: float = 1.0, errored: int = 1) -> Fault:
        """Shortcut for `faults.inject`; see sendgrid_simulator.faults for the kinds."""
        return self.faults.inject(kind, count=count, method=method, path=path, status=status, seconds=seconds,
                                  errored=errored)

    def reset(self, *, everything: bool = False) -> None:
        """Forget contacts, jobs, logs, faults and violations; lists and fields stay unless `everything`."""
        self.store.reset(everything=everything)
        self.faults.clear()
        self.limiter.reset()
        with self._log_lock:
            self.violations.clear()
            self.request_log.clear()
            self.request_counts.clear()

    # -- inspection --------------------------------------------------------------------------------

    @property
    def upsert_batches(self) -> list[UpsertBatch]:
        return self.store.upsert_batches

    def list_contacts(self, list_id: str) -> dict[str, dict[str, Any]]:
        """email -> contact (as SendGrid renders it) for every member of the list. KeyError if unknown."""
        with self.store.lock:
            keys = sorted(self.store.lists[list_id].members)
            return {key: self.store.render(key, self.base_url) for key in keys}

    def contacts(self) -> dict[str, dict[str, Any]]:
        with self.store.lock:
            return {key: self.store.render(key, self.base_url) for key in list(self.store.contacts)}

    def contact(self, email: str) -> dict[str, Any] | None:
        key = self.store.find(email)
        return self.store.render(key, self.base_url) if key is not None else None

    def delete_contact(self, email: str) -> bool:
        """Delete a contact from the account, as someone might in SendGrid's UI while an export runs."""
        key = self.store.find(email)
        if key is None:
            return False
        with self.store.lock:
            self.store.contacts.pop(key, None)
            for contact_list in self.store.lists.values():
                contact_list.members.discard(key)
        return True

    def lists(self) -> dict[str, str]:
        """name -> list ID."""
        with self.store.lock:
            return {x.name: x.id for x in self.store.lists.values()}

    def fields(self) -> dict[str, str]:
        """name -> custom field ID."""
        with self.store.lock:
            return {x.name: x.id for x in self.store.fields.values()}

    def job(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.jobs.get(job_id)
        return job.as_json(self.base_url) if job else None

    def take_violations(self) -> list[Violation]:
        """Return and forget the recorded OpenAPI violations (for tests that provoke one on purpose)."""
        with self._log_lock:
            taken = list(self.violations)
            self.violations.clear()
        return taken

    def wait_for_jobs(self, timeout: float = 10.0) -> bool:
        """Block until every accepted job is final; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stats(self) -> dict[str, Any]:
        with self.store.lock:
            jobs: dict[str, int] = {}
            for job in self.store.jobs.values():
                jobs[job.status] = jobs.get(job.status, 0) + 1
            counts = {
                "contacts": len(self.store.contacts),
                "lists": {x.id: {"name": x.name, "contact_count": len(x.members)} for x in self.store.lists.values()},
                "jobs": jobs,
                "upsert_batches": len(self.store.upsert_batches),
                "contacts_sent": sum(len(b.emails) for b in self.store.upsert_batches),
            }
        with self._log_lock:
            counts["requests"] = dict(self.request_counts)
            counts["violations"] = [str(v) for v in self.violations]
        counts["faults_pending"] = [f.as_dict() for f in self.faults.pending()]
        return counts

    # -- used by the server ------------------------------------------------------------------------

    def scopes_of(self, key: str) -> frozenset[str] | None:
        return self._keys.get(key)

    def authorize(self, header: str | None, scope: str | None) -> tuple[str, ApiError | None]:
        if not header or not header.startswith("Bearer "):
            return "", _UNAUTHORIZED
        key = header[7:].strip()
        scopes = self._keys.get(key)
        if scopes is None:
            return key, _UNAUTHORIZED
        if scope is not None and scope not in scopes:
            return key, _FORBIDDEN
        return key, None

    def record_request(self, method: str, path: str, endpoint: str) -> RequestRecord:
        record = RequestRecord(method, path, endpoint)
        with self._log_lock:
            self.request_log.append(record)
            self.request_counts[endpoint] = self.request_counts.get(endpoint, 0) + 1
        return record

    def validate(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
                 body: bytes) -> Violation | None:
        validator = self._validator
        if validator is None:
            return None
        violation = validator.validate(method, path, query, headers, body)
        if violation is not None:
            with self._log_lock:
                self.violations.append(violation)
        return violation

    def submit_upsert(self, contacts: list[dict[str, Any]], list_ids: list[str]) -> Job:
        fault = self.faults.take_job_fault()
        job = Job(new_job_id(), "upsert", len(contacts), now_iso(), time.monotonic() + self.job_delay,
                  payload=(contacts, list_ids), fault=fault.kind if fault else None,
                  fault_errored=fault.errored if fault else 0)
        if self.record_batches:
            emails = [c.get("email") or "" for c in contacts]
            with self.store.lock:
                self.store.upsert_batches.append(UpsertBatch(job.id, emails))
        return self._enqueue(job)

    def submit_removal(self, contact_list: ContactList, keys: list[str]) -> Job:
        job = Job(new_job_id(), "delete", len(keys), now_iso(), time.monotonic() + self.job_delay,
                  payload=(contact_list, keys))
        return self._enqueue(job)

    def submit_contact_deletion(self, keys: list[str] | None) -> Job:
        """keys None: every contact (delete_all_contacts)."""
        job = Job(new_job_id(), "delete_contacts", len(keys) if keys is not None else len(self.store.contacts),
                  now_iso(), time.monotonic() + self.job_delay, payload=keys)
        return self._enqueue(job)

    def _enqueue(self, job: Job) -> Job:
        with self.store.lock:
            self.store.jobs[job.id] = job
        with self._idle:
            self._unfinished += 1
        self._jobs.put(job)
        return job

    def _work(self) -> None:
        """Jobs are processed one at a time in submission order, each no earlier than its due time."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            wait = job.due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                self.store.apply(job)
            except Exception:  # a bug here must not stall every later job
                job.status, job.finished_at, job.payload = "failed", now_iso(), None
            with self._idle:
                self._unfinished -= 1
                self._idle.notify_all()

    # -- /__sim over HTTP (out-of-process control) -------------------------------------------------

    def admin(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any, str]:
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "body is not JSON"}, "application/json"
        try:
            return _admin(self, method, path, query, data)
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": f"{type(exc).__name__}: {exc}"}, "application/json"
        except ApiError as exc:
            return exc.status, {"errors": exc.errors}, "application/json"


def _admin(sim: Simulator, method: str, path: str, query: dict[str, list[str]],
           data: Any) -> tuple[int, Any, str]:
    js = "application/json"
    route = (method, path.rstrip("/"))
    if route == ("GET", "/__sim/stats"):
        return 200, sim.stats(), js
    if route == ("GET", "/__sim/contacts"):
        list_id = query["list_id"][0] if query.get("list_id") else None
        if list_id is not None and list_id not in sim.store.lists:
            return 404, {"error": "unknown list"}, js
        return 200, {"contacts": sim.list_contacts(list_id) if list_id else sim.contacts()}, js
    if route == ("GET", "/__sim/batches"):
        return 200, {"batches": [{"job_id": b.job_id, "emails": b.emails} for b in sim.upsert_batches]}, js
    if route == ("GET", "/__sim/requests"):
        with sim._log_lock:
            return 200, {"requests": [asdict(r) for r in sim.request_log]}, js
    if route == ("GET", "/__sim/violations"):
        return 200, {"violations": [str(v) for v in sim.violations]}, js
    if route == ("GET", "/__sim/faults"):
        return 200, {"faults": [f.as_dict() for f in sim.faults.pending()]}, js
    if route == ("POST", "/__sim/faults"):
        specs = data if isinstance(data, list) else [data]
        faults = [sim.inject(spec.pop("kind"), **spec) for spec in specs]
        return 201, {"faults": [f.as_dict() for f in faults]}, js
    if route == ("DELETE", "/__sim/faults"):
        sim.faults.clear()
        return 200, {}, js
    if route == ("POST", "/__sim/reset"):
        sim.reset(everything=bool(data.get("everything")))
        return 200, {}, js
    if route == ("POST", "/__sim/settings"):
        if "latency" in data:
            sim.latency = float(data["latency"])
        if "job_delay" in data:
            sim.job_delay = float(data["job_delay"])
        if "rate_limit" in data:
            sim.set_rate_limit(data["rate_limit"])
        if "api_keys" in data:
            sim.set_api_keys(data["api_keys"])
        if "billable_count" in data:
            with sim.store.lock:
                sim.store.billable_count = int(data["billable_count"])
        if "validate_openapi" in data:
            sim.set_validation(bool(data["validate_openapi"]))
        return 200, {}, js
    if route == ("POST", "/__sim/lists"):
        return 201, {"id": sim.create_list(data["name"], data.get("id"))}, js
    if route == ("POST", "/__sim/fields"):
        return 201, {"id": sim.create_field(data["name"], data.get("field_type", "Text"))}, js
    if route == ("POST", "/__sim/wait"):
        return 200, {"idle": sim.wait_for_jobs(float(data.get("timeout", 10)))}, js
    parts = path.strip("/").split("/")
    if method == "GET" and len(parts) == 4 and parts[1] == "imports" and parts[3] == "errors.csv":
        job = sim.store.jobs.get(parts[2])
        if job is None:
            return 404, {"error": "unknown job"}, js
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["index", "identifier", "error"])
        writer.writerows(job.errors)
        return 200, out.getvalue().encode(), "text/csv"
    return 404, {"error": f"no simulator endpoint {method} {path}"}, js
