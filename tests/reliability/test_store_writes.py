"""Writes into zarr stores lose nothing: concurrent and threaded writers, only new entries written, zarr v2
stores, failed and killed writes put the old entries back, consolidated metadata kept right."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sthist


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
