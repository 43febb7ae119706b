"""mamlctl: a model registry and MLOps platform for MAML-meta-learned initializers.

Importing the package stays instant (``mamlctl --help`` is budgeted at 0.5 s): nothing heavy
(pandas, torch, mlflow, onnxruntime) is imported here. The Python API is loaded on first use
(PEP 562 module ``__getattr__``) from :mod:`mamlctl.stages.api`:

* :func:`ingest_frame` -- store a Nixtla (``unique_id, ds, y``) or Prophet (``ds, y``) frame and
  put its series into families;
* :func:`train` -- meta-train and register a family's initializer;
* :func:`adapt` -- adapt the family's series and export one ONNX file each;
* :func:`forecast` -- a Nixtla frame ``unique_id, ds, yhat`` (+ ``yhat-lo-<l>``/``yhat-hi-<l>``);
* :func:`detect` -- ``unique_id, ds, y, yhat, anomaly_score, is_anomaly``.

Each takes ``home=`` (a folder) or ``settings=`` (:class:`mamlctl.settings.Settings`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public names served lazily, and the module (a string: loaded on first access) holding them.
_LAZY = {
    name: "mamlctl.stages.api"
    for name in ("IngestResult", "adapt", "detect", "forecast", "ingest_frame", "train")
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mamlctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
