"""Initializer files: safetensors + JSON round trip gives identical forecasts; bad files fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mamlctl.errors import ConfigError, NotFoundError
from mamlctl.maml.initializer import CONFIG_FILE, WEIGHTS_FILE, load_initializer, save_initializer
from mamlctl.maml.models import ConvConfig, build_model


def _save(tmp_path: Path, with_lrs: bool = True) -> tuple[torch.nn.Module, ConvConfig]:
    torch.manual_seed(0)
    config = ConvConfig(window=12, horizon=2, channels=4, head="gaussian")
    model = build_model(config)
    lrs = {k: torch.rand_like(v) for k, v in model.named_parameters()} if with_lrs else None
    save_initializer(
        tmp_path,
        model_config=config,
        params=dict(model.named_parameters()),
        task_spec={"kind": "window", "window": 12, "horizon": 2, "support": 8, "query": 4},
        train_config={"method": "metasgd"},
        inner_lrs=lrs,
        metrics={"query_loss": 0.5},
    )
    return model, config


def test_round_trip_gives_identical_forecasts_and_metadata(tmp_path: Path) -> None:
    model, config = _save(tmp_path)
    init = load_initializer(tmp_path)
    assert init.model_config == config
    assert init.task_spec["support"] == 8 and init.train_config == {"method": "metasgd"}
    assert init.metrics == {"query_loss": 0.5}
    assert init.inner_lrs is not None and set(init.inner_lrs) == set(init.params)
    x = torch.randn(5, 12)
    assert torch.equal(init.model()(x), model(x))
    # No pickle anywhere: the weights file is safetensors (8-byte header length + JSON).
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"] == {"format": "1"}


def test_without_meta_sgd_rates_inner_lr_is_the_default(tmp_path: Path) -> None:
    _save(tmp_path, with_lrs=False)
    init = load_initializer(tmp_path)
    assert init.inner_lrs is None and init.inner_lr(0.01) == 0.01


def test_missing_or_bad_files_raise_actionable_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_initializer(tmp_path / "nope")
    _save(tmp_path)
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    doc["model"]["dropout"] = 0.5
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="dropout"):
        load_initializer(tmp_path)
    doc["model"].pop("dropout")
    doc["model"]["channels"] = 8  # weights no longer fit the config
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ConfigError):
        load_initializer(tmp_path)


def test_save_refuses_params_of_another_model(tmp_path: Path) -> None:
    config = ConvConfig(window=12, horizon=2)
    with pytest.raises(ConfigError, match="do not match"):
        save_initializer(
            tmp_path,
            model_config=config,
            params={"w": torch.zeros(1)},
            task_spec={},
            train_config={},
        )


def test_a_bit_flip_in_the_weights_is_caught_at_load(tmp_path: Path) -> None:
    # Oracle: the sha256 written at save. The flipped byte sits in the tensor data (after the
    # safetensors header), so the file still parses: before the digest, load returned other
    # weights silently.
    from mamlctl.errors import IntegrityError

    _save(tmp_path)
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert len(doc["weights_sha256"]) == 64
    raw = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    raw[8 + header_len + 5] ^= 0x01
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"weights.safetensors has sha256 .* but") as err:
        load_initializer(tmp_path)
    assert "\n" not in str(err.value)


def test_initializer_without_a_digest_still_loads(tmp_path: Path) -> None:
    # Initializers saved before the digest existed carry no weights_sha256.
    model, _ = _save(tmp_path)
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    doc.pop("weights_sha256")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc))
    x = torch.randn(3, 12)
    assert torch.equal(load_initializer(tmp_path).model()(x), model(x))
