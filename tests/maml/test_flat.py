"""The meta-training fast paths against their plain references: flat storage, Adam, fused MSE,
the foreach inner update."""

from __future__ import annotations

import torch

from mamlctl.maml.engine import mean_task_loss, per_task_loss, sgd_step, summed_task_loss
from mamlctl.maml.meta import FlatAdam, FlatParams
from mamlctl.maml.models import ConvConfig, MLPConfig, build_model, gaussian_nll_loss, mse_loss


def _named(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    mlp = build_model(MLPConfig(input_size=3, hidden=(5, 4), output_size=2))
    conv = build_model(ConvConfig(window=6, horizon=1, channels=2))
    named = {f"mlp.{k}": v.detach() for k, v in mlp.named_parameters()}
    named.update({f"conv.{k}": v.detach() for k, v in conv.named_parameters()})
    return named


def test_flat_params_round_trip_and_views_equal_the_parameters() -> None:
    named = _named()
    flat = FlatParams(named)
    assert flat.flat.numel() == sum(v.numel() for v in named.values())
    out = flat.detached()
    assert list(out) == list(named)
    for k, v in named.items():
        assert torch.equal(out[k], v) and out[k].is_contiguous()
        assert torch.equal(flat.views()[k], v)
        ex = flat.expanded(3)[k]
        assert ex.shape == (3, *v.shape) and ex.stride(0) == 0
        assert all(torch.equal(ex[i], v) for i in range(3))


def test_flat_gradient_is_the_sum_over_tasks_of_each_parameter_gradient() -> None:
    named = _named(1)
    flat = FlatParams(named)
    views = flat.expanded(4)
    weights = {k: torch.randn(4, *v.shape) for k, v in named.items()}
    loss = sum((views[k] * weights[k]).sum() for k in named)
    (grad,) = torch.autograd.grad(loss, flat.flat)
    # Oracle: d/dθ Σ_t <θ, w_t> = Σ_t w_t, read back through the same views.
    by_name = flat.views(grad)
    for k in named:
        torch.testing.assert_close(by_name[k], weights[k].sum(0), rtol=1e-6, atol=1e-6)


def test_flat_adam_matches_torch_optim_adam() -> None:
    """Close to the default Adam; bit for bit the fused one (the same kernel)."""
    torch.manual_seed(2)
    ref = torch.randn(50, requires_grad=True)
    fused = torch.randn(50, requires_grad=True)
    with torch.no_grad():
        fused.copy_(ref)
    mine = ref.detach().clone()
    opt = torch.optim.Adam([ref], lr=1e-2)
    fused_opt = torch.optim.Adam([fused], lr=1e-2, fused=True)
    flat_opt = FlatAdam(mine, lr=1e-2)
    for step in range(20):
        grad = torch.randn(50) * (step + 1)
        ref.grad = grad.clone()
        fused.grad = grad.clone()
        opt.step()
        fused_opt.step()
        flat_opt.step(grad)
        torch.testing.assert_close(mine, ref.detach(), rtol=1e-6, atol=1e-7)
        assert torch.equal(mine, fused.detach())
    assert flat_opt.t == 20


def test_fused_mse_equals_per_task_losses() -> None:
    torch.manual_seed(3)
    pred, target = torch.randn(7, 10, 2), torch.randn(7, 10, 2)
    per_task = per_task_loss(mse_loss, pred, target)
    torch.testing.assert_close(summed_task_loss(mse_loss, pred, target), per_task.sum())
    torch.testing.assert_close(mean_task_loss(mse_loss, pred, target), per_task.mean())
    gauss = torch.randn(7, 10, 4)
    g_tasks = per_task_loss(gaussian_nll_loss, gauss, target)
    assert torch.equal(summed_task_loss(gaussian_nll_loss, gauss, target), g_tasks.sum())
    assert torch.equal(mean_task_loss(gaussian_nll_loss, gauss, target), g_tasks.mean())


def test_foreach_inner_update_is_v_minus_lr_g_bit_for_bit() -> None:
    named = _named(4)
    names = list(named)
    values = list(named.values())
    grads = [torch.randn_like(v) for v in values]
    got = sgd_step(names, values, grads, 0.01)
    for v, g, o in zip(values, grads, got, strict=True):
        assert torch.equal(o, v - 0.01 * g)
    lrs = {k: torch.rand_like(v) for k, v in named.items()}
    got = sgd_step(names, values, grads, lrs)
    for n, v, g, o in zip(names, values, grads, got, strict=True):
        assert torch.equal(o, v - lrs[n] * g)
