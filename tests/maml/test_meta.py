"""Short meta-trainings on sine tasks: MAML learns to adapt, baselines do worse."""

from __future__ import annotations

import pytest
import torch

from mamlctl.errors import TrainingError
from mamlctl.maml.engine import adaptation_curve
from mamlctl.maml.meta import MetaTrainConfig, MetaTrainProgress, MetaTrainResult, meta_train
from mamlctl.maml.models import ConvConfig, MLPConfig, build_model, mse_loss
from mamlctl.maml.tasks import SineTaskSampler, SineTaskSpec, sine_test_tasks

MLP = MLPConfig(input_size=1, output_size=1)
ITERS = 600


def _train(method: str, iterations: int = ITERS, seed: int = 0) -> MetaTrainResult:
    sampler = SineTaskSampler(SineTaskSpec(support=10, query=10), seed=seed + 1)
    config = MetaTrainConfig(method=method, iterations=iterations, log_every=100, seed=seed)  # type: ignore[arg-type]
    return meta_train(MLP, sampler, config)


@pytest.fixture(scope="module")
def trained() -> dict[str, MetaTrainResult]:
    torch.set_num_threads(1)
    return {m: _train(m) for m in ("maml", "fomaml", "metasgd", "pretrained")}


@pytest.fixture(scope="module")
def test_k5() -> object:
    return sine_test_tasks(200, k=5, seed=123)


def _curve(
    params: dict[str, torch.Tensor], lr: object, test: object, steps: int = 10
) -> torch.Tensor:
    t = test
    return adaptation_curve(
        build_model(MLP),
        params,
        t.support_x,
        t.support_y,
        t.query_x,
        t.query_y,  # type: ignore[attr-defined]
        steps=steps,
        inner_lr=lr,
        loss_fn=mse_loss,  # type: ignore[arg-type]
    ).mean(dim=1)


@pytest.mark.slow  # shares a ~10 s module fixture: four 600-iteration trainings
def test_after_adaptation_beats_before_beats_random_init(
    trained: dict[str, MetaTrainResult], test_k5: object
) -> None:
    maml = _curve(trained["maml"].params, 0.01, test_k5)
    torch.manual_seed(0)
    random_init = {k: v.detach() for k, v in build_model(MLP).named_parameters()}
    rand = _curve(random_init, 0.01, test_k5)
    assert maml[10] < maml[1] < maml[0] < rand[0]
    assert maml[10] < rand[10]


@pytest.mark.slow  # shares a ~10 s module fixture: four 600-iteration trainings
def test_maml_beats_pretrained_and_first_order_is_close(
    trained: dict[str, MetaTrainResult], test_k5: object
) -> None:
    maml = _curve(trained["maml"].params, 0.01, test_k5)
    pre = _curve(trained["pretrained"].params, 0.01, test_k5)
    fo = _curve(trained["fomaml"].params, 0.01, test_k5)
    assert maml[10] < 0.8 * pre[10]
    assert maml[1] < pre[1]
    assert fo[10] < pre[10]


@pytest.mark.slow  # shares a ~10 s module fixture: four 600-iteration trainings
def test_meta_sgd_learns_its_rates(trained: dict[str, MetaTrainResult], test_k5: object) -> None:
    result = trained["metasgd"]
    assert result.inner_lrs is not None
    moved = max((lr - 0.01).abs().max().item() for lr in result.inner_lrs.values())
    assert moved > 1e-3
    learned = _curve(result.params, result.inner_lrs, test_k5, steps=1)
    fixed = _curve(result.params, 0.01, test_k5, steps=1)
    assert learned[1] < 0.8 * fixed[1]


@pytest.mark.slow  # shares a ~10 s module fixture: four 600-iteration trainings
def test_training_loss_decreases_and_results_carry_config(
    trained: dict[str, MetaTrainResult],
) -> None:
    for method, result in trained.items():
        assert result.iterations == ITERS
        assert len(result.losses) == ITERS // 100
        assert result.losses[-1] < result.losses[0], method
        assert result.config.method == method
        assert set(result.params) == set(dict(build_model(MLP).named_parameters()))


def test_same_seed_same_initializer_and_callback_can_stop() -> None:
    a, b = _train("maml", iterations=30), _train("maml", iterations=30)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    seen: list[MetaTrainProgress] = []

    def stop_after_two(p: MetaTrainProgress) -> bool:
        seen.append(p)
        return len(seen) < 2

    sampler = SineTaskSampler(SineTaskSpec(), seed=0)
    result = meta_train(
        MLP, sampler, MetaTrainConfig(iterations=100, log_every=10), callback=stop_after_two
    )
    assert [p.iteration for p in seen] == [10, 20]
    assert result.iterations == 20
    assert seen[1].elapsed >= seen[0].elapsed


def test_divergence_raises_training_error() -> None:
    sampler = SineTaskSampler(SineTaskSpec(), seed=0)
    with pytest.raises(TrainingError):
        meta_train(
            MLP, sampler, MetaTrainConfig(iterations=50, log_every=10, inner_lr=1e4, meta_lr=1.0)
        )


def test_conv_forecaster_meta_trains_on_window_tasks() -> None:
    import numpy as np

    from mamlctl.maml.tasks import WindowTaskSampler
    from mamlctl.timeseries.windows import WindowTaskSpec

    rng = np.random.default_rng(0)
    t = np.arange(400)
    series = [
        10 + a * np.sin(2 * np.pi * t / 24 + p) + 0.05 * rng.standard_normal(400)
        for a, p in zip(rng.uniform(1, 5, 20), rng.uniform(0, 6, 20), strict=True)
    ]
    spec = WindowTaskSpec(window=24, horizon=1, support=16, query=8)
    config = ConvConfig(window=24, horizon=1, channels=4, layers=2, head="gaussian")
    result = meta_train(
        config,
        WindowTaskSampler(series, spec, seed=0),
        MetaTrainConfig(iterations=150, meta_batch_size=8, log_every=50, inner_lr=0.05),
    )
    assert result.losses[-1] < result.losses[0]
