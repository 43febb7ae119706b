"""Model files: atomic writes, content-addressed names, verified opens (no torch needed)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError, IntegrityError, NotFoundError
from mamlctl.registry import model_files as mf


def test_write_then_open_verified_returns_identical_bytes(tmp_path: Path) -> None:
    data = os.urandom(5000)
    stored = mf.write_model_file(tmp_path, family="hourly", series_id="H1", data=data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size == 5000
    assert stored.relpath.endswith(f"--{stored.sha256}.onnx")
    assert (tmp_path / stored.relpath).read_bytes() == data
    assert mf.open_verified(tmp_path, stored.relpath, sha256=stored.sha256) == data
    # An absolute path inside the folder is accepted too.
    absolute = str(tmp_path / stored.relpath)
    assert mf.open_verified(tmp_path, absolute, sha256=stored.sha256) == data


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    stored = mf.write_model_file(tmp_path, family="f", series_id="s", data=b"abc")
    (tmp_path / stored.relpath).write_bytes(b"abd")  # tampered / bit rot
    with pytest.raises(IntegrityError, match="refusing"):
        mf.open_verified(tmp_path, stored.relpath, sha256=stored.sha256)
    with pytest.raises(IntegrityError):
        mf.open_verified(tmp_path, stored.relpath, sha256="0" * 64)


@pytest.mark.parametrize(
    "path", ["../outside.onnx", "f/../../outside.onnx", "/etc/passwd", "", ".", "a\x00b"]
)
def test_path_traversal_is_refused(tmp_path: Path, path: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "outside.onnx").write_bytes(b"x")
    with pytest.raises(InputError):
        mf.open_verified(models, path, sha256=hashlib.sha256(b"x").hexdigest())


def test_symlink_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"x")
    (models / "link.onnx").symlink_to(secret)
    with pytest.raises(InputError, match="outside the models folder"):
        mf.open_verified(models, "link.onnx", sha256=hashlib.sha256(b"x").hexdigest())


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        mf.open_verified(tmp_path, "f/none.onnx", sha256="0" * 64)


def test_failure_mid_write_leaves_no_final_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(mf.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        mf.write_model_file(tmp_path, family="f", series_id="s", data=b"payload")
    assert list(mf.iter_model_files(tmp_path)) == []
    # Neither the final name nor a temporary survives.
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_failure_in_one_of_many_keeps_only_complete_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            real_write(fd, bytes(data)[:3])  # a partial write, then the disk fails
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(mf.os, "write", flaky_write)
    items = [("f", f"s{i}", f"content-{i}".encode() * 10) for i in range(5)]
    with pytest.raises(OSError, match="No space"):
        mf.write_many(tmp_path, items, workers=1)
    names = list(mf.iter_model_files(tmp_path))
    failed = mf.model_relpath(
        family="f", series_id="s2", sha256=hashlib.sha256(items[2][2]).hexdigest()
    )
    assert failed not in names
    assert len(names) == 4  # every other file, complete
    for rel in names:
        blob = (tmp_path / rel).read_bytes()
        assert rel.endswith(f"--{hashlib.sha256(blob).hexdigest()}.onnx")
    assert mf.remove_temporaries(tmp_path, family="f") == []


def test_rewriting_identical_content_is_idempotent(tmp_path: Path) -> None:
    first = mf.write_many(tmp_path, [("f", "s", b"same")])
    second = mf.write_many(tmp_path, [("f", "s", b"same")])
    assert first == second
    assert list(mf.iter_model_files(tmp_path)) == [first[0].relpath]


def test_new_content_never_overwrites_the_current_file(tmp_path: Path) -> None:
    old = mf.write_model_file(tmp_path, family="f", series_id="s", data=b"v1")
    new = mf.write_model_file(tmp_path, family="f", series_id="s", data=b"v2")
    assert old.relpath != new.relpath
    assert mf.open_verified(tmp_path, old.relpath, sha256=old.sha256) == b"v1"
    assert mf.remove_unreferenced(tmp_path, [new.relpath]) == [old.relpath]
    assert list(mf.iter_model_files(tmp_path)) == [new.relpath]


def test_pool_writes_many_files_in_input_order(tmp_path: Path) -> None:
    items = [("fam", f"series/{i}", os.urandom(100 + i)) for i in range(50)]
    stored = mf.write_many(tmp_path, items, workers=4)
    for (_, _, data), rec in zip(items, stored, strict=True):
        assert rec.sha256 == hashlib.sha256(data).hexdigest()
        assert (tmp_path / rec.relpath).read_bytes() == data


#: A pid above Linux's largest pid_max (2**22): never a live process.
DEAD_PID = 2**22 + 1


def test_leftover_temporaries_are_removed_and_never_listed(tmp_path: Path) -> None:
    folder = tmp_path / mf.slug("f")
    folder.mkdir()
    (folder / f".x.onnx.tmp-{DEAD_PID}-abcd").write_bytes(b"partial")
    assert list(mf.iter_model_files(tmp_path)) == []
    assert mf.remove_temporaries(tmp_path, family="f") == [
        f"{mf.slug('f')}/.x.onnx.tmp-{DEAD_PID}-abcd"
    ]


def test_temporaries_clean_up_is_per_family_and_locked(tmp_path: Path) -> None:
    # Oracle: another family's in-flight temporary (its adapt writing right now) and a live
    # writer's temporary of the same family survive; only the dead writer's one goes. Before,
    # the clean-up removed every family's temporaries without any lock.
    from mamlctl.errors import StoreError
    from mamlctl.registry.locks import file_lock

    a, b = tmp_path / mf.slug("a"), tmp_path / mf.slug("b")
    a.mkdir()
    b.mkdir()
    dead_a = a / f".x.onnx.tmp-{DEAD_PID}-0001"
    live_a = a / f".y.onnx.tmp-{os.getpid()}-0002"
    other_b = b / f".z.onnx.tmp-{DEAD_PID}-0003"
    for f in (dead_a, live_a, other_b):
        f.write_bytes(b"partial")
    assert mf.remove_temporaries(tmp_path, family="a") == [f"{a.name}/{dead_a.name}"]
    assert live_a.exists() and other_b.exists()
    # while family b's lock is held (b's adapt cleaning up), b waits and a goes ahead
    with file_lock(mf.family_lock_path(tmp_path, "b")):
        with pytest.raises(StoreError, match="clean-up of family b"):
            mf.remove_temporaries(tmp_path, family="b", timeout_s=0.2)
        assert mf.remove_temporaries(tmp_path, family="a") == []
    assert other_b.exists()
    assert mf.remove_temporaries(tmp_path, family="b") == [f"{b.name}/{other_b.name}"]
    assert list(mf.iter_model_files(tmp_path)) == []


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=120), st.text(min_size=1, max_size=120))
def test_slug_is_safe_and_injective(a: str, b: str) -> None:
    sa, sb = mf.slug(a), mf.slug(b)
    for s in (sa, sb):
        assert s and not s.startswith(".") and "/" not in s and len(s) <= 90
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in s)
    if a != b:
        assert sa != sb


def test_module_imports_no_torch() -> None:
    code = (
        "import sys, mamlctl.registry.model_files; "
        "bad = [m for m in ('torch', 'mlflow', 'onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
