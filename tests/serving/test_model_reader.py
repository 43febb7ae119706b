"""VerifiedReader against its oracle, ``registry.model_files.open_verified``: for every path
class (good, nested, tampered, missing, a folder, ``..`` traversal, absolute inside and outside,
symlinked file or folder pointing in or out, empty, NUL) the reader returns the same bytes or
raises the same error type with the same message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mamlctl.errors import MamlctlError
from mamlctl.registry.model_files import open_verified
from mamlctl.serving.model_reader import VerifiedReader

DATA = b"model bytes"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "fam").mkdir(parents=True)
    (root / "fam" / "a.onnx").write_bytes(DATA)
    (root / "top.onnx").write_bytes(DATA)
    (root / "fam" / "bad.onnx").write_bytes(DATA + b"\0")
    (tmp_path / "secret.onnx").write_bytes(DATA)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "a.onnx").write_bytes(DATA)
    (root / "fam" / "in_link.onnx").symlink_to(root / "fam" / "a.onnx")
    (root / "fam" / "out_link.onnx").symlink_to(tmp_path / "secret.onnx")
    (root / "linked_in").symlink_to(root / "fam")
    (root / "linked_out").symlink_to(tmp_path / "outdir")
    return root


PATHS = [
    "fam/a.onnx",
    "top.onnx",
    "./fam/a.onnx",
    "fam/bad.onnx",
    "fam/none.onnx",
    "fam",
    "fam/..",
    "../secret.onnx",
    "fam/../../secret.onnx",
    "fam/in_link.onnx",
    "fam/out_link.onnx",
    "linked_in/a.onnx",
    "linked_out/a.onnx",
    "",
    ".",
    "a\x00b",
    "ABS_IN",
    "ABS_OUT",
]


def _outcome(fn, path: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    try:
        return "data", fn(path).hex()
    except MamlctlError as err:
        return type(err).__name__, str(err)


@pytest.mark.parametrize("path", PATHS)
def test_reader_equals_open_verified(models: Path, path: str) -> None:
    if path == "ABS_IN":
        path = str(models / "fam" / "a.onnx")
    elif path == "ABS_OUT":
        path = str(models.parent / "secret.onnx")
    reader = VerifiedReader(models)
    got = _outcome(lambda p: reader.read(p, SHA), path)
    want = _outcome(lambda p: open_verified(models, p, sha256=SHA), path)
    assert got == want
    if path in ("fam/a.onnx", "linked_in/a.onnx", "fam/in_link.onnx"):
        assert got == ("data", DATA.hex())
    if path in ("../secret.onnx", "fam/out_link.onnx", "linked_out/a.onnx", "fam/bad.onnx"):
        assert got[0] != "data"


def test_the_fast_path_serves_plain_files_and_hands_the_rest_over(models: Path) -> None:
    reader = VerifiedReader(models)
    for path in ("fam/a.onnx", "top.onnx", "linked_in/a.onnx"):
        assert reader._fast(path, SHA) == DATA  # no open_verified call needed
    for path in ("fam/bad.onnx", "fam/in_link.onnx", "linked_out/a.onnx", "../secret.onnx", "fam"):
        assert reader._fast(path, SHA) is None  # open_verified decides (and words the error)
