"""schemathesis against the OpenAPI document the monitor serves, authenticated, on a real farm.

No answer may be a server error (5xx), and every answer must match the document: its status
listed, its content type and body as declared. Each operation gets its own generated cases.
"""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.identity import Role
from tests.web.conftest import Monitor

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 15


def test_the_api_keeps_to_its_openapi_document(shared_monitor: Monitor) -> None:
    # A job to act on, so the job and task operations meet real ids too.
    shared_monitor.farm.submit([{"command": ["echo", "fuzz"]}], user="ana")
    schema = schemathesis.openapi.from_url(f"{shared_monitor.url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {shared_monitor.token('fuzz-admin', Role.ADMIN)}"}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 25

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=15)

        try:
            run()
        except Exception as exc:  # collected, so one run reports every operation at fault
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
