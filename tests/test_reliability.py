"""Faults and bad input (issue 11): nothing lost, nothing silently wrong, no hang, one clear line per mistake."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sthist
from sthist.__main__ import main

FAST = {"backbone": "tiny", "max_epochs": 2, "batch_size": 16, "k": 5, "views": 1}


@pytest.fixture(scope="module")
def sections():
    sthist.settings.progress = False
    return sthist.datasets.toy(2, grid=6, n_genes=8, random_state=5)


@pytest.fixture(scope="module")
def model(sections):
    return sthist.tl.fit({"toy0": sections["toy0"]}, **FAST)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("models") / "model")


@pytest.fixture
def store(sections, tmp_path):
    path = tmp_path / "toy1.zarr"
    sections["toy1"].write(path)
    return path


def _copy(sdata):
    import copy

    from spatialdata import SpatialData

    return SpatialData(
        images=dict(sdata.images),
        shapes=dict(sdata.shapes),
        tables={k: v.copy() for k, v in sdata.tables.items()},
        attrs=copy.deepcopy(sdata.attrs),
    )


# ---------------------------------------------------------------------------------------------- data loss


def test_concurrent_cli_predicts_into_one_store_keep_both_results(store, model_dir):
    import spatialdata as sd

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    commands = [
        [sys.executable, "-m", "sthist", "predict", str(store), "--model", str(model_dir), "--key", key]
        for key in ("first", "second")
    ]
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[1].decode()[-2000:] for o in outputs]
    table = sd.read_zarr(store).tables["table"]
    assert {"first", "second", "first_uncertainty", "second_uncertainty"} <= set(table.obsm)
    assert {"first", "second"} <= set(table.uns)


def test_a_writer_keeps_what_another_wrote_after_it_read_the_store(store, model):
    import spatialdata as sd

    one, two = sd.read_zarr(store), sd.read_zarr(store)
    sthist.tl.predict(one, model, key_added="one")
    sthist.tl.predict(two, model, key_added="two")
    sthist.io.update_table(one, "table", obsm=["one", "one_uncertainty"], uns=["one"])
    sthist.io.update_table(two, "table", obsm=["two", "two_uncertainty"], uns=["two"])
    stored = sd.read_zarr(store).tables["table"]
    assert {"one", "two"} <= set(stored.obsm) and {"one", "two"} <= set(stored.uns)
    # The second writer's table gained what the first wrote, as the store has it.
    assert {"one", "one_uncertainty", "two"} <= set(two.tables["table"].obsm) and "one" in two.tables[
        "table"
    ].uns
    pd.testing.assert_frame_equal(two.tables["table"].obsm["one"], stored.obsm["one"])
    # The second writer re-read the table under the lock: a key the first wrote is not replaced silently.
    three = sd.read_zarr(store)
    three.tables["table"].obsm["one"] = three.tables["table"].obsm["one"] * 0
    with pytest.raises(ValueError, match=r"already has \[\"obsm\['one'\]\"\]; pass overwrite=True"):
        sthist.io.update_table(three, "table", obsm=["one"])


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, modification time in ns) of every file below ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_update_table_writes_only_the_new_entries(store, model):
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    sthist.tl.predict(sdata, model, key_added="old")
    sthist.io.update_table(sdata, "table", obsm=["old", "old_uncertainty"], uns=["old"])
    table_path = store / "tables" / "table"
    untouched = {name: _files(table_path / name) for name in ("X", "obs", "var", "obsm/old", "uns/old")}
    assert all(untouched.values())
    sthist.tl.predict(sdata, model, key_added="new")
    sthist.io.update_table(sdata, "table", obsm=["new", "new_uncertainty"], uns=["new"])
    # Neither the counts nor the earlier prediction were rewritten: same files, same modification times.
    assert {name: _files(table_path / name) for name in untouched} == untouched
    stored = sd.read_zarr(store).tables["table"]
    pd.testing.assert_frame_equal(stored.obsm["new"], sdata.tables["table"].obsm["new"])
    pd.testing.assert_frame_equal(stored.obsm["old"], sdata.tables["table"].obsm["old"])
    assert stored.uns["new"]["method"] == sdata.tables["table"].uns["new"]["method"]
    np.testing.assert_array_equal(stored.X.toarray(), sdata.tables["table"].X.toarray())
    # obs gains a column and keeps its others; replacing an entry needs overwrite=True.
    sdata.tables["table"].obs["flag"] = np.arange(sdata.tables["table"].n_obs) % 2 == 0
    sthist.io.update_table(sdata, "table", obs=["flag"])
    again = sd.read_zarr(store).tables["table"]
    assert again.obs["flag"].tolist() == sdata.tables["table"].obs["flag"].tolist()
    assert list(again.obs.columns) == [*stored.obs.columns, "flag"]
    sdata.tables["table"].obsm["new"] = sdata.tables["table"].obsm["new"] * 0
    with pytest.raises(ValueError, match=r"already has \[\"obsm\['new'\]\"\]"):
        sthist.io.update_table(sdata, "table", obsm=["new"])
    sthist.io.update_table(sdata, "table", obsm=["new"], overwrite=True)
    assert (sd.read_zarr(store).tables["table"].obsm["new"].to_numpy() == 0).all()


@pytest.fixture
def v2_store(sections, tmp_path):
    """toy1 in a zarr v2 store, as older spatialdata versions wrote them."""
    from spatialdata._io.format import (
        RasterFormatV01,
        ShapesFormatV01,
        SpatialDataContainerFormatV01,
        TablesFormatV01,
    )

    path = tmp_path / "v2.zarr"
    formats = [SpatialDataContainerFormatV01(), TablesFormatV01(), RasterFormatV01(), ShapesFormatV01()]
    sections["toy1"].write(path, sdata_formats=formats)
    assert (path / "tables" / "table" / ".zgroup").exists()
    return path


def test_update_table_writes_entries_into_a_zarr_v2_store(v2_store):
    # Stores written by older spatialdata versions are zarr v2: entries are staged in the store's own format.
    import spatialdata as sd

    path = v2_store
    sdata = sd.read_zarr(path)
    table = sdata.tables["table"]
    table.obsm["score"] = np.arange(2 * table.n_obs, dtype=float).reshape(-1, 2)
    table.uns["score"] = {"method": "test"}
    table.obs["flag"] = np.arange(table.n_obs) % 3 == 0
    sthist.io.update_table(sdata, "table", obsm=["score"], uns=["score"], obs=["flag"])
    stored = sd.read_zarr(path).tables["table"]
    np.testing.assert_array_equal(stored.obsm["score"], table.obsm["score"])
    assert (
        stored.uns["score"] == {"method": "test"}
        and stored.obs["flag"].tolist() == table.obs["flag"].tolist()
    )
    assert (path / "tables" / "table" / "obsm" / "score" / ".zarray").exists()


def test_elements_written_into_a_zarr_v2_store_are_zarr_v2(v2_store, model):
    # A zarr v3 element moved into a zarr v2 store is not read back (silently): elements are staged in v2 there.
    import spatialdata as sd

    path = v2_store
    sdata = sd.read_zarr(path)
    sthist.tl.predict_tiles(sdata, model, stride_um=128)
    sdata.shapes["extra"] = sdata.shapes["spots"]
    sthist.io.write_elements(sdata, [("shapes", "extra")])
    again = sd.read_zarr(path)
    assert {"extra", "sthist_tiles"} <= set(again.shapes) and "sthist_tiles_table" in again.tables
    assert (
        not (path / "shapes" / "extra" / "zarr.json").exists()
        and (path / "shapes" / "extra" / ".zgroup").exists()
    )
    np.testing.assert_array_equal(again.tables["sthist_tiles_table"].X, sdata.tables["sthist_tiles_table"].X)


@contextlib.contextmanager
def _second_rename_fails(monkeypatch):
    """Within the block, the second ``os.replace`` fails with a full disk, and the block must raise that error."""
    real_replace = os.replace
    calls = []

    def failing(source, target):
        calls.append((source, target))
        if len(calls) == 2:
            raise OSError("disk full")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing)
    try:
        with pytest.raises(OSError, match="disk full"):
            yield
    finally:
        monkeypatch.setattr(os, "replace", real_replace)


def test_failed_entry_write_puts_the_old_entry_back(store, model, monkeypatch):
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    sthist.tl.predict(sdata, model, key_added="one")
    sthist.io.update_table(sdata, "table", obsm=["one", "one_uncertainty"], uns=["one"])
    before = sd.read_zarr(store).tables["table"].obsm["one"].copy()
    sdata.tables["table"].obsm["one"] = before * 0
    with _second_rename_fails(monkeypatch):  # old entry moved aside; moving the new one in fails
        sthist.io.update_table(sdata, "table", obsm=["one"], overwrite=True)
    pd.testing.assert_frame_equal(sd.read_zarr(store).tables["table"].obsm["one"], before)
    assert not list(store.parent.glob(".toy1.zarr.sthist-staging-*"))


def test_an_entry_left_aside_by_a_killed_writer_is_restored_by_the_next(store, model):
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    sthist.tl.predict(sdata, model, key_added="one")
    sthist.io.update_table(sdata, "table", obsm=["one", "one_uncertainty"], uns=["one"])
    before = sd.read_zarr(store).tables["table"].obsm["one"].copy()
    # A writer killed between moving obsm['one'] aside and moving its new version in leaves this behind:
    staging = store.parent / ".toy1.zarr.sthist-staging-deadbeef"
    aside = staging / "replaced" / "tables" / "table" / "obsm" / "one"
    aside.parent.mkdir(parents=True)
    os.replace(store / "tables" / "table" / "obsm" / "one", aside)
    sdata.tables["table"].obs["flag"] = True
    sthist.io.update_table(sdata, "table", obs=["flag"])
    table = sd.read_zarr(store).tables["table"]
    pd.testing.assert_frame_equal(table.obsm["one"], before)
    assert table.obs["flag"].all() and not staging.exists()


def test_threads_writing_into_one_store_keep_both_results(store, model):
    import threading

    import spatialdata as sd

    readers = {key: sd.read_zarr(store) for key in ("left", "right")}
    for key, sdata in readers.items():
        sthist.tl.predict(sdata, model, key_added=key)
    errors = []

    def write(key):
        try:
            sthist.io.update_table(readers[key], "table", obsm=[key, f"{key}_uncertainty"], uns=[key])
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(key,)) for key in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stored = sd.read_zarr(store).tables["table"]
    assert {"left", "right"} <= set(stored.obsm) and {"left", "right"} <= set(stored.uns)


def test_failed_write_puts_the_old_element_back(store, monkeypatch):
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    before = sdata.tables["table"].copy()
    sdata.tables["table"].obs["changed"] = 1
    with _second_rename_fails(monkeypatch):  # old element moved aside; moving the new one in fails
        sthist.io.write_elements(sdata, [("tables", "table")], overwrite=True)
    table = sd.read_zarr(store).tables["table"]
    assert "changed" not in table.obs and table.n_obs == before.n_obs
    assert not list(store.parent.glob(".toy1.zarr.sthist-staging-*"))


def test_an_element_left_aside_by_a_killed_writer_is_restored_by_the_next(store):
    import spatialdata as sd

    # A writer killed between moving the old table aside and moving the new one in leaves this behind:
    staging = store.parent / ".toy1.zarr.sthist-staging-deadbeef"
    (staging / "replaced" / "tables").mkdir(parents=True)
    os.replace(store / "tables" / "table", staging / "replaced" / "tables" / "table")
    sdata = sd.read_zarr(store, selection=("images", "shapes"))
    sdata.shapes["extra"] = sdata.shapes["spots"]
    sthist.io.write_elements(sdata, [("shapes", "extra")])
    again = sd.read_zarr(store)
    assert "table" in again.tables and "extra" in again.shapes
    assert not staging.exists()


def test_save_is_atomic_and_keeps_the_old_model_on_failure(model, tmp_path, monkeypatch):
    from sthist.models import _model

    folder = model.save(tmp_path / "m")
    (folder / "notes.txt").write_text("mine")
    original = sthist.models.load(folder)
    real_replace = os.replace

    def failing(source, target):
        if Path(source).name.startswith(".m.sthist-saving-"):
            raise OSError("killed")
        return real_replace(source, target)

    monkeypatch.setattr(_model.os, "replace", failing)
    with pytest.raises(OSError, match="killed"):
        model.save(folder, overwrite=True)
    monkeypatch.setattr(_model.os, "replace", real_replace)
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


def test_results_never_replace_what_sthist_does_not_own(sections, model):
    sdata = _copy(sections["toy1"])
    table = sdata.tables["table"]
    for reserved in ("spatialdata_attrs", "sthist_normalization", "spatial"):
        with pytest.raises(ValueError, match="keep for themselves"):
            sthist.tl.predict(sdata, model, key_added=reserved, overwrite=True)
    table.obsm["mine"] = np.zeros((table.n_obs, 2))
    with pytest.raises(ValueError, match="not written by sthist.tl.predict"):
        sthist.tl.predict(sdata, model, key_added="mine", overwrite=True)
    assert table.obsm["mine"].shape == (table.n_obs, 2)
    # What sthist wrote it may replace when asked.
    sthist.tl.predict(sdata, model, key_added="ours")
    sthist.tl.predict(sdata, model, key_added="ours", overwrite=True)
    for taken in ("spots", "he", "table"):
        with pytest.raises(ValueError, match="did not write"):
            sthist.tl.predict_tiles(sdata, model, key_added=taken, overwrite=True, stride_um=224)
    sthist.tl.predict_tiles(sdata, model, key_added="tiles", stride_um=224)
    sthist.tl.predict_tiles(sdata, model, key_added="tiles", stride_um=224, overwrite=True)
    assert set(sdata.shapes) == {"spots", "tiles"} and "he" in sdata.images


# ------------------------------------------------------------------------------------------ silently wrong


@pytest.mark.parametrize(
    "values",
    [
        ["True", "False"],
        [1.0, np.nan],
        pd.Categorical(["pass", "fail"]),
        [1, 0],
    ],
    ids=["strings", "nan-floats", "categories", "integers"],
)
def test_qc_column_must_hold_booleans(sections, model, values):
    sdata = _copy(sections["toy1"])
    table = sdata.tables["table"]
    pattern = np.resize(np.asarray(values, dtype=object), table.n_obs)
    table.obs["keep"] = pd.Categorical(pattern) if isinstance(values, pd.Categorical) else list(pattern)
    with pytest.raises(TypeError, match="obs column 'keep' must hold booleans"):
        sthist.tl.predict(sdata, model, qc_column="keep")
    with pytest.raises(TypeError, match="must hold booleans"):
        sthist.tl.fit({"toy1": sdata}, qc_column="keep", **FAST)
    table.obs["keep"] = np.arange(table.n_obs) % 2 == 0
    sthist.tl.predict(sdata, model, qc_column="keep")
    assert table.obsm["sthist_pred"].notna().all(axis=1).sum() == (table.obs["keep"]).sum()


def test_cli_fit_tells_stores_with_the_same_file_name_apart(sections, tmp_path, capsys):
    stores = []
    for folder, name in (("a", "toy0"), ("b", "toy1")):
        (tmp_path / folder).mkdir()
        sections[name].write(tmp_path / folder / "section.zarr")
        stores.append(str(tmp_path / folder / "section.zarr"))
    options = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "16", "--k", "5", "--views", "1"]
    assert main(["fit", *stores, "--output", str(tmp_path / "m"), *options]) == 0
    trained = sthist.models.load(tmp_path / "m").config["training_sections"]
    assert trained == {"a/section": 36, "b/section": 36}
    assert main(["fit", stores[0], stores[0], "--output", str(tmp_path / "m2"), *options]) == 2
    assert "given more than once" in capsys.readouterr().err


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


def _resigned(folder: Path, tensors: dict, config: dict) -> None:
    """Write weights and config with matching checksum and digest (as a tool that edits both would)."""
    from safetensors.torch import save_file

    from sthist.models._backbones import file_sha256
    from sthist.models._model import CONFIG_DIGEST, config_digest

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, folder / "model.safetensors", metadata={CONFIG_DIGEST: config_digest(config)})
    (folder / "config.json").write_text(
        json.dumps(dict(config, weights_sha256=file_sha256(folder / "model.safetensors")))
    )


def test_weights_that_do_not_fit_the_config_are_refused_at_load(model, tmp_path):
    from safetensors.torch import load_file

    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    _resigned(folder, {k: v for k, v in tensors.items() if k != "bank.expression"}, config)
    with pytest.raises(ValueError, match=r"lacks the tensors \['bank.expression'\]"):
        sthist.models.load(folder)
    _resigned(folder, {**tensors, "bank.expression": tensors["bank.expression"][:, :3]}, config)
    with pytest.raises(ValueError, match="tensor 'bank.expression' has shape"):
        sthist.models.load(folder)
    first = next(k for k in tensors if k.startswith("model."))
    _resigned(folder, {**tensors, first: tensors[first][..., :1]}, config)
    with pytest.raises(ValueError, match="does not fit the model its config describes"):
        sthist.models.load(folder)
    _resigned(folder, tensors, dict(config, format_version="3"))
    with pytest.raises(ValueError, match="format_version must be a positive integer"):
        sthist.models.load(folder)


def test_out_of_domain_sections_are_flagged_and_recorded(sections, model):
    import anndata as ad

    sdata = _copy(sections["toy1"])
    old = sdata.tables["table"]
    renamed = ad.AnnData(
        X=old.X, obs=old.obs, var=pd.DataFrame(index=[g.lower() + "_mm" for g in old.var_names]), uns=old.uns
    )
    sdata.tables["table"] = renamed
    with pytest.warns(UserWarning, match="measures 0 of the model's 8 genes"):
        sthist.tl.predict(sdata, model)
    domain = renamed.uns["sthist_pred"]["domain"]
    assert domain["gene_overlap"] == 0 and domain["warnings"]
    # Same image, but recorded as 8× coarser pixels: the patches would be upsampled.
    coarse = _copy(sections["toy1"])
    sthist.pp.set_microns_per_pixel(coarse, 8.0)
    with pytest.warns(UserWarning, match="upsampled"):
        sthist.tl.predict(coarse, model)
    assert coarse.tables["table"].uns["sthist_pred"]["domain"]["upsampling"] > 2
    # In-domain: no warning, and the check is recorded.
    plain = _copy(sections["toy1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sthist.tl.predict(plain, model)
    assert plain.tables["table"].uns["sthist_pred"]["domain"]["gene_overlap"] == 1.0


@pytest.mark.parametrize("value", [1000.0, 0.001, 0.0, float("nan")])
def test_implausible_scales_are_refused(sections, value):
    sdata = _copy(sections["toy1"])
    with pytest.raises(ValueError, match="µm per pixel"):
        sthist.pp.set_microns_per_pixel(sdata, value)
    sdata.attrs["sthist"]["microns_per_pixel"]["global"] = value  # written by another tool
    with pytest.raises(ValueError, match="the scale recorded in sdata.attrs"):
        sthist.pp.get_microns_per_pixel(sdata)


def test_cli_refuses_a_scale_far_from_the_recorded_one(store, model_dir, capsys):
    assert main(["predict", str(store), "--model", str(model_dir), "--microns-per-pixel", "14.5"]) == 2
    assert "--microns-per-pixel 14.5 differs from the 1 µm/px recorded in" in capsys.readouterr().err
    assert main(["predict", str(store), "--model", str(model_dir), "--microns-per-pixel", "1450"]) == 2
    assert "outside the plausible range" in capsys.readouterr().err


def test_token_cache_is_keyed_by_content_not_by_name(sections, model):
    from sthist.data import TokenCache

    one, two = _copy(sections["toy0"]), _copy(sections["toy1"])
    for sdata in (one, two):  # hand-built sections carry no name: both are "section0"
        sdata.attrs.pop("sthist", None)
        sthist.pp.set_microns_per_pixel(sdata, 1.0)
    cache = TokenCache()
    cached = [sthist.tl.predict(s, model, inplace=False, token_cache=cache)[0] for s in (one, two)]
    fresh = [sthist.tl.predict(s, model, inplace=False)[0] for s in (one, two)]
    assert len(cache) == 2
    for a, b in zip(cached, fresh, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_anisotropic_pixels_are_reported_and_tiles_drawn_per_axis():
    from types import SimpleNamespace

    from sthist.pl._tiles import tile_raster

    grid = np.array([[x, y] for x in range(6) for y in range(6)], dtype=float)
    pixels = grid * [100 / 4.625, 100 / 4.158]
    with pytest.warns(UserWarning, match="pixels are not square: 4.625 µm/px along x and 4.158"):
        scale, _ = sthist.pp.fit_microns_per_pixel(grid, pixels, pitch_um=100)
    assert scale == pytest.approx(np.sqrt(4.625 * 4.158), rel=1e-6)
    # Tiles 10 units apart in x and 9 in y: each gets its own cell, nothing drawn over another.
    xy = np.array([[x * 10.0, y * 9.0] for x in range(30) for y in range(20)])
    values = np.arange(len(xy), dtype=float)
    raster, extent = tile_raster(SimpleNamespace(xy=xy, diameters=np.full(len(xy), 9.5)), values)
    assert raster.shape == (20, 30) and np.isfinite(raster).all()
    assert sorted(raster.ravel()) == sorted(values)
    assert extent == pytest.approx((-5, 295, 175.5, -4.5))


def test_degenerate_settings_are_refused(sections, model):
    sdata = _copy(sections["toy1"])
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        sthist.tl.predict(sdata, model, k=0)
    with pytest.raises(ValueError, match="n_top must be a positive integer"):
        sthist.tl.evaluate(sdata, n_top=0)
    with pytest.raises(ValueError, match="n_top_genes must be a positive integer"):
        sthist.tl.fit(sections, n_top_genes=0, **FAST)


def test_training_on_constant_expression_is_refused(sections):
    sdata = _copy(sections["toy0"])
    table = sdata.tables["table"]
    table.X = table.X * 0
    with pytest.raises(ValueError, match="Every gene of the panel is constant"):
        sthist.tl.fit({"toy0": sdata}, genes=list(table.var_names[:3]), **FAST)


def test_missing_image_chunks_are_reported(store, model):
    import spatialdata as sd

    for level in ("s0", "s1", "s2"):
        chunks = sorted((store / "images" / "he" / level).rglob("c/*/*/*"))
        assert chunks
        chunks[len(chunks) // 2].unlink()
    with pytest.warns(UserWarning, match="chunks of image 'he' .* are not in its zarr store"):
        sthist.tl.predict(sd.read_zarr(store), model, inplace=False)


def test_evaluate_refuses_predictions_in_other_units(sections, model):
    sdata = _copy(sections["toy1"])
    table = sdata.tables["table"]
    sthist.pp.normalize(table, target_sum=1e6, key_added="per_million")
    sthist.tl.predict(sdata, model)
    with pytest.raises(ValueError, match="log1p of counts per 1e\\+06, but table.obsm\\['sthist_pred'\\]"):
        sthist.tl.evaluate(sdata, layer="per_million")
    sthist.pp.normalize(table)
    sthist.tl.evaluate(sdata)


# --------------------------------------------------------------------------------------------------- hangs


@pytest.mark.parametrize("stride", [1.0, 0.01])
def test_tiny_strides_are_refused_before_any_work(sections, model, stride):
    tick = time.perf_counter()
    with pytest.raises(ValueError, match="tiles"):
        sthist.tl.predict_tiles(_copy(sections["toy1"]), model, stride_um=stride)
    assert time.perf_counter() - tick < 30


# ------------------------------------------------------------------------------------------ unclear errors


def test_input_mistakes_fail_early_with_one_clear_line(sections, model, monkeypatch):
    import sthist.data._features as features

    sdata = _copy(sections["toy1"])

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before checking the input")

    monkeypatch.setattr(features, "encode_patches", no_encoding)
    cases = [
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
        (dict(genes="gene000"), TypeError, "not the string 'gene000'"),
        (dict(key_added="a/b"), ValueError, "cannot be stored in a zarr store"),
        (dict(tta_views=9), ValueError, "tta_views"),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append((dict(device="cuda"), ValueError, "torch sees none"))
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            sthist.tl.predict(sdata, model, **options)
    table = sdata.tables["table"]
    table.obs_names = ["s0"] * table.n_obs
    with pytest.raises(ValueError, match="names spots more than once"):
        sthist.tl.predict(sdata, model)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
        ({"learning_rate": -1e-3}, "learning_rate must be a positive finite number"),
        ({"genes": "gene000"}, "not the string 'gene000'"),
        ({"genes": ["gene000", "gene000"]}, "more than once"),
    ],
)
def test_fit_mistakes_fail_before_encoding(sections, monkeypatch, options, message):
    import sthist.data._features as features

    monkeypatch.setattr(features, "encode_patches", lambda *a, **k: pytest.fail("encoded"))
    with pytest.raises((ValueError, TypeError), match=message):
        sthist.tl.fit(sections, **{**FAST, **options})


def test_duplicated_gene_names_in_a_table_are_named(sections):
    sdata = _copy(sections["toy0"])
    table = sdata.tables["table"]
    table.var_names = [table.var_names[0]] * 2 + list(table.var_names[2:])
    with pytest.raises(ValueError, match="not unique"):
        sthist.tl.fit({"toy0": sdata}, genes=list(table.var_names[2:5]), **FAST)


def test_cli_mistakes_print_one_line_naming_the_flag(store, model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    plain = tmp_path / "plain.zarr"
    plain.write_text("not a store")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    cases = [
        (["predict", str(empty), "--model", str(model_dir)], "is not a zarr store"),
        (["predict", str(plain), "--model", str(model_dir)], "is a file, not a SpatialData zarr store"),
        (["predict", str(store), "--model", str(tmp_path)], "not a complete sthist model"),
        (["predict", str(store), "--model", str(model_dir), "--key", "a/b"], "--key='a/b' cannot be stored"),
        (["predict", str(store), "--model", str(model_dir), "--qc-column", "nope"], "no obs column 'nope'"),
        (["fit", str(store), "--output", str(taken)], "--output .* is a file"),
        (["fit", str(store), "--output", str(tmp_path / "m"), "--devices", "100000"], "--devices 100000"),
        (["fit", str(store), "--output", str(tmp_path / "m"), "--batch-size", "0"], "--batch-size must be"),
        (["evaluate", str(store), "--n-top", "0"], "--n-top must be a positive integer"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"sthist {argv[0]}: error:"), err
        assert __import__("re").search(message, err), (message, err)
        assert "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "predict", str(store), "--model", str(tmp_path)])


def test_read_only_store_is_refused_before_predicting(store, model_dir, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    assert main(["predict", str(store), "--model", str(model_dir)]) == 2
    assert "cannot be written (Read-only file system)" in capsys.readouterr().err


def test_cli_qc_version_and_device(store, model_dir, capsys):
    import spatialdata as sd

    assert main(["qc", str(store)]) == 0
    assert "pass QC" in capsys.readouterr().out
    table = sd.read_zarr(store).tables["table"]
    assert table.obs["sthist_pass_qc"].dtype == bool and "sthist_qc" in table.uns
    assert main(["qc", str(store)]) == 2  # the columns exist: replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    plot = store.parent / "qc.png"
    assert main(["qc", str(store), "--overwrite", "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 10_000
    assert main(["qc", str(store), "--overwrite", "--plot", str(store.parent / "missing" / "qc.png")]) == 2
    assert "--plot" in capsys.readouterr().err
    assert main(["predict", str(store), "--model", str(model_dir), "--qc-column", "sthist_pass_qc"]) == 0
    assert main(["predict", str(store), "--model", str(model_dir), "--key", "cpu", "--device", "cpu"]) == 0
    assert "autosharding" not in capsys.readouterr().err  # other libraries' notices only with --verbose
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("sthist ")


def test_gene_names_in_another_case_get_a_suggestion(sections, model):
    gene = model.genes[0]
    with pytest.raises(KeyError, match=f"Did you mean '{gene.upper()}' → '{gene}'"):
        sthist.tl.predict(_copy(sections["toy1"]), model, genes=[gene.upper()])
    with pytest.raises(KeyError, match="Did you mean"):
        sthist.pp.select_genes(sections["toy1"], genes=[gene.upper()])


def test_token_cache_keeps_summaries_and_serves_means_from_them(sections, model, monkeypatch):
    """Training keeps the 3 × 3 summary; prediction's mean tokens come from it without encoding again."""
    import torch

    import sthist.data._features as features
    from sthist.data import SpotPatchDataset, TokenCache, tokens_of

    dataset = SpotPatchDataset(_copy(sections["toy0"]), patch_size_um=64, patch_size_px=32)
    encoded = []
    original = features.encode_patches
    monkeypatch.setattr(
        features, "encode_patches", lambda *a, **k: encoded.append(k["grid"]) or original(*a, **k)
    )
    cache = TokenCache()
    options = {"identity": "tiny|random", "views": 2, "token_cache": cache}
    summary = tokens_of(dataset, model.encoder, grid=3, **options)
    assert summary.shape[2] == 10 and encoded == [3]
    means = tokens_of(dataset, model.encoder, grid=1, **options)
    assert means.shape[2] == 1 and encoded == [3]  # served from the summary
    fresh = original(dataset, model.encoder, views=2, grid=1)
    torch.testing.assert_close(means, fresh, atol=2e-3, rtol=2e-3)
    full = tokens_of(dataset, model.encoder, grid=None, **options)
    assert full.shape[2] == 16 and encoded == [3, None]  # every token: encoded again, kept beside
    assert len(cache) == 2 and cache.nbytes == summary.numel() * 2 + full.numel() * 2
    # Every token serves any summary: a cache that holds them encodes nothing more.
    encoded.clear()
    cache = TokenCache()
    tokens_of(dataset, model.encoder, grid=None, **{**options, "token_cache": cache})
    again = tokens_of(dataset, model.encoder, grid=3, **{**options, "token_cache": cache})
    assert encoded == [None] and again.shape == summary.shape
    torch.testing.assert_close(again, summary, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_prediction_frames_are_written_as_anndata_writes_them(tmp_path, zarr_format):
    # Gene columns are written concurrently: the same attributes, codecs and chunks as anndata's write_elem.
    import zarr
    from anndata.io import read_elem, write_elem

    from sthist.io import _write_entry

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.random((37, 12), dtype=np.float32),
        index=pd.Index([f"spot{i}" for i in range(37)], name="spot"),
        columns=[f"GENE{i}" for i in range(12)],
    )
    mixed = frame.iloc[:, :3].assign(kind=pd.Categorical(["a", "b"] * 18 + ["a"]), count=np.arange(37))
    ours = zarr.open_group(tmp_path / "ours.zarr", mode="w", zarr_format=zarr_format)
    theirs = zarr.open_group(tmp_path / "theirs.zarr", mode="w", zarr_format=zarr_format)
    for key, value in (("prediction", frame), ("mixed", mixed)):
        _write_entry(ours, key, value)
        write_elem(theirs, key, value)
        pd.testing.assert_frame_equal(read_elem(ours[key]), value)
        assert dict(ours[key].attrs) == dict(theirs[key].attrs)
    for column in frame.columns:
        assert (
            ours[f"prediction/{column}"].metadata.to_dict()
            == theirs[f"prediction/{column}"].metadata.to_dict()
        )
    # A store that is not a folder (the columns are created by their path from its root).
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=zarr_format)
    _write_entry(memory.require_group("obsm"), "prediction", frame)
    pd.testing.assert_frame_equal(read_elem(memory["obsm/prediction"]), frame)


