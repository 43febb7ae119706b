"""``lineage.adaptation``: every answer says whether its model was adapted to the series or is
the family initializer un-adapted ("zero-shot"); files and rows without the key are adapted.

The export side (real zero-shot files from ``mamlctl adapt``) is
``tests/export/test_zero_shot_job.py``; here the server's reading of the key, on files written
by the serving fixtures."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import onnx
from conftest import MLP, Served
from serving_models import write_series

from mamlctl.domain import AdaptedModelRecord
from mamlctl.serving import schemas


def _zero_shot_copy(served_dir: Any, rec: AdaptedModelRecord, sid: str) -> AdaptedModelRecord:
    """The record's file re-stamped for ``sid`` with ``mamlctl.adaptation = zero-shot``."""
    model = onnx.load_from_string((served_dir / rec.path).read_bytes())
    for prop in model.metadata_props:
        if prop.key == "mamlctl.series_id":
            prop.value = sid
    entry = model.metadata_props.add()
    entry.key, entry.value = "mamlctl.adaptation", "zero-shot"
    blob = model.SerializeToString()
    digest = hashlib.sha256(blob).hexdigest()
    rel = f"hourly/{sid}--{digest[:16]}.onnx"
    (served_dir / rel).write_bytes(blob)
    return dataclasses.replace(rec, series_id=sid, path=rel, sha256=digest)


def test_lineage_names_zero_shot_models_and_old_files_are_adapted(
    make_served: Callable[..., Served], tmp_path: Any
) -> None:
    models = tmp_path / "home" / "models"
    [base] = write_series(models, MLP, ["zbase"], seed=7)
    from_file = _zero_shot_copy(models, base, "zfile")
    # a file without the key, whose registry row says zero-shot: the row's word is used
    [row_only] = write_series(models, MLP, ["zrow"], seed=8)
    row_only = dataclasses.replace(
        row_only, metadata={**row_only.metadata, "adaptation": "zero-shot"}
    )
    served = make_served(extra=[base, from_file, row_only])
    window = [1.0] * MLP.window
    for sid, expected in (("m0", "adapted"), ("zfile", "zero-shot"), ("zrow", "zero-shot")):
        body = served.client.post("/v1/score", json={"series_id": sid, "window": window}).json()
        assert schemas.ScoreResult.model_validate(body).lineage.adaptation == expected, sid
        detail = schemas.SeriesDetail.model_validate(served.client.get(f"/v1/series/{sid}").json())
        assert detail.lineage.adaptation == expected
    # a zero-shot file banks with the adapted files of its graph (same answer for same values)
    same = served.client.post("/v1/score", json={"series_id": "zbase", "window": window}).json()
    zero = served.client.post("/v1/score", json={"series_id": "zfile", "window": window}).json()
    assert same["forecast"] == zero["forecast"]
    assert served.client.get("/v1/series/zfile").json()["served_by"] == "bank"
