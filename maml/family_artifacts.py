"""Files a family training run logs: the initializer (safetensors + JSON), its ONNX export,
a PNG of adaptation on a few held-out series, and the ids of the series it saw."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mamlctl.maml.family_training import FamilyTrainingResult
    from mamlctl.maml.onnx_template import OnnxTemplate

#: Held-out series drawn in the adaptation plot.
PLOT_SERIES = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactPaths:
    initializer_dir: Path
    onnx: Path
    plot: Path
    series_ids: Path


def write_artifacts(result: FamilyTrainingResult, out: Path) -> ArtifactPaths:
    """Write every artifact of ``result`` under ``out`` (an empty folder)."""
    from mamlctl.maml.initializer import save_initializer

    plan = result.data.plan
    init_dir = save_initializer(
        out / "initializer",
        model_config=plan.model_config(),
        params=result.params,
        task_spec={"kind": "window", **plan.task_spec().to_dict()},
        train_config=plan.initializer_train_config(),
        metrics={k: v for k, v in result.metrics.items() if k.startswith("val_")},
    )
    family_doc = plan.as_params()
    family_doc["data_fingerprint"] = result.data.fingerprint
    (init_dir / "family.json").write_text(json.dumps(family_doc, indent=2, sort_keys=True) + "\n")
    onnx_path = export_onnx(result, out / "initializer.onnx")
    plot_path = plot_adaptation(result, out / "adaptation.png")
    ids_path = out / "series_ids.json"
    ids_path.write_text(
        json.dumps(
            {
                "train": [s.series_id for s in result.data.train],
                "validation": list(result.data.validation.series_ids),
            },
            indent=2,
        )
        + "\n"
    )
    return ArtifactPaths(
        initializer_dir=init_dir, onnx=onnx_path, plot=plot_path, series_ids=ids_path
    )


def export_onnx(result: FamilyTrainingResult, path: Path) -> Path:
    """The initializer as the serving contract's graph with identity normalisation (loc 0,
    scale 1): input ``window`` is a support-normalised window ``[batch, L]`` (batch dynamic),
    output ``forecast`` the normalised forecast. Built with the exporter-once template of
    :mod:`mamlctl.maml.export`, which checks itself against torch when built."""
    from mamlctl.maml.models import config_to_dict

    plan = result.data.plan
    template = _template(json.dumps(config_to_dict(plan.model_config()), sort_keys=True))
    data = template.render(
        {k: v.detach().cpu().numpy() for k, v in result.params.items()},
        loc=0.0,
        scale=1.0,
        residual_scale=1.0,
        metadata={
            "mamlctl.kind": "initializer",
            "mamlctl.family": plan.family.name,
            "mamlctl.data_fingerprint": result.data.fingerprint,
            "mamlctl.window": str(plan.window),
            "mamlctl.horizon": str(plan.horizon),
        },
    )
    path.write_bytes(data)
    return path


@functools.lru_cache(maxsize=4)
def _template(model_config_json: str) -> OnnxTemplate:
    """One exporter run per architecture and process (an export takes seconds; the template is
    a pure function of the config, so memoising it changes no result)."""
    from mamlctl.maml.export import template_for_config
    from mamlctl.maml.models import config_from_dict

    return template_for_config(config_from_dict(json.loads(model_config_json)))


def plot_adaptation(result: FamilyTrainingResult, path: Path) -> Path:
    """History tail, actual and forecasts (adapted, pretrained, seasonal naive) per series."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    val, fc, plan = result.data.validation, result.forecasts, result.data.plan
    n = min(PLOT_SERIES, len(val.series_ids))
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    tail = plan.support_points
    for i in range(n):
        ax = axes[i][0]
        hist = val.histories[i][-tail:]
        x_hist = np.arange(-hist.shape[0], 0)
        x_fut = np.arange(plan.horizon)
        ax.plot(x_hist, hist, color="0.4", lw=1, label="history (support)")
        ax.plot(x_fut, val.actual[i], color="black", lw=1.2, label="actual")
        ax.plot(x_fut, fc.adapted[i], color="tab:red", lw=1.2, label="MAML adapted")
        if fc.pretrained is not None:
            ax.plot(x_fut, fc.pretrained[i], color="tab:blue", lw=1, ls="--", label="pretrained")
        ax.plot(x_fut, fc.seasonal_naive[i], color="tab:green", lw=1, ls=":", label="seas. naive")
        ax.set_title(val.series_ids[i], fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, ncol=5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
