"""The functional inner loop: parameters are explicit dicts, adaptation is a pure function.

Two entry points share one update rule ``θ' = θ - alpha ⊙ ∇_θ L(f_θ(support_x), support_y)``:

- :func:`adapt` adapts ONE task with :func:`torch.func.grad` over
  :func:`torch.func.functional_call`; with ``create_graph=True`` the result stays differentiable
  w.r.t. the given parameters (second-order MAML), otherwise the step is a constant shift.
- :func:`batch_adapt` adapts N tasks at once with no Python loop over tasks: the shared
  parameters are expanded to a leading task axis (views), all tasks run in one batched forward
  (the module's ``forward_batched`` when it has one, else ``vmap(functional_call)``), the
  per-task losses are summed and ONE ``torch.autograd.grad`` yields every task's gradient.
  It returns stacked per-task parameters ``{name: [N, ...]}``; ``chunk_size`` bounds memory.

``inner_lr`` is a float (MAML) or a dict of per-parameter tensors shaped like the parameters
(Meta-SGD).

Head-only / partial adaptation (ANIL, Raghu et al. 2020): every entry point takes
``adapt_names``. ``None`` adapts all parameters. Otherwise only the named parameters are updated
by the inner loop and only their gradients are computed there (the rest is a constant feature
extractor for the inner loop, which is where the speed-up comes from); the others stay at theta,
the very same tensors, so an outer (meta) gradient still reaches every parameter through the
forward. Unknown or no names raise :class:`~mamlctl.errors.TrainingError`.

Losses follow the convention of :mod:`mamlctl.maml.models`: they average over the last two axes
(examples, outputs) and keep leading axes, so they give per-task losses directly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mamlctl.errors import TrainingError
from mamlctl.maml.models import mse_loss

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
InnerLR = float | Mapping[str, Tensor]


class BatchedForward(Protocol):
    """``(params with leading task axis T, x [T, B, ...]) -> [T, B, out]``."""

    def __call__(self, params: Mapping[str, Tensor], x: Tensor, /) -> Tensor: ...


def params_of(model: nn.Module) -> Params:
    """A detached copy of the module's parameters (the functional state), in module order."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def batched_forward(model: nn.Module) -> BatchedForward:
    """The module's own ``forward_batched`` when it offers one, else ``vmap(functional_call)``."""
    own = getattr(model, "forward_batched", None)
    if callable(own):
        return own  # type: ignore[no-any-return]

    def _vmapped(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        def one(p: Mapping[str, Tensor], xx: Tensor) -> Tensor:
            return functional_call(model, dict(p), (xx,))  # type: ignore[no-any-return]

        out: Tensor = vmap(one)(dict(params), x)
        return out

    return _vmapped


def per_task_loss(loss_fn: LossFn, pred: Tensor, target: Tensor) -> Tensor:
    """Per-task losses ``[T]`` of batched ``pred [T, B, out]``; falls back to ``vmap`` for a
    loss that reduces everything to a scalar."""
    losses = loss_fn(pred, target)
    if losses.shape == (pred.shape[0],):
        return losses
    return vmap(loss_fn)(pred, target)


def _lr_for(inner_lr: InnerLR, name: str) -> float | Tensor:
    if isinstance(inner_lr, Mapping):
        return inner_lr[name]
    return inner_lr


def _check_steps(steps: int) -> None:
    if steps < 0:
        raise TrainingError(f"inner steps must be >= 0, got {steps}")


def resolve_adapt_names(
    params: Mapping[str, Tensor], adapt_names: Collection[str] | None
) -> list[str]:
    """The parameters the inner loop updates, in ``params`` order (all for ``None``).

    Unknown names, or an empty collection, raise a one-line :class:`TrainingError`.
    """
    if adapt_names is None:
        return list(params)
    if isinstance(adapt_names, str):
        adapt_names = (adapt_names,)
    wanted = set(adapt_names)
    unknown = sorted(wanted - set(params))
    if unknown:
        raise TrainingError(
            f"adapt_names: unknown parameter(s) {unknown}; the model has {list(params)}"
        )
    if not wanted:
        raise TrainingError("adapt_names is empty: name at least one parameter to adapt")
    return [n for n in params if n in wanted]


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    *,
    steps: int,
    inner_lr: InnerLR,
    loss_fn: LossFn,
    create_graph: bool,
    adapt_names: Collection[str] | None = None,
) -> Params:
    """Adapt one task: ``steps`` gradient steps from ``params`` on ``(support_x, support_y)``.

    Pure: ``params`` are not modified. ``create_graph=True`` keeps the steps differentiable
    w.r.t. ``params`` (and a learned ``inner_lr``); ``False`` treats each gradient as constant
    (first-order MAML / plain fine-tuning). ``adapt_names`` restricts the steps to those
    parameters (the others are returned as the given tensors); ``None`` = all.
    """
    _check_steps(steps)
    names = resolve_adapt_names(params, adapt_names)
    fixed = {n: v for n, v in params.items() if n not in set(names)}

    def task_loss(p: Params) -> Tensor:
        full = {**fixed, **p} if fixed else p
        return loss_fn(functional_call(model, full, (support_x,)), support_y).mean()

    grad_fn = torch.func.grad(task_loss)
    phi: Params = {n: params[n] for n in names}
    for _ in range(steps):
        grads = grad_fn(phi)
        if not create_graph:
            grads = {n: g.detach() for n, g in grads.items()}
        phi = {n: p - _lr_for(inner_lr, n) * grads[n] for n, p in phi.items()}
    return {n: phi.get(n, v) for n, v in params.items()}


