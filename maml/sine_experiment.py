"""The paper's sine regression experiment (Finn et al. 2017, section 5.1). No I/O here.

Each method is trained once at ``train_k`` support points (the paper trains at K = 10) with
meta-batch 25, inner lr 0.01, Adam 1e-3; then every method is evaluated on the same 600 fixed
test tasks for each K in ``test_ks``: adapt on K random support points with the inner lr (the
learned rates for Meta-SGD), report the MSE on a 100-point grid over [-5, 5] after each count in
``test_steps``, with the 95% confidence interval of the mean over tasks (1.96 s / sqrt(n)).
A task whose adaptation diverges (non-finite loss) is counted in ``ResultRow.diverged`` and left
out of the mean, which is therefore over the ``test_tasks - diverged`` remaining tasks.

Methods: ``maml`` (second order), ``fomaml``, ``metasgd``, ``pretrained`` (one network trained
on all tasks jointly, fine-tuned with the same steps) and ``scratch`` (a random network,
fine-tuned the same way).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mamlctl.maml.engine import Params, adaptation_curve, batch_adapt, batched_forward
from mamlctl.maml.meta import MetaTrainConfig, MetaTrainProgress, MetaTrainResult, meta_train
from mamlctl.maml.models import MLPConfig, build_model, mse_loss
from mamlctl.maml.tasks import SineTaskSampler, SineTaskSpec, SineTestSet, sine_test_tasks

SineMethod = Literal["maml", "fomaml", "metasgd", "pretrained", "scratch"]
ALL_METHODS: tuple[SineMethod, ...] = ("maml", "fomaml", "metasgd", "pretrained", "scratch")


class SineExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(default=70_000, ge=1)
    seed: int = 0
    methods: tuple[SineMethod, ...] = ALL_METHODS
    train_k: int = Field(default=10, ge=1)
    test_ks: tuple[int, ...] = (5, 10, 20)
    test_steps: tuple[int, ...] = (1, 10)
    test_tasks: int = Field(default=600, ge=2)
    grid_points: int = Field(default=100, ge=2)
    meta_batch_size: int = Field(default=25, ge=1)
    inner_lr: float = Field(default=0.01, gt=0)
    meta_lr: float = Field(default=1e-3, gt=0)
    hidden: tuple[int, ...] = (40, 40)


@dataclass(frozen=True, slots=True)
class ResultRow:
    method: str
    k: int
    steps: int
    mse: float
    ci95: float
    #: Test tasks whose loss became non-finite (adaptation diverged); then mse is not finite.
    diverged: int = 0


@dataclass(frozen=True, slots=True)
class TrainedMethod:
    method: SineMethod
    params: Params
    inner_lr: float | Params
    result: MetaTrainResult | None


@dataclass(frozen=True, slots=True)
class SineExperimentResult:
    config: SineExperimentConfig
    rows: tuple[ResultRow, ...]
    #: Second-order MAML meta-iterations per second (the other methods when MAML is absent).
    iterations_per_second: float
    trained: dict[str, TrainedMethod]
    model_config: MLPConfig
    elapsed: float


ProgressFn = Callable[[str, MetaTrainProgress], bool | None]


def _train(
    method: SineMethod,
    config: SineExperimentConfig,
    model_config: MLPConfig,
    progress: ProgressFn | None,
) -> TrainedMethod:
    if method == "scratch":
        torch.manual_seed(config.seed)
        model = build_model(model_config)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        return TrainedMethod(method, params, config.inner_lr, None)
    train_config = MetaTrainConfig(
        method=method,
        iterations=config.iterations,
        meta_batch_size=config.meta_batch_size,
        inner_steps=1,
        inner_lr=config.inner_lr,
        meta_lr=config.meta_lr,
        seed=config.seed,
        log_every=max(1, min(500, config.iterations // 20)),
    )
    sampler = SineTaskSampler(
        SineTaskSpec(support=config.train_k, query=config.train_k), seed=config.seed + 1
    )
    callback = None if progress is None else (lambda p: progress(method, p))
    result = meta_train(model_config, sampler, train_config, callback=callback)
    lr: float | Params = result.inner_lrs if result.inner_lrs is not None else config.inner_lr
    return TrainedMethod(method, result.params, lr, result)


def _ci95(values: Tensor) -> float:
    n = values.shape[0]
    return float(1.96 * values.double().std(correction=1) / math.sqrt(n))


def evaluate(
    trained: TrainedMethod, model_config: MLPConfig, test: SineTestSet, *, steps: tuple[int, ...]
) -> list[tuple[int, float, float, int]]:
    """(steps, mean MSE, ci95, diverged tasks) on ``test`` for each count in ``steps``."""
    model = build_model(model_config)
    curve = adaptation_curve(
        model,
        trained.params,
        test.support_x,
        test.support_y,
        test.query_x,
        test.query_y,
        steps=max(steps),
        inner_lr=trained.inner_lr,
        loss_fn=mse_loss,
    )
    out = []
    for s in steps:
        ok = curve[s].isfinite()
        finite = curve[s][ok].double()
        mse = float(finite.mean()) if finite.numel() else math.inf
        ci = _ci95(finite) if finite.numel() > 1 else math.inf
        out.append((s, mse, ci, int((~ok).sum())))
    return out


def _train_in_worker(
    method: SineMethod, config: SineExperimentConfig, model_config: MLPConfig, queue: Any
) -> TrainedMethod:
    """Worker-process entry: one thread, progress sent back through ``queue``."""
    torch.set_num_threads(1)

    def report(name: str, p: MetaTrainProgress) -> None:
        queue.put((name, p))

    return _train(method, config, model_config, report)


def _train_parallel(
    config: SineExperimentConfig,
    model_config: MLPConfig,
    progress: ProgressFn | None,
    jobs: int,
) -> dict[str, TrainedMethod]:
    """Train the methods in ``jobs`` worker processes (each method is independent and
    single-threaded, so this uses the cores without changing any result)."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        q = manager.Queue()
        futures = {
            pool.submit(_train_in_worker, m, config, model_config, q): m for m in config.methods
        }
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while True:
                try:
                    name, p = q.get_nowait()
                except queue_mod.Empty:
                    break
                if progress is not None:
                    progress(name, p)
        return {futures[f]: f.result() for f in futures}


