"""Atomic writes (gearshift.atomic): whole or nothing, ordinary permissions."""

from __future__ import annotations

import json
import os

import pytest

from gearshift.atomic import atomic_directory, write_json_atomic, write_text_atomic
from gearshift.runtime import BlockShape, ModelConfig, Transformer
from gearshift.runtime.io import save_model


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_directory(tmp_path, umask_022):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    assert final.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("midway")
    assert (final / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_directory(final) as tmp:
        (tmp / "b").write_text("3")
    assert [p.name for p in final.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_files_keep_the_old_one_on_failure(tmp_path, umask_022):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600

    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: nothing written
    with pytest.raises(TypeError):
        write_text_atomic(path, None)  # fails inside the write, after the temp file exists
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_saved_model_folders_are_ordinary_folders(tmp_path, umask_022):
    cfg = ModelConfig(
        family="bert",
        vocab_size=30,
        hidden_size=8,
        num_layers=1,
        head_dim=4,
        blocks=[BlockShape(2, 16)],
        layer_to_block=[0],
        max_positions=16,
        type_vocab_size=2,
    )
    folder = save_model(Transformer(cfg), tmp_path / "m")
    assert folder.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())
