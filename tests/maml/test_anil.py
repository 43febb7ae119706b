"""Head-only / partial adaptation (ANIL): each entry point against a by-hand oracle."""

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
    expand_params,
    inner_steps_batched,
    params_of,
    per_task_loss,
)
from mamlctl.maml.meta import MetaTrainConfig, meta_objective, meta_train
from mamlctl.maml.models import MLPConfig, build_model, mse_loss
from mamlctl.maml.tasks import SineTaskSampler, SineTaskSpec, TaskBatch

HEAD = ("layers.2.weight", "layers.2.bias")
MLP = MLPConfig(input_size=1, output_size=1)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(MLP)


def _batch(n: int, k: int = 10, seed: int = 0) -> TaskBatch:
    return SineTaskSampler(SineTaskSpec(support=k, query=k), seed=seed).sample(n)


def _head_steps_by_hand(
    model: nn.Module, theta: dict[str, Tensor], sx: Tensor, sy: Tensor, *, steps: int, lr: float
) -> dict[str, Tensor]:
    """Oracle: plain autograd on the module's own forward, gradient w.r.t. the head only."""
    phi = {k: v.detach().clone() for k, v in theta.items()}
    for _ in range(steps):
        head = [phi[n].requires_grad_(True) for n in HEAD]
        loss = ((functional_call(model, phi, (sx,)) - sy) ** 2).mean()
        grads = torch.autograd.grad(loss, head)
        phi.update({n: (h - lr * g).detach() for n, h, g in zip(HEAD, head, grads, strict=True)})
    return phi


@pytest.mark.parametrize("steps", [1, 3])
def test_head_only_steps_equal_hand_computation_and_body_is_theta(steps: int) -> None:
    model = _mlp()
    theta = params_of(model)
    b = _batch(5)
    expected = [
        _head_steps_by_hand(model, theta, b.support_x[i], b.support_y[i], steps=steps, lr=0.01)
        for i in range(5)
    ]
    for chunk in (None, 2):
        out = batch_adapt(
            model,
            theta,
            b.support_x,
            b.support_y,
            steps=steps,
            inner_lr=0.01,
            loss_fn=mse_loss,
            chunk_size=chunk,
            adapt_names=HEAD,
        )
        assert list(out) == list(theta)
        for name, value in out.items():
            assert value.shape == (5, *theta[name].shape)
            if name in HEAD:
                for i in range(5):
                    torch.testing.assert_close(value[i], expected[i][name], rtol=0, atol=1e-6)
            else:
                # The body is theta itself, expanded: a stride-0 view, equal bit for bit.
                assert value.stride(0) == 0 and value.data_ptr() == theta[name].data_ptr()
                assert all(torch.equal(value[i], theta[name]) for i in range(5))
    for i in range(5):
        one = adapt(
            model,
            theta,
            b.support_x[i],
            b.support_y[i],
            steps=steps,
            inner_lr=0.01,
            loss_fn=mse_loss,
            create_graph=False,
            adapt_names=HEAD,
        )
        for name in theta:
            if name in HEAD:
                torch.testing.assert_close(one[name], expected[i][name], rtol=0, atol=1e-6)
            else:
                assert one[name] is theta[name]
    curve = adaptation_curve(
        model,
        theta,
        b.support_x,
        b.support_y,
        b.query_x,
        b.query_y,
        steps=steps,
        inner_lr=0.01,
        loss_fn=mse_loss,
        adapt_names=HEAD,
    )
    by_hand = torch.stack(
        [
            mse_loss(functional_call(model, expected[i], (b.query_x[i],)), b.query_y[i])
            for i in range(5)
        ]
    )
    torch.testing.assert_close(curve[steps], by_hand.detach(), rtol=1e-5, atol=1e-6)


