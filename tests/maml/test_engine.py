"""The inner loop and the meta-gradient, each checked against a hand-written oracle."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlctl.errors import TrainingError
from mamlctl.maml.engine import (
    adapt,
    adaptation_curve,
    batch_adapt,
    batched_forward,
    params_of,
    per_task_loss,
)
from mamlctl.maml.meta import meta_objective
from mamlctl.maml.models import ConvConfig, MLPConfig, build_model, gaussian_nll_loss, mse_loss
from mamlctl.maml.tasks import SineTaskSampler, SineTaskSpec, TaskBatch


def _sine_batch(n: int, k: int = 10, seed: int = 0) -> TaskBatch:
    return SineTaskSampler(SineTaskSpec(support=k, query=k), seed=seed).sample(n)


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(MLPConfig(input_size=1, output_size=1)).to(dtype)


def test_one_inner_step_is_theta_minus_lr_grad_by_hand() -> None:
    model = _mlp()
    b = _sine_batch(1)
    sx, sy = b.support_x[0], b.support_y[0]
    # Oracle: the module's own autograd gradient, applied by hand.
    loss = ((model(sx) - sy) ** 2).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = {
        n: p.detach() - 0.01 * g for (n, p), g in zip(model.named_parameters(), grads, strict=True)
    }
    got = adapt(
        model,
        params_of(model),
        sx,
        sy,
        steps=1,
        inner_lr=0.01,
        loss_fn=mse_loss,
        create_graph=False,
    )
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=1e-7)
    batched = batch_adapt(
        model,
        params_of(model),
        b.support_x,
        b.support_y,
        steps=1,
        inner_lr=0.01,
        loss_fn=mse_loss,
    )
    for n in expected:
        torch.testing.assert_close(batched[n][0], expected[n], rtol=0, atol=1e-7)


def test_adapt_is_pure_and_zero_steps_is_identity() -> None:
    model = _mlp()
    params = params_of(model)
    before = {k: v.clone() for k, v in params.items()}
    b = _sine_batch(1)
    out = adapt(
        model,
        params,
        b.support_x[0],
        b.support_y[0],
        steps=0,
        inner_lr=0.01,
        loss_fn=mse_loss,
        create_graph=False,
    )
    for k in params:
        assert torch.equal(out[k], before[k])
    adapt(
        model,
        params,
        b.support_x[0],
        b.support_y[0],
        steps=3,
        inner_lr=0.01,
        loss_fn=mse_loss,
        create_graph=False,
    )
    for k in params:
        assert torch.equal(params[k], before[k])
    with pytest.raises(TrainingError):
        adapt(
            model,
            params,
            b.support_x[0],
            b.support_y[0],
            steps=-1,
            inner_lr=0.01,
            loss_fn=mse_loss,
            create_graph=False,
        )


@pytest.mark.parametrize(
    "config",
    [
        MLPConfig(input_size=1, output_size=1),
        ConvConfig(window=8, horizon=2, channels=3, layers=2, head="gaussian"),
    ],
    ids=["mlp", "conv-gaussian"],
)
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_batched_and_looped_adaptation_agree(
    config: MLPConfig | ConvConfig, chunk_size: int | None
) -> None:
    torch.manual_seed(3)
    model = build_model(config)
    n, k = 7, 6
    sx = torch.randn(n, k, config.window)
    sy = torch.randn(n, k, config.horizon)
    loss_fn = mse_loss if config.head == "mean" else gaussian_nll_loss
    lrs = {name: torch.rand_like(p) * 0.02 for name, p in model.named_parameters()}
    for inner_lr in (0.01, lrs):
        batched = batch_adapt(
            model,
            params_of(model),
            sx,
            sy,
            steps=3,
            inner_lr=inner_lr,
            loss_fn=loss_fn,
            chunk_size=chunk_size,
        )
        for i in range(n):
            looped = adapt(
                model,
                params_of(model),
                sx[i],
                sy[i],
                steps=3,
                inner_lr=inner_lr,
                loss_fn=loss_fn,
                create_graph=False,
            )
            for name in looped:
                torch.testing.assert_close(batched[name][i], looped[name], rtol=1e-5, atol=1e-6)


class _PlainNet(nn.Module):
    """A module without ``forward_batched``: the engine must fall back to vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 8)
        self.b = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_any_module_and_any_scalar_loss_work_through_vmap() -> None:
    torch.manual_seed(0)
    model = _PlainNet()
    b = _sine_batch(4, k=5)

    def l1(pred: Tensor, target: Tensor) -> Tensor:  # reduces to a scalar: needs vmap
        return (pred - target).abs().mean()

    out = batch_adapt(
        model, params_of(model), b.support_x, b.support_y, steps=2, inner_lr=0.05, loss_fn=l1
    )
    for i in range(4):
        ref = adapt(
            model,
            params_of(model),
            b.support_x[i],
            b.support_y[i],
            steps=2,
            inner_lr=0.05,
            loss_fn=l1,
            create_graph=False,
        )
        for name in ref:
            torch.testing.assert_close(out[name][i], ref[name], rtol=1e-5, atol=1e-6)
    losses = per_task_loss(l1, batched_forward(model)(out, b.query_x), b.query_y)
    assert losses.shape == (4,)