def run_sine_experiment(
    config: SineExperimentConfig, *, progress: ProgressFn | None = None, jobs: int = 1
) -> SineExperimentResult:
    """Train every method (in ``jobs`` processes), evaluate all on the same fixed test tasks.

    Results do not depend on ``jobs``: every method has its own seeded sampler and init.
    """
    began = time.perf_counter()
    model_config = MLPConfig(input_size=1, hidden=config.hidden, output_size=1)
    if jobs > 1 and len(config.methods) > 1:
        by_name = _train_parallel(config, model_config, progress, jobs)
        trained: dict[str, TrainedMethod] = {m: by_name[m] for m in config.methods}
    else:
        trained = {str(m): _train(m, config, model_config, progress) for m in config.methods}
    rows: list[ResultRow] = []
    for k in config.test_ks:
        test = sine_test_tasks(
            config.test_tasks, k=k, seed=10_000 + config.seed, grid_points=config.grid_points
        )
        for m in config.methods:
            for steps, mse, ci, bad in evaluate(
                trained[m], model_config, test, steps=config.test_steps
            ):
                rows.append(ResultRow(m, k, steps, mse, ci, bad))
    speeds = [t.result.iterations_per_second for t in trained.values() if t.result is not None]
    maml = trained.get("maml")
    ips = (
        maml.result.iterations_per_second
        if maml is not None and maml.result is not None
        else (min(speeds) if speeds else 0.0)
    )
    return SineExperimentResult(
        config, tuple(rows), ips, trained, model_config, time.perf_counter() - began
    )


@dataclass(frozen=True, slots=True)
class CurveSet:
    """Predictions on the grid for one task: pre-update and after each step count."""

    grid: Tensor
    truth: Tensor
    support_x: Tensor
    support_y: Tensor
    predictions: dict[int, Tensor]


def prediction_curves(
    trained: TrainedMethod,
    model_config: MLPConfig,
    test: SineTestSet,
    *,
    task: int,
    steps: tuple[int, ...] = (0, 1, 10),
) -> CurveSet:
    """What the paper's figure shows for one task of ``test`` and one method."""
    model = build_model(model_config)
    sx, sy = test.support_x[task : task + 1], test.support_y[task : task + 1]
    grid = test.query_x[task : task + 1]
    forward = batched_forward(model)
    preds: dict[int, Tensor] = {}
    for s in steps:
        phi = batch_adapt(
            model, trained.params, sx, sy, steps=s, inner_lr=trained.inner_lr, loss_fn=mse_loss
        )
        with torch.no_grad():
            preds[s] = forward(phi, grid)[0, :, 0]
    return CurveSet(
        grid=grid[0, :, 0],
        truth=test.query_y[task, :, 0],
        support_x=sx[0, :, 0],
        support_y=sy[0, :, 0],
        predictions=preds,
    )