def test_none_adapts_everything_exactly_as_before() -> None:
    """``adapt_names=None`` is the pre-ANIL update (every parameter, v - lr * g), bit for bit."""
    model = _mlp(seed=1)
    theta = params_of(model)
    b = _batch(6, seed=1)
    forward = batched_forward(model)
    # The pre-ANIL inner loop, verbatim.
    phi = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    phi_t = expand_params(phi, 6)
    names = list(phi_t)
    for _ in range(2):
        values = [phi_t[n] for n in names]
        loss = per_task_loss(mse_loss, forward(phi_t, b.support_x), b.support_y).sum()
        grads = torch.autograd.grad(loss, values)
        phi_t = {n: (v - 0.01 * g).detach() for n, v, g in zip(names, values, grads, strict=True)}
        phi_t = {n: v.requires_grad_(True) for n, v in phi_t.items()}
    for names_arg in (None, list(theta)):
        got = batch_adapt(
            model,
            theta,
            b.support_x,
            b.support_y,
            steps=2,
            inner_lr=0.01,
            loss_fn=mse_loss,
            adapt_names=names_arg,
        )
        for n in theta:
            assert torch.equal(got[n], phi_t[n].detach())
            assert got[n].is_contiguous()
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    q_none = meta_objective(
        forward, th, b, inner_lr=0.01, steps=1, loss_fn=mse_loss, second_order=True
    )
    q_all = meta_objective(
        forward,
        th,
        b,
        inner_lr=0.01,
        steps=1,
        loss_fn=mse_loss,
        second_order=True,
        adapt_names=list(theta),
    )
    assert torch.equal(q_none, q_all)
    for g1, g2 in zip(
        torch.autograd.grad(q_none, list(th.values())),
        torch.autograd.grad(q_all, list(th.values())),
        strict=True,
    ):
        assert torch.equal(g1, g2)


def _reference_head_only_meta_grad(
    model: nn.Module, theta: dict[str, Tensor], b: TaskBatch, *, lr: float, second_order: bool
) -> list[Tensor]:
    """Oracle: per-task loop in float64; inner step on the head only, body at theta."""
    th = {k: v.detach().double().requires_grad_(True) for k, v in theta.items()}
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b.n_tasks):
        sx, sy = b.support_x[i].double(), b.support_y[i].double()
        loss = ((functional_call(model, th, (sx,)) - sy) ** 2).mean()
        grads = torch.autograd.grad(loss, [th[n] for n in HEAD], create_graph=second_order)
        phi = dict(th)
        phi.update({n: th[n] - lr * g for n, g in zip(HEAD, grads, strict=True)})
        qx, qy = b.query_x[i].double(), b.query_y[i].double()
        total = total + ((functional_call(model, phi, (qx,)) - qy) ** 2).mean()
    return list(torch.autograd.grad(total / b.n_tasks, list(th.values())))


