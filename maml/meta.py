"""Meta-training (MAML, first-order MAML, Meta-SGD) and the paper's baselines. No I/O.

One meta-iteration, for all T tasks of a meta-batch at once (no Python loop over tasks)::

    θ_T   = expand(θ, T)                          # views, one per task
    θ'_T  = θ_T - alpha ⊙ ∇ Σ_i L_i^support(θ_T)      # one autograd.grad for every task
    θ    ← Adam(θ, ∇_θ mean_i L_i^query(θ'_T))     # second order through the inner step

First order (``fomaml``) detaches the inner gradients, so the meta-gradient is the query
gradient at θ' (no Hessian term). ``metasgd`` also learns alpha, one rate per parameter entry.

All meta-parameters (θ, and alpha for Meta-SGD) live in ONE flat tensor; the named parameters are
views of it, and Adam is a handful of in-place ops on that tensor. At the paper's size
(1-40-40-1, 25 tasks) per-op overhead dominates, so this matters as much as the batching.

Progress is reported through ``callback(MetaTrainProgress)`` every ``log_every`` iterations;
the callback may return ``False`` to stop early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.optim.adam import adam

from mamlctl.errors import TrainingError
from mamlctl.maml.engine import (
    BatchedForward,
    InnerLR,
    LossFn,
    Params,
    batched_forward,
    expand_params,
    inner_steps_batched,
    mean_task_loss,
    resolve_adapt_names,
)
from mamlctl.maml.models import ConvConfig, MLPConfig, build_model, loss_for_head
from mamlctl.maml.tasks import TaskBatch, TaskSampler

Method = Literal["maml", "fomaml", "metasgd", "pretrained"]


class MetaTrainConfig(BaseModel):
    """Hyperparameters of meta-training (the paper's sine settings by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "maml"
    iterations: int = Field(default=70_000, ge=1)
    meta_batch_size: int = Field(default=25, ge=1)
    inner_steps: int = Field(default=1, ge=1)
    inner_lr: float = Field(default=0.01, gt=0)
    meta_lr: float = Field(default=1e-3, gt=0)
    seed: int = 0
    log_every: int = Field(default=100, ge=1)
    loss: Literal["auto", "mse", "mae", "gaussian_nll"] = "auto"
    #: ANIL / partial adaptation: the parameters the inner loop adapts (None = all). The meta
    #: update still trains every parameter. Meta-SGD learns rates for these names only (the
    #: others keep ``inner_lr``: they get no gradient).
    adapt_names: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class MetaTrainProgress:
    iteration: int
    loss: float
    elapsed: float


@dataclass(frozen=True, slots=True)
class MetaTrainResult:
    """The initializer (θ, and alpha for Meta-SGD) and how training went."""

    model_config: MLPConfig | ConvConfig
    config: MetaTrainConfig
    params: Params
    inner_lrs: Params | None
    losses: tuple[float, ...]
    iterations: int
    elapsed: float

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / self.elapsed if self.elapsed > 0 else math.inf

    def model(self) -> nn.Module:
        """A module carrying the trained θ (for export or inspection)."""
        module: nn.Module = build_model(self.model_config)
        module.load_state_dict(self.params)
        return module


Callback = Callable[[MetaTrainProgress], bool | None]


def resolve_loss(
    config: MetaTrainConfig, model_config: MLPConfig | ConvConfig, *, masked: bool = False
) -> LossFn:
    """The loss of ``config`` (``auto``: the head's natural loss); ``masked`` gives the variant
    that ignores NaN targets (tasks of a partial window spec)."""
    from mamlctl.maml.models import loss_by_name

    name = config.loss
    if name == "gaussian_nll" and model_config.head != "gaussian":
        raise TrainingError("loss gaussian_nll needs a model with head='gaussian'")
    if name == "auto":
        if not masked:
            loss: LossFn = loss_for_head(model_config.head)
            return loss
        name = "mse" if model_config.head == "mean" else "gaussian_nll"
    fn: LossFn = loss_by_name(name, masked=masked)
    return fn


def sampler_is_masked(task_sampler: TaskSampler) -> bool:
    """Whether the sampler's tasks carry NaN (unobserved) targets: a partial window spec."""
    return bool(task_sampler.spec().get("partial", False))


class FlatParams:
    """Named tensors stored as views of one flat leaf tensor (one Adam update for all).

    Matrices (2-D parameters) are stored transposed (column-major): Linear-style forwards use
    ``W^T`` (``x @ W^T``), so the view they multiply with, the gradients autograd returns for it
    and the inner update ``W - alpha * g`` all share one memory layout. Mixed layouts send every
    elementwise op and gradient sum over the ``[T, out, in]`` weights down the slow strided path
    (~4x slower at the paper's 40x40). The layout is internal: :meth:`detached` returns
    ordinary contiguous tensors.
    """

    def __init__(self, named: Mapping[str, Tensor]) -> None:
        self.names = list(named)
        self.shapes = [tuple(t.shape) for t in named.values()]
        self.sizes = [t.numel() for t in named.values()]
        self.flat = torch.cat([_stored(t.detach()).reshape(-1) for t in named.values()])
        self.flat.requires_grad_(True)

    def views(self, flat: Tensor | None = None) -> Params:
        base = self.flat if flat is None else flat
        parts = torch.split(base, self.sizes)
        return {
            n: _shaped(p, s, ()) for n, p, s in zip(self.names, parts, self.shapes, strict=True)
        }

    def expanded(self, n_tasks: int) -> Params:
        """Views with a leading task axis: ONE expand of the flat tensor, then split + view
        (fewer autograd nodes than expanding each parameter)."""
        big = self.flat.unsqueeze(0).expand(n_tasks, -1)
        parts = torch.split(big, self.sizes, dim=1)
        return {
            n: _shaped(p, s, (n_tasks,))
            for n, p, s in zip(self.names, parts, self.shapes, strict=True)
        }

    def detached(self) -> Params:
        return {
            n: v.detach().clone(memory_format=torch.contiguous_format)
            for n, v in self.views().items()
        }


def _stored(t: Tensor) -> Tensor:
    """The storage order of a parameter in :class:`FlatParams` (matrices transposed)."""
    return t.t() if t.ndim == 2 else t


def _shaped(part: Tensor, shape: tuple[int, ...], lead: tuple[int, ...]) -> Tensor:
    """A flat segment (with ``lead`` axes) viewed as the parameter ``shape``."""
    if len(shape) == 2:
        return part.view(*lead, shape[1], shape[0]).transpose(-1, -2)
    return part.view(*lead, *shape)


class FlatAdam:
    """Adam (Kingma & Ba; torch defaults) on one flat tensor: torch's fused CPU kernel through
    the public functional API (``torch.optim.adam.adam(fused=True)``, the update of
    ``torch.optim.Adam(fused=True)``) without the optimizer object's per-step bookkeeping."""

    def __init__(
        self, param: Tensor, *, lr: float, betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        self.param, self.lr, (self.b1, self.b2), self.eps = param, lr, betas, 1e-8
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.step_t = torch.zeros((), dtype=torch.float32)

    @property
    def t(self) -> int:
        return int(self.step_t)

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        adam(  # adds 1 to step_t, then updates param, m, v in place
            [self.param],
            [grad],
            [self.m],
            [self.v],
            [],
            [self.step_t],
            fused=True,
            lr=self.lr,
            beta1=self.b1,
            beta2=self.b2,
            weight_decay=0.0,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


def meta_objective(
    forward: BatchedForward,
    theta: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    inner_lr: InnerLR,
    steps: int,
    loss_fn: LossFn,
    second_order: bool,
    adapt_names: Collection[str] | None = None,
) -> Tensor:
    """Mean query loss after adapting every task of ``batch`` from ``theta``.

    Differentiable w.r.t. ``theta`` (and a learned ``inner_lr``): with ``second_order`` the
    gradient flows through the inner steps; without, it is the query gradient at theta'.
    ``adapt_names`` (ANIL) adapts only those parameters in the inner loop; the gradient still
    reaches every parameter of ``theta`` through the query forward.
    """
    return meta_objective_stacked(
        forward,
        expand_params(theta, batch.n_tasks),
        batch,
        inner_lr=inner_lr,
        steps=steps,
        loss_fn=loss_fn,
        second_order=second_order,
        adapt_names=adapt_names,
    )


def meta_objective_stacked(
    forward: BatchedForward,
    theta_t: Params,
    batch: TaskBatch,
    *,
    inner_lr: InnerLR,
    steps: int,
    loss_fn: LossFn,
    second_order: bool,
    adapt_names: Collection[str] | None = None,
) -> Tensor:
    """:func:`meta_objective` from parameters already stacked per task ``{name: [T, ...]}``."""
    phi = inner_steps_batched(
        forward,
        theta_t,
        batch.support_x,
        batch.support_y,
        steps=steps,
        inner_lr=inner_lr,
        loss_fn=loss_fn,
        create_graph=second_order,
        adapt_names=adapt_names,
    )
    return mean_task_loss(loss_fn, forward(phi, batch.query_x), batch.query_y)


def _seeded_model(model_config: MLPConfig | ConvConfig, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = build_model(model_config)
        return model


def meta_train(
    model_config: MLPConfig | ConvConfig,
    task_sampler: TaskSampler,
    config: MetaTrainConfig,
    *,
    callback: Callback | None = None,
    init_params: Mapping[str, Tensor] | None = None,
) -> MetaTrainResult:
    """Meta-train an initializer with ``config.method`` (``pretrained`` = joint baseline)."""
    model = _seeded_model(model_config, config.seed)
    start = dict(init_params) if init_params is not None else dict(model.named_parameters())
    loss_fn = resolve_loss(config, model_config, masked=sampler_is_masked(task_sampler))
    if config.method == "pretrained":
        return _pretrain(model, model_config, task_sampler, config, start, loss_fn, callback)
    learn_lr = config.method == "metasgd"
    second_order = config.method in ("maml", "metasgd")
    named: dict[str, Tensor] = {k: v.detach() for k, v in start.items()}
    names = list(named)
    adapt_names = (
        None if config.adapt_names is None else resolve_adapt_names(named, config.adapt_names)
    )
    if learn_lr:
        named.update({f"inner_lr.{k}": torch.full_like(named[k], config.inner_lr) for k in names})
    flat = FlatParams(named)
    opt = FlatAdam(flat.flat, lr=config.meta_lr)
    forward = batched_forward(model)
    t_tasks = config.meta_batch_size
    losses: list[float] = []
    acc = torch.zeros(())
    began = time.perf_counter()
    done = 0
    for it in range(1, config.iterations + 1):
        batch = task_sampler.sample(t_tasks)
        views = flat.expanded(t_tasks)
        theta_t = {k: views[k] for k in names}
        lr: float | dict[str, Tensor] = (
            {k: views[f"inner_lr.{k}"] for k in names} if learn_lr else config.inner_lr
        )
        qloss = meta_objective_stacked(
            forward,
            theta_t,
            batch,
            inner_lr=lr,
            steps=config.inner_steps,
            loss_fn=loss_fn,
            second_order=second_order,
            adapt_names=adapt_names,
        )
        (grad,) = torch.autograd.grad(qloss, flat.flat)
        opt.step(grad)
        acc += qloss.detach()
        done = it
        if it % config.log_every == 0 or it == config.iterations:
            n_in = it % config.log_every or config.log_every
            mean = float(acc) / n_in
            acc.zero_()
            if not math.isfinite(mean):
                raise TrainingError(
                    f"meta-training diverged at iteration {it} (loss {mean}); lower meta_lr"
                )
            losses.append(mean)
            if (
                callback is not None
                and callback(MetaTrainProgress(it, mean, time.perf_counter() - began)) is False
            ):
                break
    elapsed = time.perf_counter() - began
    out = flat.detached()
    params = {k: out[k] for k in names}
    inner_lrs = {k: out[f"inner_lr.{k}"] for k in names} if learn_lr else None
    return MetaTrainResult(model_config, config, params, inner_lrs, tuple(losses), done, elapsed)


def _pretrain(
    model: nn.Module,
    model_config: MLPConfig | ConvConfig,
    task_sampler: TaskSampler,
    config: MetaTrainConfig,
    start: Mapping[str, Tensor],
    loss_fn: LossFn,
    callback: Callback | None,
) -> MetaTrainResult:
    """The paper's "pretrained" baseline: one network regressed on all tasks' points jointly."""
    flat = FlatParams({k: v.detach() for k, v in start.items()})
    opt = FlatAdam(flat.flat, lr=config.meta_lr)
    forward = batched_forward(model)
    losses: list[float] = []
    acc = torch.zeros(())
    began = time.perf_counter()
    done = 0
    for it in range(1, config.iterations + 1):
        b = task_sampler.sample(config.meta_batch_size)
        x = torch.cat([b.support_x, b.query_x], dim=1)
        y = torch.cat([b.support_y, b.query_y], dim=1)
        theta = flat.expanded(x.shape[0])
        loss = mean_task_loss(loss_fn, forward(theta, x), y)
        (grad,) = torch.autograd.grad(loss, flat.flat)
        opt.step(grad)
        acc += loss.detach()
        done = it
        if it % config.log_every == 0 or it == config.iterations:
            mean = float(acc) / (it % config.log_every or config.log_every)
            acc.zero_()
            losses.append(mean)
            if (
                callback is not None
                and callback(MetaTrainProgress(it, mean, time.perf_counter() - began)) is False
            ):
                break
    elapsed = time.perf_counter() - began
    return MetaTrainResult(
        model_config, config, flat.detached(), None, tuple(losses), done, elapsed
    )