def expand_params(params: Mapping[str, Tensor], n_tasks: int) -> Params:
    """Views of the shared parameters with a leading task axis (no copy; grads flow back)."""
    return {n: p.unsqueeze(0).expand(n_tasks, *p.shape) for n, p in params.items()}


def inner_steps_batched(
    forward: BatchedForward,
    params_t: Params,
    support_x: Tensor,
    support_y: Tensor,
    *,
    steps: int,
    inner_lr: InnerLR,
    loss_fn: LossFn,
    create_graph: bool,
    adapt_names: Collection[str] | None = None,
) -> Params:
    """``steps`` inner updates of task-stacked parameters ``params_t`` ``{name: [T, ...]}``.

    Each step is one batched forward and one backward for all T tasks. Gradients are taken
    w.r.t. the adapted entries of ``params_t`` (which must be in the autograd graph, e.g.
    :func:`expand_params` of leaves requiring grad); the sum of per-task losses gives each task
    its own gradient. With ``adapt_names`` only those entries are updated (and differentiated);
    the others are returned as the given tensors.
    """
    _check_steps(steps)
    names = resolve_adapt_names(params_t, adapt_names)
    phi = dict(params_t)
    for _ in range(steps):
        values = [phi[n] for n in names]
        loss = summed_task_loss(loss_fn, forward(phi, support_x), support_y)
        grads = torch.autograd.grad(loss, values, create_graph=create_graph)
        phi.update(zip(names, sgd_step(names, values, grads, inner_lr), strict=True))
    return phi


def sgd_step(
    names: list[str], values: list[Tensor], grads: Sequence[Tensor], inner_lr: InnerLR
) -> list[Tensor]:
    """``v - alpha * g`` for every parameter, out of place (differentiable)."""
    return [v - s for v, s in zip(values, _scaled_grads(names, grads, inner_lr), strict=True)]


def _scaled_grads(names: list[str], grads: Sequence[Tensor], inner_lr: InnerLR) -> list[Tensor]:
    """``alpha * g`` per parameter: a float rate, or per-parameter rates (Meta-SGD, which may
    broadcast)."""
    if isinstance(inner_lr, Mapping):
        return [inner_lr[n] * g for n, g in zip(names, grads, strict=True)]
    return [g * inner_lr for g in grads]


def summed_task_loss(loss_fn: LossFn, pred: Tensor, target: Tensor) -> Tensor:
    """``per_task_loss(...).sum()``; for :func:`~mamlctl.maml.models.mse_loss` one fused
    ``F.mse_loss`` (fewer autograd nodes, cheaper double backward; equal up to rounding)."""
    if loss_fn is mse_loss and pred.shape == target.shape and pred.ndim >= 3:
        return F.mse_loss(pred, target, reduction="sum") / (pred.shape[-1] * pred.shape[-2])
    return per_task_loss(loss_fn, pred, target).sum()


def mean_task_loss(loss_fn: LossFn, pred: Tensor, target: Tensor) -> Tensor:
    """``per_task_loss(...).mean()``, fused like :func:`summed_task_loss` for the MSE."""
    if loss_fn is mse_loss and pred.shape == target.shape and pred.ndim >= 3:
        return F.mse_loss(pred, target)
    return per_task_loss(loss_fn, pred, target).mean()


