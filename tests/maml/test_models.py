"""Model configs, modules, losses and the torch normalisation twin, each against an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.func import functional_call, vmap

from mamlctl.errors import ConfigError
from mamlctl.maml.models import (
    ConvConfig,
    MLPConfig,
    build_model,
    config_from_dict,
    config_to_dict,
    gaussian_nll_loss,
    mae_loss,
    mse_loss,
    output_width,
    torch_support_stats,
)
from mamlctl.timeseries.scaling import support_stats

CONFIGS = [
    MLPConfig(input_size=1, output_size=1),
    MLPConfig(input_size=8, hidden=(16, 8, 4), output_size=3, activation="tanh", head="gaussian"),
    ConvConfig(window=12, horizon=2, channels=4, layers=3),
    ConvConfig(window=6, horizon=1, channels=3, kernel_size=2, skip=False, head="gaussian"),
    MLPConfig(input_size=10, hidden=(8,), output_size=7, season_skip=3),
    ConvConfig(window=12, horizon=5, channels=4, head="gaussian", season_skip=12),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.head}")
def test_config_round_trips_through_json(config: MLPConfig | ConvConfig) -> None:
    import json

    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "mlp", "input_size": 1, "output_size": 1, "dropout": 0.1},
        {"kind": "rnn", "input_size": 1, "output_size": 1},
        {"kind": "conv", "window": 0, "horizon": 1},
        {"kind": "mlp", "input_size": 1, "output_size": 1, "hidden": [4, 0]},
        {"kind": "mlp", "input_size": 1, "output_size": 1, "head": "laplace"},
        {"kind": "mlp", "input_size": 4, "output_size": 1, "season_skip": 5},
        {"kind": "conv", "window": 4, "horizon": 1, "season_skip": -1},
    ],
)
def test_bad_configs_raise_config_error(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        config_from_dict(data)


def test_mlp_is_the_papers_network() -> None:
    model = build_model(MLPConfig(input_size=1, output_size=1))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    x = torch.randn(5, 1)
    p = dict(model.named_parameters())
    h = torch.relu(x @ p["layers.0.weight"].T + p["layers.0.bias"])
    h = torch.relu(h @ p["layers.1.weight"].T + p["layers.1.bias"])
    ref = h @ p["layers.2.weight"].T + p["layers.2.bias"]
    torch.testing.assert_close(model(x), ref)


def test_conv_forecaster_is_causal_and_gaussian_head_doubles_output() -> None:
    torch.manual_seed(0)
    config = ConvConfig(window=10, horizon=3, channels=4, layers=2, skip=False, head="gaussian")
    model = build_model(config)
    x = torch.randn(4, 10)
    assert model(x).shape == (4, output_width(config)) == (4, 6)
    # Causality of the conv stack: features at time t use only x[..., :t+1].
    feats = x.unsqueeze(1)
    conv = model.convs[0]  # type: ignore[index]
    out_a = F.conv1d(F.pad(feats, (2, 0)), conv.weight, conv.bias)
    x2 = x.clone()
    x2[:, 7:] += 100.0
    out_b = F.conv1d(F.pad(x2.unsqueeze(1), (2, 0)), conv.weight, conv.bias)
    torch.testing.assert_close(out_a[..., :7], out_b[..., :7])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.head}")
def test_forward_batched_equals_per_task_functional_call(config: MLPConfig | ConvConfig) -> None:
    torch.manual_seed(1)
    model = build_model(config)
    n_tasks = 3
    params = {
        k: v.detach() + 0.1 * torch.randn(n_tasks, *v.shape) for k, v in model.named_parameters()
    }
    x = torch.randn(n_tasks, 5, config.window)
    ref = torch.stack(
        [functional_call(model, {k: v[i] for k, v in params.items()}, (x[i],)) for i in range(3)]
    )
    torch.testing.assert_close(model.forward_batched(params, x), ref)  # type: ignore[operator]
    torch.testing.assert_close(vmap(lambda p, xx: functional_call(model, p, (xx,)))(params, x), ref)


def test_config_without_season_skip_keeps_its_old_json() -> None:
    old = {"kind": "mlp", "input_size": 3, "hidden": [4], "output_size": 2}
    config = config_from_dict(old)
    assert config.season_skip == 0
    assert "season_skip" not in config_to_dict(config)
    assert config_to_dict(MLPConfig(input_size=3, output_size=2, season_skip=1))["season_skip"] == 1


def _seasonal_naive(x: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """Oracle: base[h] = x[L - m + (h mod m)], written as a loop."""
    length = x.shape[-1]
    return np.stack([x[..., length - m + (h % m)] for h in range(horizon)], axis=-1)


@pytest.mark.parametrize(("m", "horizon"), [(1, 4), (3, 7), (24, 48), (10, 10)])
@pytest.mark.parametrize("head", ["mean", "gaussian"])
def test_mlp_with_zero_last_layer_forecasts_exactly_seasonal_naive(
    m: int, horizon: int, head: str
) -> None:
    window = max(m, 10)
    config = MLPConfig(
        input_size=window, hidden=(8,), output_size=horizon, head=head, season_skip=m
    )
    model = build_model(config)
    with torch.no_grad():
        model.layers[-1].weight.zero_()  # type: ignore[index]
        model.layers[-1].bias.zero_()  # type: ignore[index]
    x = torch.randn(5, window)
    out = model(x).detach()
    np.testing.assert_array_equal(out[:, :horizon].numpy(), _seasonal_naive(x.numpy(), horizon, m))
    if head == "gaussian":  # the log-variance columns get no skip
        assert torch.count_nonzero(out[:, horizon:]) == 0
    params = {k: v.detach().unsqueeze(0).expand(2, *v.shape) for k, v in model.named_parameters()}
    batched = model.forward_batched(params, x.expand(2, 5, window))  # type: ignore[operator]
    torch.testing.assert_close(batched.detach(), out.expand(2, 5, -1), rtol=0, atol=0)


def test_conv_season_skip_adds_the_base_to_the_plain_output() -> None:
    plain = ConvConfig(window=12, horizon=5, channels=4)
    skip = ConvConfig(window=12, horizon=5, channels=4, season_skip=4)
    torch.manual_seed(0)
    a = build_model(plain)
    b = build_model(skip)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 12)
    expected = a(x) + torch.from_numpy(_seasonal_naive(x.numpy(), 5, 4))
    torch.testing.assert_close(b(x).detach(), expected.detach())


def test_head_names_are_the_last_linear_layers() -> None:
    from mamlctl.maml.models import adapt_names_for, head_names

    mlp = MLPConfig(input_size=4, hidden=(8, 8), output_size=2)
    assert head_names(mlp) == ("layers.2.weight", "layers.2.bias")
    assert set(head_names(mlp)) < set(dict(build_model(mlp).named_parameters()))
    conv = ConvConfig(window=6, horizon=2)
    assert head_names(conv) == ("readout.weight", "readout.bias", "skip.weight", "skip.bias")
    assert head_names(ConvConfig(window=6, horizon=2, skip=False)) == (
        "readout.weight",
        "readout.bias",
    )
    assert adapt_names_for(mlp, "all") is None
    assert adapt_names_for(mlp, "head") == head_names(mlp)
    with pytest.raises(ConfigError, match="adapt scope"):
        adapt_names_for(mlp, "body")


def test_mae_loss_matches_torch_and_keeps_leading_axes() -> None:
    pred, target = torch.randn(4, 7, 3), torch.randn(4, 7, 3)
    per_task = mae_loss(pred, target)
    assert per_task.shape == (4,)
    for i in range(4):
        torch.testing.assert_close(per_task[i], F.l1_loss(pred[i], target[i]))


def test_mse_loss_matches_torch_and_keeps_leading_axes() -> None:
    pred, target = torch.randn(4, 7, 3), torch.randn(4, 7, 3)
    per_task = mse_loss(pred, target)
    assert per_task.shape == (4,)
    for i in range(4):
        torch.testing.assert_close(per_task[i], F.mse_loss(pred[i], target[i]))


def test_gaussian_nll_matches_torch_full_nll() -> None:
    pred, target = torch.randn(4, 7, 6), torch.randn(4, 7, 3)
    mean, logvar = pred[..., :3], pred[..., 3:]
    ref = torch.stack(
        [
            F.gaussian_nll_loss(mean[i], target[i], logvar[i].exp(), full=True, eps=0.0)
            for i in range(4)
        ]
    )
    torch.testing.assert_close(gaussian_nll_loss(pred, target), ref)
    # At the optimum variance the NLL of a unit residual is 0.5 * (1 + log 2 pi).
    ones = torch.cat([torch.zeros(1, 1, 1), torch.zeros(1, 1, 1)], dim=-1)
    assert gaussian_nll_loss(ones, torch.ones(1, 1, 1)).item() == pytest.approx(
        0.5 * (1 + math.log(2 * math.pi))
    )


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(1, 20)),
        elements=st.floats(-1e4, 1e4, allow_nan=False),
    )
)
def test_torch_support_stats_equals_numpy_support_stats(values: np.ndarray) -> None:
    loc, scale = support_stats(values)
    t_loc, t_scale = torch_support_stats(torch.from_numpy(values))
    np.testing.assert_allclose(t_loc.numpy(), loc, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(t_scale.numpy(), scale, rtol=1e-9, atol=1e-9)
    assert np.all(scale > 0)


def test_torch_support_stats_floors_a_flat_window() -> None:
    loc, scale = torch_support_stats(torch.full((1, 5), 200.0, dtype=torch.float64))
    assert loc.item() == 200.0
    assert scale.item() == pytest.approx(0.2)
    with pytest.raises(ValueError):
        torch_support_stats(torch.zeros(2, 0))