@pytest.mark.parametrize("second_order", [True, False])
def test_head_only_meta_gradient_equals_float64_reference(second_order: bool) -> None:
    model = _mlp(seed=5).double()
    theta = params_of(model)
    b = _batch(6, seed=2)
    ref = _reference_head_only_meta_grad(model, theta, b, lr=0.01, second_order=second_order)
    cast = TaskBatch(*(t.double() for t in (b.support_x, b.support_y, b.query_x, b.query_y)))
    th = {k: v.detach().double().requires_grad_(True) for k, v in theta.items()}
    q = meta_objective(
        batched_forward(model),
        th,
        cast,
        inner_lr=0.01,
        steps=1,
        loss_fn=mse_loss,
        second_order=second_order,
        adapt_names=HEAD,
    )
    got = torch.autograd.grad(q, list(th.values()))
    for name, g, r in zip(th, got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
        assert g.abs().sum() > 0, name  # the meta-gradient reaches the body too
    # ...and head-only is a different objective from full adaptation.
    q_full = meta_objective(
        batched_forward(model),
        th,
        cast,
        inner_lr=0.01,
        steps=1,
        loss_fn=mse_loss,
        second_order=second_order,
    )
    full = torch.autograd.grad(q_full, list(th.values()))
    assert max((a - c).abs().max().item() for a, c in zip(got, full, strict=True)) > 1e-6


def test_head_only_second_order_batch_adapt_stays_differentiable() -> None:
    model = _mlp(seed=2)
    th = {k: v.requires_grad_(True) for k, v in params_of(model).items()}
    b = _batch(3)
    out = batch_adapt(
        model,
        th,
        b.support_x,
        b.support_y,
        steps=1,
        inner_lr=0.01,
        loss_fn=mse_loss,
        create_graph=True,
        adapt_names=HEAD,
    )
    assert out["layers.0.weight"].stride(0) == 0
    q = per_task_loss(mse_loss, batched_forward(model)(out, b.query_x), b.query_y).mean()
    ref = meta_objective(
        batched_forward(model),
        th,
        b,
        inner_lr=0.01,
        steps=1,
        loss_fn=mse_loss,
        second_order=True,
        adapt_names=HEAD,
    )
    assert torch.equal(q, ref)


@pytest.mark.parametrize("bad", [("layers.9.weight",), ("layers.0.weight", "nope"), ()])
def test_unknown_or_empty_names_are_a_one_line_training_error(bad: tuple[str, ...]) -> None:
    model = _mlp()
    b = _batch(2)
    with pytest.raises(TrainingError) as err:
        batch_adapt(
            model,
            params_of(model),
            b.support_x,
            b.support_y,
            steps=1,
            inner_lr=0.01,
            loss_fn=mse_loss,
            adapt_names=bad,
        )
    assert "\n" not in str(err.value)
    with pytest.raises(TrainingError):
        adapt(
            model,
            params_of(model),
            b.support_x[0],
            b.support_y[0],
            steps=1,
            inner_lr=0.01,
            loss_fn=mse_loss,
            create_graph=False,
            adapt_names=bad,
        )
    with pytest.raises(TrainingError):
        inner_steps_batched(
            batched_forward(model),
            expand_params(params_of(model), 2),
            b.support_x,
            b.support_y,
            steps=1,
            inner_lr=0.01,
            loss_fn=mse_loss,
            create_graph=False,
            adapt_names=bad,
        )
    sampler = SineTaskSampler(SineTaskSpec(), seed=0)
    with pytest.raises(TrainingError):
        meta_train(MLP, sampler, MetaTrainConfig(iterations=2, adapt_names=bad))


def test_meta_train_head_only_trains_every_parameter_through_the_same_inner_loop() -> None:
    """meta_train with adapt_names = one Adam step on meta_objective(adapt_names) by hand."""
    sampler = SineTaskSampler(SineTaskSpec(), seed=3)
    result = meta_train(
        MLP, sampler, MetaTrainConfig(iterations=1, seed=4, log_every=1, adapt_names=HEAD)
    )
    torch.manual_seed(4)
    theta = {k: v.detach().requires_grad_(True) for k, v in build_model(MLP).named_parameters()}
    b = SineTaskSampler(SineTaskSpec(), seed=3).sample(25)
    q = meta_objective(
        batched_forward(build_model(MLP)),
        theta,
        b,
        inner_lr=0.01,
        steps=1,
        loss_fn=mse_loss,
        second_order=True,
        adapt_names=HEAD,
    )
    grads = torch.autograd.grad(q, list(theta.values()))
    assert result.losses[0] == pytest.approx(float(q.detach()), rel=1e-6)
    for (name, v), g in zip(theta.items(), grads, strict=True):
        # Adam's first step (bias-corrected): -lr * g / (|g| + eps).
        step = result.params[name] - v.detach()
        expected = -1e-3 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(step, expected, rtol=1e-3, atol=2e-6)
        assert g.abs().sum() > 0, name
    learned = meta_train(
        MLP,
        SineTaskSampler(SineTaskSpec(), seed=3),
        MetaTrainConfig(method="metasgd", iterations=5, log_every=5, adapt_names=HEAD),
    )
    assert learned.inner_lrs is not None
    for name, lr in learned.inner_lrs.items():
        moved = bool((lr - 0.01).abs().max() > 1e-4)
        assert moved == (name in HEAD), name
