"""Save and load an initializer: safetensors weights + one JSON document. Never torch pickle.

Layout of an initializer folder::

    weights.safetensors   θ under the module's parameter names; Meta-SGD rates as
                          ``inner_lr.<name>``
    initializer.json      {"format": 1, "model": <model config>, "task": <task spec>,
                           "train": <train config>, "metrics": {...},
                           "weights_sha256": <hex digest of weights.safetensors>}

Load reads the weights' bytes once, checks them against ``weights_sha256`` and parses those
same bytes, so a flipped bit (which safetensors would parse happily) is an
:class:`~mamlctl.errors.IntegrityError` naming the file. Initializers saved before the digest
existed (no ``weights_sha256``) load unchecked.

The same JSON goes into MLflow params and ONNX metadata downstream.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mamlctl.errors import ConfigError, IntegrityError, NotFoundError
from mamlctl.maml.models import ConvConfig, MLPConfig, build_model, config_from_dict, config_to_dict

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "initializer.json"
FORMAT_VERSION = 1
_LR_PREFIX = "inner_lr."


@dataclass(frozen=True, slots=True)
class Initializer:
    """A meta-trained starting point: θ (+ Meta-SGD rates) and how it was made."""

    model_config: MLPConfig | ConvConfig
    params: dict[str, Tensor]
    inner_lrs: dict[str, Tensor] | None = None
    task_spec: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def model(self) -> nn.Module:
        """A module carrying θ."""
        module: nn.Module = build_model(self.model_config)
        module.load_state_dict(self.params)
        return module

    def inner_lr(self, default: float) -> float | dict[str, Tensor]:
        """The Meta-SGD rates when learned, else ``default``."""
        return self.inner_lrs if self.inner_lrs is not None else default


def save_initializer(
    path_dir: str | Path,
    *,
    model_config: MLPConfig | ConvConfig,
    params: Mapping[str, Tensor],
    task_spec: Mapping[str, Any],
    train_config: Mapping[str, Any],
    inner_lrs: Mapping[str, Tensor] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write the initializer folder (created if missing); returns it."""
    from safetensors.torch import save_file

    expected = set(build_model(model_config).state_dict())
    if set(params) != expected:
        raise ConfigError(
            f"parameters {sorted(params)} do not match the model config's {sorted(expected)}"
        )
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in params.items()}
    if inner_lrs is not None:
        tensors.update(
            {
                _LR_PREFIX + k: v.detach().to(torch.float32).contiguous()
                for k, v in inner_lrs.items()
            }
        )
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": str(FORMAT_VERSION)})
    digest = hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()
    doc = {
        "format": FORMAT_VERSION,
        "model": config_to_dict(model_config),
        "task": dict(task_spec),
        "train": dict(train_config),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "meta_sgd": inner_lrs is not None,
        "weights_sha256": digest,
    }
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


def load_initializer(path_dir: str | Path) -> Initializer:
    """Read a folder written by :func:`save_initializer`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    root = Path(path_dir)
    weights, conf = root / WEIGHTS_FILE, root / CONFIG_FILE
    for f in (weights, conf):
        if not f.is_file():
            raise NotFoundError(f"initializer file {f} does not exist")
    try:
        doc = json.loads(conf.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{conf} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if doc.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{conf}: unsupported initializer format {doc.get('format')!r}")
    model_config = config_from_dict(doc["model"])
    data = weights.read_bytes()
    recorded = doc.get("weights_sha256")
    if recorded is not None:
        actual = hashlib.sha256(data).hexdigest()
        if not isinstance(recorded, str) or not hmac.compare_digest(actual, recorded.lower()):
            raise IntegrityError(
                f"initializer file {weights} has sha256 {actual[:16]}… but {CONFIG_FILE} "
                f"recorded {str(recorded)[:16]}…; the artifact is corrupt, re-train or restore it"
            )
    try:
        tensors = load(data)
    except SafetensorError as err:
        raise ConfigError(f"{weights} is not a safetensors file: {err}") from None
    params = {k: v for k, v in tensors.items() if not k.startswith(_LR_PREFIX)}
    lrs = {k[len(_LR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_LR_PREFIX)}
    reference = build_model(model_config).state_dict()
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    if shapes != expected:
        raise ConfigError(
            f"{weights}: tensors {shapes} do not match the model config's {expected}; "
            "the weights and initializer.json come from different models"
        )
    order = list(reference)
    return Initializer(
        model_config=model_config,
        params={k: params[k] for k in order},
        inner_lrs={k: lrs[k] for k in order} if lrs else None,
        task_spec=dict(doc.get("task", {})),
        train_config=dict(doc.get("train", {})),
        metrics=dict(doc.get("metrics", {})),
    )