def batch_adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    *,
    steps: int,
    inner_lr: InnerLR,
    loss_fn: LossFn,
    create_graph: bool = False,
    chunk_size: int | None = 1024,
    adapt_names: Collection[str] | None = None,
) -> Params:
    """Adapt N independent tasks (series) at once; returns stacked params ``{name: [N, ...]}``.

    ``support_x [N, K, ...]``, ``support_y [N, K, H]``. With ``create_graph=False`` (the daily
    per-series job) nothing but the current step's graph is kept and the result is detached;
    tasks are processed ``chunk_size`` at a time to bound peak memory. With
    ``create_graph=True`` the result is differentiable w.r.t. ``params`` (one chunk).

    ``adapt_names`` (ANIL): only those parameters are adapted; every name is still returned,
    the adapted ones as per-task ``[N, ...]`` tensors, the others as ``params[name]`` expanded
    to ``[N, ...]`` -- a stride-0 VIEW of theta, not a copy (``N`` times nothing in memory).
    Callers that write into the result, or need contiguous storage, call ``.contiguous()``.
    """
    _check_steps(steps)
    if support_x.shape[0] != support_y.shape[0]:
        raise TrainingError(
            f"support_x has {support_x.shape[0]} tasks but support_y {support_y.shape[0]}"
        )
    names = resolve_adapt_names(params, adapt_names)
    n = support_x.shape[0]
    forward = batched_forward(model)
    if create_graph:
        return inner_steps_batched(
            forward,
            expand_params(params, n),
            support_x,
            support_y,
            steps=steps,
            inner_lr=inner_lr,
            loss_fn=loss_fn,
            create_graph=True,
            adapt_names=adapt_names,
        )
    lrs = _detached_lrs(inner_lr)
    adapted = set(names)
    size = n if chunk_size is None else max(1, chunk_size)
    chunks: list[Params] = []
    with torch.enable_grad():
        for start in range(0, n, size):
            sx, sy = support_x[start : start + size], support_y[start : start + size]
            leaves, phi_t = _per_task_leaves(params, names, sx.shape[0])
            for _ in range(steps):
                _step_in_place(forward, phi_t, leaves, sx, sy, lrs, loss_fn)
            chunks.append({k: v.detach() for k, v in leaves.items()})
    out = chunks[0] if len(chunks) == 1 else {k: torch.cat([c[k] for c in chunks]) for k in names}
    if len(adapted) == len(params):
        return out
    return {
        k: out[k] if k in adapted else v.detach().expand(n, *v.shape) for k, v in params.items()
    }


def _detached_lrs(inner_lr: InnerLR) -> InnerLR:
    if isinstance(inner_lr, Mapping):
        return {k: v.detach() for k, v in inner_lr.items()}
    return inner_lr


def _per_task_leaves(
    params: Mapping[str, Tensor], names: list[str], n_tasks: int
) -> tuple[Params, Params]:
    """Per-task copies ``[n_tasks, ...]`` of the adapted parameters (leaves requiring grad,
    updated in place step after step) and the full parameter dict the forward reads (the
    others as stride-0 expanded views of theta)."""
    adapted = set(names)
    leaves = {
        k: params[k].detach().expand(n_tasks, *params[k].shape).clone().requires_grad_(True)
        for k in names
    }
    phi_t = {
        k: leaves[k] if k in adapted else v.detach().expand(n_tasks, *v.shape)
        for k, v in params.items()
    }
    return leaves, phi_t


def _step_in_place(
    forward: BatchedForward,
    phi_t: Params,
    leaves: Params,
    support_x: Tensor,
    support_y: Tensor,
    inner_lr: InnerLR,
    loss_fn: LossFn,
) -> None:
    """One first-order inner step ``leaf -= alpha * grad`` in place (no graph kept, no new
    parameter tensors per step; the same arithmetic as ``v - alpha * g``)."""
    names = list(leaves)
    values = list(leaves.values())
    loss = summed_task_loss(loss_fn, forward(phi_t, support_x), support_y)
    grads = torch.autograd.grad(loss, values)
    with torch.no_grad():
        for v, s in zip(values, _scaled_grads(names, grads, inner_lr), strict=True):
            v.sub_(s)


def task_losses(
    model: nn.Module, params_t: Mapping[str, Tensor], x: Tensor, y: Tensor, *, loss_fn: LossFn
) -> Tensor:
    """Per-task losses ``[T]`` of task-stacked params on ``x [T, B, ...]``, ``y [T, B, H]``."""
    with torch.no_grad():
        return per_task_loss(loss_fn, batched_forward(model)(params_t, x), y)


def adaptation_curve(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    steps: int,
    inner_lr: InnerLR,
    loss_fn: LossFn,
    metric_fn: LossFn | None = None,
    adapt_names: Collection[str] | None = None,
) -> Tensor:
    """Per-task query metric after 0, 1, ..., ``steps`` inner steps: ``[steps + 1, N]``.

    ``metric_fn`` defaults to ``loss_fn`` (e.g. adapt with Gaussian NLL, report MSE);
    ``adapt_names`` as in :func:`batch_adapt`.
    """
    metric = metric_fn or loss_fn
    names = resolve_adapt_names(params, adapt_names)
    forward = batched_forward(model)
    lrs = _detached_lrs(inner_lr)
    rows: list[Tensor] = []
    with torch.enable_grad():
        leaves, phi_t = _per_task_leaves(params, names, support_x.shape[0])
        for step in range(steps + 1):
            with torch.no_grad():
                rows.append(per_task_loss(metric, forward(phi_t, query_x), query_y))
            if step < steps:
                _step_in_place(forward, phi_t, leaves, support_x, support_y, lrs, loss_fn)
    return torch.stack(rows)
