"""PNG plots of example series for the evaluation reports (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

__all__ = ["plot_m4_examples", "plot_nab_example"]


def plot_m4_examples(
    out_dir: Path,
    *,
    ids: Sequence[str],
    histories: Sequence[FloatArray],
    actual: FloatArray,
    forecasts: Mapping[str, FloatArray],
    picks: Sequence[int],
    tail: int,
) -> list[Path]:
    """One PNG per picked series: the last ``tail`` shown points, the actual future and each
    method's forecast. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in picks:
        hist = np.asarray(histories[i])[-tail:]
        h = actual.shape[1]
        t_hist = np.arange(-hist.shape[0], 0)
        t_fut = np.arange(h)
        fig, ax = plt.subplots(figsize=(9, 3.2))
        ax.plot(t_hist, hist, color="black", lw=1, label="history (shown)")
        ax.plot(t_fut, actual[i], color="black", lw=1, ls="--", label="actual")
        for name, fc in forecasts.items():
            ax.plot(t_fut, fc[i], lw=1.2, label=name)
        ax.set_title(f"{ids[i]}")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        path = out_dir / f"{ids[i]}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_nab_example(
    path: Path,
    *,
    key: str,
    values: FloatArray,
    scores: FloatArray,
    windows: Sequence[tuple[int, int]],
    probation: int,
) -> Path:
    """Values with the labelled windows shaded, and the anomaly score below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
    t = np.arange(values.shape[0])
    ax.plot(t, values, color="black", lw=0.7)
    for a, b in windows:
        ax.axvspan(a, b, color="tab:red", alpha=0.2)
        bx.axvspan(a, b, color="tab:red", alpha=0.2)
    ax.axvline(probation, color="tab:gray", ls=":")
    bx.plot(t, scores, lw=0.7)
    bx.set_ylim(0, 1.02)
    ax.set_title(key)
    bx.set_ylabel("anomaly score")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
