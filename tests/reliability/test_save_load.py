"""Saved models: saving is atomic and follows the umask; configs or weights changed after saving are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _shared import resigned

import sthist


def test_save_is_atomic_and_keeps_the_old_model_on_failure(model, tmp_path, monkeypatch):
    folder = model.save(tmp_path / "m")
    (folder / "notes.txt").write_text("mine")
    original = sthist.models.load(folder)
    real_replace = os.replace

    def failing(source, target):
        if Path(source).name.startswith(".m.sthist-saving-"):
            raise OSError("killed")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="killed"):
        model.save(folder, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sthist.models.load(folder).genes == original.genes
    assert (folder / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".m.sthist-*"))

    # Killed between the two renames: the folder is gone, the old model is beside it; load puts it back.
    aside = tmp_path / ".m.sthist-replaced-0123"
    os.replace(folder, aside)
    assert sthist.models.load(folder).genes == original.genes and not aside.exists()
    # A complete overwrite keeps the user's other files.
    model.save(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"


def test_saved_files_follow_the_umask(model, tmp_path):
    previous = os.umask(0o022)
    try:
        folder = model.save(tmp_path / "m")
    finally:
        os.umask(previous)
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755


def test_an_edited_config_is_refused(model, tmp_path):
    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    edited = dict(config, genes=list(reversed(config["genes"])))
    (folder / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="was changed after saving"):
        sthist.models.load(folder)
    (folder / "config.json").write_text(json.dumps(dict(config, patch={"size_um": 56.0, "size_px": 32})))
    with pytest.raises(ValueError, match="was changed after saving"):
        sthist.models.load(folder)
    (folder / "config.json").write_text(json.dumps(config))
    assert sthist.models.load(folder).genes == model.genes


def test_weights_that_do_not_fit_the_config_are_refused_at_load(model, tmp_path):
    from safetensors.torch import load_file

    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    resigned(folder, {k: v for k, v in tensors.items() if k != "bank.expression"}, config)
    with pytest.raises(ValueError, match=r"lacks the tensors \['bank.expression'\]"):
        sthist.models.load(folder)
    resigned(folder, {**tensors, "bank.expression": tensors["bank.expression"][:, :3]}, config)
    with pytest.raises(ValueError, match="tensor 'bank.expression' has shape"):
        sthist.models.load(folder)
    first = next(k for k in tensors if k.startswith("model."))
    resigned(folder, {**tensors, first: tensors[first][..., :1]}, config)
    with pytest.raises(ValueError, match="does not fit the model its config describes"):
        sthist.models.load(folder)
    resigned(folder, tensors, dict(config, format_version="3"))
    with pytest.raises(ValueError, match="format_version must be a positive integer"):
        sthist.models.load(folder)
