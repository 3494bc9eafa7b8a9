"""The API fuzzed against its own OpenAPI document with schemathesis (in-process ASGI).

Every operation but the endless event stream is called with generated valid and invalid
inputs; the answers must never be 500s and must match the documented status codes, media
types, headers and schemas. The host's scheduler is not started (schemathesis calls the app
from its own event loop thread), so submitted runs stay queued: that is all this needs.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from http_support import make_api
from nodehost.http import create_app

_host, _api = make_api()
app = create_app(_api)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app).exclude(
    path="/api/v1/events")


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_the_api_keeps_to_its_openapi_document(case: schemathesis.Case) -> None:
    """No 500s; status codes, content types, headers and bodies as documented.

    A schema-valid StartRunRequest may still be refused with 400 (its node packages must be
    installed, its graph acyclic...), so "valid data is accepted" is not checked.
    """
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