def _reference_meta_grad(
    model: nn.Module,
    theta: dict[str, Tensor],
    b: TaskBatch,
    *,
    steps: int,
    lr: float,
    second_order: bool,
) -> list[Tensor]:
    """Oracle: a per-task Python loop with explicit torch.autograd.grad, in float64."""
    theta = {k: v.detach().double().requires_grad_(True) for k, v in theta.items()}
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b.n_tasks):
        phi = dict(theta)
        for _ in range(steps):
            loss = (
                (functional_call(model, phi, (b.support_x[i].double(),)) - b.support_y[i].double())
                ** 2
            ).mean()
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=second_order)
            phi = {k: v - lr * g for (k, v), g in zip(phi.items(), grads, strict=True)}
        q = (
            (functional_call(model, phi, (b.query_x[i].double(),)) - b.query_y[i].double()) ** 2
        ).mean()
        total = total + q
    return list(torch.autograd.grad(total / b.n_tasks, list(theta.values())))


def _engine_meta_grad(
    model: nn.Module,
    theta: dict[str, Tensor],
    b: TaskBatch,
    *,
    steps: int,
    lr: float,
    second_order: bool,
    dtype: torch.dtype,
) -> list[Tensor]:
    th = {k: v.detach().to(dtype).requires_grad_(True) for k, v in theta.items()}
    cast = TaskBatch(*(t.to(dtype) for t in (b.support_x, b.support_y, b.query_x, b.query_y)))
    q = meta_objective(
        batched_forward(model),
        th,
        cast,
        inner_lr=lr,
        steps=steps,
        loss_fn=mse_loss,
        second_order=second_order,
    )
    return list(torch.autograd.grad(q, list(th.values())))


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_equals_float64_per_task_reference(steps: int) -> None:
    model = _mlp(seed=5)
    theta = params_of(model)
    b = _sine_batch(6, k=10, seed=2)
    ref = _reference_meta_grad(model, theta, b, steps=steps, lr=0.01, second_order=True)
    got64 = _engine_meta_grad(
        model.double(), theta, b, steps=steps, lr=0.01, second_order=True, dtype=torch.float64
    )
    for g, r in zip(got64, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    got32 = _engine_meta_grad(
        model.float(), theta, b, steps=steps, lr=0.01, second_order=True, dtype=torch.float32
    )
    for g, r in zip(got32, ref, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)


def test_first_order_gradient_is_query_gradient_at_adapted_params() -> None:
    model = _mlp(seed=6).double()
    theta = {k: v.double() for k, v in params_of(model).items()}
    b = _sine_batch(5, k=10, seed=4)
    first = _engine_meta_grad(
        model, theta, b, steps=1, lr=0.01, second_order=False, dtype=torch.float64
    )
    second = _engine_meta_grad(
        model, theta, b, steps=1, lr=0.01, second_order=True, dtype=torch.float64
    )
    # Oracle for FOMAML: the mean over tasks of grad_phi L_query(phi) at phi = theta'.
    ref = [torch.zeros_like(v) for v in theta.values()]
    for i in range(b.n_tasks):
        phi = adapt(
            model,
            theta,
            b.support_x[i].double(),
            b.support_y[i].double(),
            steps=1,
            inner_lr=0.01,
            loss_fn=mse_loss,
            create_graph=False,
        )
        phi = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
        q = mse_loss(functional_call(model, phi, (b.query_x[i].double(),)), b.query_y[i].double())
        for j, g in enumerate(torch.autograd.grad(q, list(phi.values()))):
            ref[j] += g / b.n_tasks
    for f, r in zip(first, ref, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-12)
    # ...and it differs from the second-order gradient by the Hessian term.
    diff = max((f - s).abs().max().item() for f, s in zip(first, second, strict=True))
    assert diff > 1e-4


def test_learned_inner_lr_gets_a_gradient() -> None:
    model = _mlp(seed=7)
    theta = {k: v.requires_grad_(True) for k, v in params_of(model).items()}
    lrs = {k: torch.full_like(v, 0.01, requires_grad=True) for k, v in theta.items()}
    b = _sine_batch(4)
    q = meta_objective(
        batched_forward(model), theta, b, inner_lr=lrs, steps=1, loss_fn=mse_loss, second_order=True
    )
    grads = torch.autograd.grad(q, list(lrs.values()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_adaptation_curve_rows_match_batch_adapt() -> None:
    model = _mlp(seed=8)
    b = _sine_batch(5)
    curve = adaptation_curve(
        model,
        params_of(model),
        b.support_x,
        b.support_y,
        b.query_x,
        b.query_y,
        steps=3,
        inner_lr=0.01,
        loss_fn=mse_loss,
    )
    assert curve.shape == (4, 5)
    for steps in (0, 3):
        phi = batch_adapt(
            model,
            params_of(model),
            b.support_x,
            b.support_y,
            steps=steps,
            inner_lr=0.01,
            loss_fn=mse_loss,
        )
        ref = per_task_loss(mse_loss, batched_forward(model)(phi, b.query_x), b.query_y)
        torch.testing.assert_close(curve[steps], ref, rtol=1e-5, atol=1e-6)
