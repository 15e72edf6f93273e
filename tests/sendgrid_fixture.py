"""The SendGrid simulator for tests: `running_simulator()` (conftest's `sendgrid_sim` fixture) fails the test
on any OpenAPI violation. It yields a `Simulator` with one API key (`SENDGRID_TEST_KEY`, all scopes) and one
list (`SENDGRID_TEST_LIST_ID`); import jobs finish 10 ms after acceptance. Every request is checked against
../shared/sendgrid/*.json when those files exist; a test that provokes a violation on purpose must call
`sim.take_violations()`. Tests that need validation call `require_openapi()` (a visible skip without the files).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sendgrid_simulator import Simulator, missing_specs_reason, specs_available

SENDGRID_TEST_KEY = "SG.test-key-0123456789"
SENDGRID_TEST_LIST_ID = "3d5f7a1c-2b4e-4c6d-8e9f-0a1b2c3d4e5f"
SENDGRID_TEST_LIST_NAME = "test-list"


def require_openapi() -> None:
    if not specs_available():
        pytest.skip(missing_specs_reason())


def running_simulator() -> Iterator[Simulator]:
    """The fixture's body, as a plain generator (so its teardown check can itself be tested)."""
    sim = Simulator(api_keys={SENDGRID_TEST_KEY: None}, validate_openapi=specs_available(), job_delay=0.01)
    sim.create_list(SENDGRID_TEST_LIST_NAME, list_id=SENDGRID_TEST_LIST_ID)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
    violations = sim.take_violations()
    if violations:
        pytest.fail("requests not conforming to SendGrid's OpenAPI description:\n"
                    + "\n".join(f"  {v}" for v in violations), pytrace=False)
