"""``mamlctl experiment sine`` through CliRunner: JSON contract, same numbers as the library."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.maml.engine import adaptation_curve
from mamlctl.maml.initializer import load_initializer
from mamlctl.maml.models import build_model, mse_loss
from mamlctl.maml.sine_experiment import SineExperimentConfig, run_sine_experiment
from mamlctl.maml.tasks import sine_test_tasks

ARGS = ["--iterations", "20", "--test-tasks", "12", "--methods", "maml,pretrained,scratch"]


@pytest.mark.slow  # two tiny experiments + matplotlib: ~10-15 s on the shared machine
def test_sine_json_matches_the_library_and_writes_the_figure(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["experiment", "sine", *ARGS, "--seed", "3", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"results", "iterations_per_second", "figure"}
    assert doc["iterations_per_second"] > 0
    assert Path(doc["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = doc["results"]
    assert {tuple(sorted(r)) for r in rows} == {("ci95", "k", "method", "mse", "steps")}
    assert len(rows) == 3 * 3 * 2  # methods x K in (5, 10, 20) x steps in (1, 10)
    # Oracle 1: the library run with the same config gives the same numbers.
    lib = run_sine_experiment(
        SineExperimentConfig(
            iterations=20, test_tasks=12, seed=3, methods=("maml", "pretrained", "scratch")
        )
    )
    for r, ref in zip(rows, lib.rows, strict=True):
        assert (r["method"], r["k"], r["steps"]) == (ref.method, ref.k, ref.steps)
        assert math.isclose(r["mse"], ref.mse, rel_tol=1e-6)
    # The saved initializers are the library's trained parameters, bit for bit.
    saved = load_initializer(tmp_path / "initializers" / "maml")
    for name, value in lib.trained["maml"].params.items():
        assert torch.equal(saved.params[name], value)
    assert not (tmp_path / "initializers" / "scratch").exists()
    # Oracle 2: the scratch rows are a random net fine-tuned by hand-checked adaptation.
    torch.manual_seed(3)
    net = build_model(lib.model_config)
    test = sine_test_tasks(12, k=5, seed=10_003)
    curve = adaptation_curve(
        net,
        dict(net.named_parameters()),
        test.support_x,
        test.support_y,
        test.query_x,
        test.query_y,
        steps=10,
        inner_lr=0.01,
        loss_fn=mse_loss,
    )
    scratch = {r["steps"]: r for r in rows if r["method"] == "scratch" and r["k"] == 5}
    assert math.isclose(scratch[10]["mse"], curve[10].double().mean().item(), rel_tol=1e-6)
    ci = 1.96 * curve[1].double().std().item() / math.sqrt(12)
    assert math.isclose(scratch[1]["ci95"], ci, rel_tol=1e-6)


@pytest.mark.slow  # a tiny experiment + matplotlib: ~7 s idle, much more on a loaded machine
def test_table_output_and_bad_method_is_one_line_error(tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["experiment", "sine", *ARGS, "--out", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "MAML" in ok.stdout and "figure:" in ok.stdout
    bad = CliRunner().invoke(
        app, ["experiment", "sine", "--methods", "maml,reptile", "--out", str(tmp_path)]
    )
    assert bad.exit_code == 1
    assert bad.output.strip().startswith("error: invalid experiment option methods")
    assert len(bad.output.strip().splitlines()) == 1
