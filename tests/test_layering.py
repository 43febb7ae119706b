"""The layering of ARCHITECTURE.md, checked on the source: every ``import`` statement of a
package (module level, inside functions and under TYPE_CHECKING alike) is parsed with ``ast``
and must stay within what the package may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: folder -> prefixes its modules must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mamlctl": (  # the file contract (mamlctl.contract) included: torch- and onnx-free
        "torch",
        "onnx",
        "onnxruntime",
        "mlflow",
        "sqlalchemy",
        "mamlctl.timeseries",
        "mamlctl.maml",
        "mamlctl.registry",
        "mamlctl.serving",
        "mamlctl.stages",
        "mamlctl.evaluation",
        "mamlctl.cli",
    ),
    "timeseries": (
        "mamlctl.maml",
        "mamlctl.registry",
        "mamlctl.serving",
        "mamlctl.stages",
        "mamlctl.cli",
        "torch",
        "mlflow",
    ),
    "maml": (
        "mamlctl.registry",
        "mamlctl.serving",
        "mamlctl.stages",
        "mamlctl.evaluation",
        "mamlctl.cli",
        "mlflow",
        "sqlalchemy",
    ),
    "registry": (
        "torch",
        "mamlctl.maml",
        "mamlctl.serving",
        "mamlctl.stages",
        "mamlctl.evaluation",
        "mamlctl.cli",
    ),
    "serving": ("torch", "mlflow", "mamlctl.maml", "mamlctl.stages", "mamlctl.cli"),
    "stages": ("mamlctl.cli",),
    # The protocols call the stages (mamlctl.stages, its Python API included) and train
    # nothing themselves: no torch, none of the models, engine, meta-training or adaptation.
    "evaluation": ("torch", "onnx", "mamlctl.maml", "mamlctl.cli"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_package_imports_stay_in_their_layer(folder: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in imports_of(path)
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[folder])
    ]
    assert bad == []


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from mamlctl.registry.db import x\n    import torch\n")
    assert imports_of(src) == [(2, "mamlctl.registry.db"), (3, "torch")]


def test_the_evaluation_rule_catches_a_training_loop_of_its_own(tmp_path: Path) -> None:
    src = tmp_path / "recipe.py"
    src.write_text(
        "import torch\nfrom torch.func import grad\n"
        "def f():\n    from mamlctl.maml.family_training import train_family\n"
        "    from mamlctl.maml.adaptation import AdaptConfig\n"
        "    from mamlctl.stages.api import train\n"
    )
    forbidden = FORBIDDEN["evaluation"]
    caught = [
        name
        for _, name in imports_of(src)
        if any(name == p or name.startswith(p + ".") for p in forbidden)
    ]
    assert caught == [
        "torch",
        "torch.func",
        "mamlctl.maml.family_training",
        "mamlctl.maml.adaptation",
    ]


def _private_torch_uses(path: Path) -> list[str]:
    """``torch._x`` / ``torch.a._x`` attribute uses and ``from torch._x import`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "torch":
                out.append(f"{node.lineno}: torch.{'.'.join(reversed(chain))}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "torch" and any(p.startswith("_") for p in parts[1:]):
                out.append(f"{node.lineno}: from {node.module}")
    return out


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_private_torch_api(folder: str) -> None:
    """Only torch's public API (issue 16: no ``torch._fused_adam_`` where a public API does the
    same): a private op may change or vanish in any release."""
    bad = [
        f"{path.relative_to(ROOT)}:{use}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for use in _private_torch_uses(path)
    ]
    assert bad == []
