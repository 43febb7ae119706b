"""Masked losses (NaN targets unobserved) and a masked inner step.

Oracles: the mean over the observed entries computed by hand in float64; one inner step equals
theta - alpha * grad L with grad L written by hand for a linear model on the observed entries
only; with no NaN the masked losses equal the unmasked ones exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.maml.engine import adapt, batch_adapt
from mamlctl.maml.meta import MetaTrainConfig, resolve_loss
from mamlctl.maml.models import (
    MLPConfig,
    build_model,
    gaussian_nll_loss,
    loss_by_name,
    mae_loss,
    masked_mae_loss,
    masked_mse_loss,
    mse_loss,
)


def _holes(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(*shape, generator=g)
    target = torch.randn(*shape, generator=g)
    hidden = torch.rand(*shape, generator=g) < 0.4
    return pred, target.masked_fill(hidden, math.nan), ~hidden.numpy()


@pytest.mark.parametrize("name", ["mse", "mae", "gaussian_nll"])
def test_masked_loss_is_the_mean_over_observed_entries(name: str) -> None:
    pred, target, seen = _holes((3, 5, 4), seed=1)
    if name == "gaussian_nll":
        logvar = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
        pred = torch.cat([pred, logvar], dim=-1)
    got = loss_by_name(name, masked=True)(pred, target).numpy()
    p, t = pred.double().numpy(), target.double().numpy()
    for task in range(3):
        m = seen[task]
        if name == "mse":
            terms = (p[task][m] - t[task][m]) ** 2
        elif name == "mae":
            terms = np.abs(p[task][m] - t[task][m])
        else:
            mean, lv = p[task, :, :4][m], np.clip(p[task, :, 4:][m], -10, 10)
            terms = 0.5 * (lv + (t[task][m] - mean) ** 2 * np.exp(-lv) + math.log(2 * math.pi))
        assert got[task] == pytest.approx(terms.mean(), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), h=st.integers(1, 5))
def test_with_no_nan_the_masked_losses_equal_the_unmasked_exactly(
    seed: int, n: int, h: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(4, n, h, generator=g), torch.randn(4, n, h, generator=g)
    for name, plain in (("mse", mse_loss), ("mae", mae_loss)):
        torch.testing.assert_close(
            loss_by_name(name, masked=True)(pred, target), plain(pred, target), rtol=0, atol=0
        )
    wide = torch.cat([pred, torch.randn(4, n, h, generator=g)], dim=-1)
    torch.testing.assert_close(
        loss_by_name("gaussian_nll", masked=True)(wide, target),
        gaussian_nll_loss(wide, target),
        rtol=2e-7,
        atol=0,
    )


def test_no_nan_reaches_a_gradient_and_an_all_hidden_task_gives_zero() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    target = torch.full((2, 3, 4), math.nan)
    target[0, 0, 0] = 1.0
    for fn in (masked_mse_loss, masked_mae_loss):
        loss = fn(pred, target)
        assert loss[1].item() == 0.0
        (grad,) = torch.autograd.grad(loss.sum(), pred)
        assert torch.isfinite(grad).all()
        assert (grad[0].flatten()[1:] == 0).all() and (grad[1] == 0).all()


def test_masked_inner_step_equals_theta_minus_alpha_grad_by_hand() -> None:
    """A linear model y = W x + b, MSE on the observed targets: grad by hand in float64."""
    config = MLPConfig(input_size=4, hidden=(), output_size=3)
    torch.manual_seed(0)
    model = build_model(config)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(5, 4)
    y = torch.randn(5, 3)
    y[3, 1:] = math.nan
    y[4, :] = math.nan
    alpha = 0.1
    got = adapt(
        model,
        theta,
        x,
        y,
        steps=1,
        inner_lr=alpha,
        loss_fn=masked_mse_loss,
        create_graph=False,
    )
    w, b = theta["layers.0.weight"].double().numpy(), theta["layers.0.bias"].double().numpy()
    xd, yd = x.double().numpy(), y.double().numpy()
    seen = ~np.isnan(yd)
    err = np.where(seen, xd @ w.T + b - np.nan_to_num(yd), 0.0)  # residual on observed only
    count = seen.sum()
    grad_w = 2 * err.T @ xd / count
    grad_b = 2 * err.sum(axis=0) / count
    np.testing.assert_allclose(got["layers.0.weight"].numpy(), w - alpha * grad_w, atol=1e-6)
    np.testing.assert_allclose(got["layers.0.bias"].numpy(), b - alpha * grad_b, atol=1e-6)
    # the batched job (what adaptation runs) takes the same step
    batched = batch_adapt(
        model, theta, x[None], y[None], steps=1, inner_lr=alpha, loss_fn=masked_mse_loss
    )
    for k, v in got.items():
        torch.testing.assert_close(batched[k][0], v, rtol=0, atol=1e-6)


def test_meta_training_picks_the_masked_loss_only_for_partial_specs() -> None:
    mean = MLPConfig(input_size=4, output_size=2)
    assert resolve_loss(MetaTrainConfig(loss="mae"), mean) is mae_loss
    assert resolve_loss(MetaTrainConfig(), mean) is mse_loss  # unmasked: the fused MSE path
    assert resolve_loss(MetaTrainConfig(loss="mae"), mean, masked=True) is masked_mae_loss
    assert resolve_loss(MetaTrainConfig(), mean, masked=True) is masked_mse_loss
