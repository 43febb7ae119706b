"""Property-based fuzz of every documented operation, driven by the app's own OpenAPI document
(schemathesis, in-process ASGI): requests that follow the schema and requests that break it.

Oracles: no answer is a 5xx; every 4xx body is JSON that names what was wrong -- a non-empty
``loc`` (the ``/v1`` ``{"detail": [{"loc", ...}]}`` shape, or MLflow's ``{"error_code",
"message", "loc"}`` of ``/invocations``), or, for the Open Inference Protocol's
``{"error": message}`` (the protocol has no ``loc``), a message that quotes the field or value;
The app serves files (a static source), so the observe routes answer their documented 503
``no_registry`` here; their logic is fuzzed with a registry in their own tests.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from mamlctl.serving.app import ScoringApp

#: What an OIP error message must name: a quoted input/output/model/parameter, a row, the
#: header, or the request (body) itself.
OIP_FIELD = re.compile(r"'[^']+'|\brow \d+|Inference-Header-Content-Length|\brequest\b|\bmodel\b")
#: Examples per operation and generation mode (~25 operations x 2 modes: ~25 s on 2 cores).
EXAMPLES = 40


@pytest.fixture(scope="module")
def api_schema(fuzz_app: ScoringApp) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def _names_the_field(status: int, doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    detail = doc.get("detail")
    if isinstance(detail, list):
        return bool(detail) and all(isinstance(d, dict) and d.get("loc") for d in detail)
    if "loc" in doc:
        return bool(doc["loc"]) and bool(doc.get("message"))
    if isinstance(doc.get("error"), str):  # the Open Inference Protocol's shape: no loc
        return OIP_FIELD.search(doc["error"]) is not None
    return False


def _check(case: Any) -> None:
    response = case.call()
    status = response.status_code
    where = (case.method, case.path, case.path_parameters, case.body)
    if status == 503 and b'"no_registry"' in response.content:
        return  # the observe routes over a static source: their documented answer
    assert status < 500, (*where, response.text[:300])
    if 400 <= status < 500:
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            doc = None
        assert _names_the_field(status, doc), (*where, status, response.text[:300])
    elif status < 300:
        case.validate_response(response, checks=[response_schema_conformance])


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_5xx_and_every_4xx_names_its_field(api_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"/invocations", "/v1/score", "/ping"} <= {op.path for op in operations}
    nothing_to_break = set()
    for operation in operations:
        fuzz = settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy(generation_mode=mode))(_check))
        try:
            fuzz()
        except Unsatisfiable:  # negative mode, an operation without inputs to break
            nothing_to_break.add(operation.path)
    assert not nothing_to_break & {"/invocations", "/v1/score"}, nothing_to_break
