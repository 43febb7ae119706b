"""mamlctl: a model registry and MLOps platform for MAML-meta-learned initializers.

The import package is deliberately empty: importing it must stay instant (``mamlctl --help``
is budgeted at 0.5 s), so settings, domain types and errors live in their own modules and
nothing heavy (torch, mlflow, onnxruntime) is imported here.
"""

from __future__ import annotations

__version__ = "0.1.0"
