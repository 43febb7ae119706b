"""Fuzzing the documented API (hypothesis): no input a client can send yields a 5xx.

Strategies follow the OpenAPI request schemas (``ScoreItem``, ``ScoreBatch``) and break them
field by field: right and wrong series ids, windows of the right and wrong length, numbers
out of float32 range, every JSON type in every position, batches mixing good and bad items,
arbitrary JSON documents and arbitrary bytes. A 200 must also validate against the response
schema.
"""

from __future__ import annotations

from typing import Any

from conftest import CONV, MLP, Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamlctl.serving import schemas
from mamlctl.serving.app import ScoringApp

IDS = ["m0", "m1", "c0"]
LENGTHS = {"m0": MLP.window, "m1": MLP.window, "c0": CONV.window}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(min_value=-1e300, max_value=1e300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@st.composite
def items(draw: st.DrawFn) -> Any:
    sid = draw(st.one_of(st.sampled_from(IDS), st.text(max_size=10), json_scalars))
    length = LENGTHS.get(sid, 12) if isinstance(sid, str) else 12
    length = draw(st.one_of(st.just(length), st.integers(0, 20)))
    window = draw(
        st.one_of(
            st.lists(numbers, min_size=length, max_size=length),
            st.lists(st.one_of(numbers, json_scalars), min_size=length, max_size=length),
            json_values,
        )
    )
    item: dict[str, Any] = {"series_id": sid, "window": window}
    if draw(st.booleans()):
        item["actual"] = draw(st.one_of(st.lists(numbers, max_size=5), json_values))
    if draw(st.integers(0, 9)) == 0:
        item[draw(st.text(max_size=5))] = draw(json_scalars)
    if draw(st.integers(0, 9)) == 0:
        item.pop(draw(st.sampled_from(["series_id", "window"])))
    return item


bodies = st.one_of(
    items(),
    st.builds(lambda xs: {"items": xs}, st.lists(items(), max_size=20)),
    json_values,
)


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        doc = response.json()
        model = schemas.BatchResult if "results" in doc else schemas.ScoreResult
        model.model_validate(doc)
    else:
        assert response.status_code in (404, 413, 422), response.text
        schemas.ErrorBody.model_validate(response.json())


@FUZZ
@given(body=bodies)
def test_schema_shaped_requests_never_5xx(fuzz_app: ScoringApp, body: Any) -> None:
    _check(Client(fuzz_app).post("/v1/score", json=body))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_5xx(fuzz_app: ScoringApp, raw: bytes) -> None:
    _check(Client(fuzz_app).post("/v1/score", content=raw))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sid=st.text(min_size=1, max_size=20))
def test_series_lookup_never_5xx(fuzz_app: ScoringApp, sid: str) -> None:
    from urllib.parse import quote

    r = Client(fuzz_app).get(f"/v1/series/{quote(sid, safe='')}")
    assert r.status_code in (200, 404), r.text