def test_consolidated_metadata_is_refreshed_only_where_the_store_changed(store, model, tmp_path, monkeypatch):
    # Only the moved-in nodes are read again; the store's consolidated metadata equals zarr's own consolidation.
    import json
    import shutil

    import spatialdata as sd
    import zarr

    sdata = sd.read_zarr(store)
    sthist.tl.predict(sdata, model, key_added="first")
    sthist.io.update_table(sdata, "table", obsm=["first", "first_uncertainty"], uns=["first"])
    sthist.tl.predict_tiles(sdata, model, stride_um=128)
    # Replaces an entry by one with fewer genes: the nodes of the others leave the consolidated metadata too.
    sthist.tl.predict(sdata, model, key_added="first", genes=model.genes[:2], overwrite=True)
    sthist.io.update_table(sdata, "table", obsm=["first"], overwrite=True)
    sdata.tables["table"].obs["flag"] = np.arange(sdata.tables["table"].n_obs) % 2 == 0
    sthist.io.update_table(sdata, "table", obs=["flag"])
    ours = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(zarr.storage.LocalStore(reference))
    theirs = json.loads((reference / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert list(ours) == list(theirs) and ours == theirs
    stored_genes = {k.rsplit("/", 1)[1] for k in ours if k.startswith("tables/table/obsm/first/")}
    assert stored_genes & set(model.genes) == set(model.genes[:2])
    again = sd.read_zarr(store)
    assert {"first", "first_uncertainty"} <= set(
        again.tables["table"].obsm
    ) and "sthist_tiles" in again.shapes
    # Without inline consolidated metadata in the root file, spatialdata consolidates the whole store as before.
    calls = []
    monkeypatch.setattr(type(sdata), "write_consolidated_metadata", lambda self: calls.append(self))
    root = json.loads((store / "zarr.json").read_text())
    del root["consolidated_metadata"]
    (store / "zarr.json").write_text(json.dumps(root))
    sthist.io.update_table(sdata, "table", obsm=["first_uncertainty"], overwrite=True)
    assert calls == [sdata]
