"""The paper's sine figure (Finn et al. 2017, fig. 2) as a PNG, MAML beside pretrained.

One row per K, one column per method: ground truth, the K support points, the pre-update
prediction and the predictions after 1 and 10 gradient steps on the same test task.
"""

from __future__ import annotations

from pathlib import Path

from mamlctl.maml.sine_experiment import SineExperimentResult, prediction_curves
from mamlctl.maml.tasks import sine_test_tasks

_STYLES = {
    0: ("pre-update", ":", "tab:green"),
    1: ("1 grad step", "--", "tab:orange"),
    10: ("10 grad steps", "-", "tab:red"),
}


def plot_sine_figure(
    result: SineExperimentResult,
    path: str | Path,
    *,
    ks: tuple[int, ...] = (5, 10),
    methods: tuple[str, ...] = ("maml", "pretrained"),
    task: int = 0,
) -> Path:
    """Write the figure to ``path`` (PNG, matplotlib Agg) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in methods if m in result.trained]
    if not shown:
        shown = list(result.trained)[:2]
    fig, axes = plt.subplots(
        len(ks), len(shown), figsize=(5 * len(shown), 3.6 * len(ks)), squeeze=False
    )
    for r, k in enumerate(ks):
        test = sine_test_tasks(
            max(task + 1, 2),
            k=k,
            seed=10_000 + result.config.seed,
            grid_points=result.config.grid_points,
        )
        for c, method in enumerate(shown):
            ax = axes[r][c]
            curves = prediction_curves(
                result.trained[method],
                result.model_config,
                test,
                task=task,
                steps=tuple(_STYLES),
            )
            ax.plot(curves.grid, curves.truth, color="tab:blue", lw=2, label="ground truth")
            for s, pred in curves.predictions.items():
                label, ls, color = _STYLES[s]
                ax.plot(curves.grid, pred, ls=ls, color=color, label=label)
            ax.scatter(
                curves.support_x,
                curves.support_y,
                marker="^",
                color="k",
                zorder=5,
                label=f"{k} points used for grad",
            )
            name = {"maml": "MAML", "pretrained": "pretrained"}.get(method, method)
            ax.set_title(f"{name}, K={k}")
            ax.set_xlim(-5, 5)
            if r == 0 and c == 0:
                ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
