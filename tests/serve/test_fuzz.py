"""A bounded, deterministic fuzz run of the web API from its own OpenAPI schema."""

from __future__ import annotations

from tests.support.serve import colour_model, require

require("fastapi")
schemathesis = require("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    allow_header_conformance,
    positive_data_acceptance,
)

from sacam.serve import create_app  # noqa: E402

# schemathesis calls the app as http://testserver
APP = create_app(
    colour_model(), max_upload_mb=0.05, max_pixels=100_000, allowed_hosts=["testserver"]
)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)


@SCHEMA.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx(case) -> None:  # noqa: ANN001
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail
    # answers match the documented status codes and schemas. Left out: a schema-valid
    # request may still be refused (a random file is no image, a random string no class
    # name); and Starlette's 405 answers list the methods of the first route of a path only
    case.validate_response(
        response, excluded_checks=[positive_data_acceptance, allow_header_conformance]
    )
