"""Schemathesis against the explorer's own OpenAPI schema (/openapi.json), over ASGI on the real
test database: no generated request (any path, query, malformed value, odd Unicode) gets a 5xx.
Half of the cases use the real run's slug so that they reach the database and the live model."""

from __future__ import annotations

import os

import pytest
import schemathesis

# Imported now, at collection, not lazily inside from_asgi(): pytest rewrites the asserts of this
# plugin's modules with ast.parse, and on CPython 3.11 (gh-106905) ast.parse can fail with
# "AST constructor recursion depth mismatch" while another thread (an earlier test's server or
# model loader) is also building an AST.
import schemathesis.specs.openapi.coverage._operation  # noqa: F401
import schemathesis.specs.openapi.schemas  # noqa: F401
from hypothesis import HealthCheck, settings

from tests.web_fixtures import TOPK_RUN, rows


@pytest.fixture(scope="module")
def api_schema(web_db, tiny_model_dir):
    from context_lookups.app.main import create_app

    over = {"token_cap": 32, "torch_threads": None}
    if os.environ.get("LOOKUPS_TEST_WEB_DB"):
        over["model_paths"] = {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")}
    app = create_app(db_url=f"sqlite:///{web_db}", **over)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    model = (case.path_parameters or {}).get("model")
    if model is not None and len(str(model)) % 2 == 0:
        case.path_parameters["model"] = TOPK_RUN
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} {case.query}: " \
        f"{response.status_code} {response.text[:300]}"
