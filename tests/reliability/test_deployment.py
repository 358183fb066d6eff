"""Where users deploy: stores on mount points, temp folders, scanner artefacts, locks, and one-line answers."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest
from _shared import copy_section, tiny_fit

import sthist
from sthist._constants import Key

# --- temporary folders -------------------------------------------------------------------------------------


def test_a_fit_leaves_the_temp_directory_as_it_found_it(sections, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model = sthist.tl.fit({"toy0": sections["toy0"]}, **tiny_fit())
    assert model.is_trained
    # torch may create its own per-user cache folder once (``torchinductor_<user>``); sthist leaves nothing.
    first = sorted(p.name for p in temp.iterdir())
    assert [name for name in first if not name.startswith("torchinductor_")] == []
    sthist.tl.fit({"toy0": sections["toy0"]}, **tiny_fit(method="bleep"))
    assert sorted(p.name for p in temp.iterdir()) == first


def test_the_seurat_visium_reader_leaves_no_folder_behind(tmp_path, monkeypatch, visium_dir):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    sdata = sthist.datasets.seurat_visium()
    assert list(temp.iterdir()) == []
    image = next(iter(sdata.images.values()))
    assert float(image.data.mean().compute()) > 0  # still readable: held in memory


# --- a store that is a mount point -------------------------------------------------------------------------


@pytest.fixture
def mounted_store(sections, tmp_path):
    """toy1 written into a tmpfs mounted at ``C2.zarr`` (a container volume), unmounted afterwards."""
    mount = tmp_path / "C2.zarr"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    try:
        written = tmp_path / "written.zarr"
        sections["toy1"].write(written)
        for entry in written.iterdir():
            target = mount / entry.name
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
        assert os.stat(mount).st_dev != os.stat(tmp_path).st_dev
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_predicting_into_a_store_that_is_a_mount_point(mounted_store, model_dir, capsys):
    from sthist.cli import main

    assert main(["predict", str(mounted_store), "--model", str(model_dir), "--tta-views", "1"]) == 0
    assert (
        main(["predict", str(mounted_store), "--model", str(model_dir), "--tiles", "--stride-um", "224"]) == 0
    )
    import spatialdata as sd

    stored = sd.read_zarr(mounted_store)
    assert Key.obsm.PREDICTION in stored.tables["table"].obsm
    assert Key.tables.tiles(Key.shapes.TILES) in stored.tables
    # Nothing staged is left, inside the store or beside it.
    assert not [p for p in mounted_store.iterdir() if p.name.startswith(".sthist-staging-")]
    assert not list(mounted_store.parent.glob(".C2.zarr.sthist-staging-*"))


def test_a_killed_writer_staging_inside_the_store_is_recovered(store):
    """A writer killed between its two renames left the old table in its staging folder inside the store."""
    staging = store / ".sthist-staging-deadbeef"
    (staging / "replaced" / "tables").mkdir(parents=True)
    os.replace(store / "tables" / "table", staging / "replaced" / "tables" / "table")
    with sthist.io.store_lock(store):
        pass
    assert (store / "tables" / "table").is_dir() and not staging.exists()


def test_a_file_system_without_locks_is_one_clear_line(store, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        if operation & fcntl.LOCK_UN:
            return None
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(
        OSError, match="does not support file locks .*Work on a copy of the store on a local disk"
    ):
        with sthist.io.store_lock(store):
            pass


# --- tissue on slides with scanner artefacts ---------------------------------------------------------------


def synthetic_slide(size: int = 400, seed: int = 0):
    """A slide at 16 µm/px: glass, two tissue pieces, a blurred bluish-grey frame band, a pen line, specks."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 238.0) + rng.normal(0, 3, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    tissue = (((yy - 170) / 90) ** 2 + ((xx - 160) / 70) ** 2 < 1) | (
        ((yy - 250) / 50) ** 2 + ((xx - 280) / 60) ** 2 < 1
    )
    pink, purple = np.array([215, 140, 185.0]), np.array([150, 95, 170.0])
    mix = rng.random((size, size, 1))
    rgb[tissue] = (mix * pink + (1 - mix) * purple)[tissue] + rng.normal(0, 6, (int(tissue.sum()), 3))
    band = int(size * 0.06)
    frame = np.zeros((size, size), bool)
    frame[:band] = frame[-band:] = True
    frame[:, :band] = frame[:, -band:] = True
    weight = ndimage.gaussian_filter(frame.astype(float), 4)[..., None]
    rgb = rgb * (1 - weight) + np.array([165, 175, 195.0]) * weight
    pen = (np.abs(yy - (0.4 * xx + 300)) < 1.5) & (xx > 40) & (xx < 300)
    rgb[pen] = (40, 60, 170)
    near_tissue = ndimage.binary_dilation(tissue, iterations=6)
    specks = np.zeros((size, size), bool)
    for y, x in rng.integers(60, size - 60, (25, 2)):
        if not near_tissue[y, x]:
            specks[y : y + 3, x : x + 3] = True
    rgb[specks] = (90, 80, 100)
    return np.clip(rgb, 0, 255).astype(np.uint8), tissue, frame, pen, specks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_tissue_mask_rejects_frames_pen_lines_and_specks(seed):
    rgb, tissue, frame, pen, specks = synthetic_slide(seed=seed)
    mask = sthist.pp.tissue_mask(rgb)
    assert (mask & tissue).sum() / tissue.sum() > 0.98
    assert (mask & frame).sum() == 0 and (mask & pen).sum() == 0 and (mask & specks).sum() == 0
    assert (mask & ~tissue).sum() / (~tissue).sum() < 0.005


def test_the_tissue_mask_scales_its_sizes_with_the_resolution():
    rgb = np.full((200, 200, 3), 238, dtype=np.uint8)
    rgb[50:58, 50:58] = (170, 90, 160)  # 8 px: 128 µm across at 16 µm/px, 32 µm at 4 µm/px
    assert sthist.pp.tissue_mask(rgb).sum() == 64
    assert sthist.pp.tissue_mask(rgb, microns_per_pixel=4.0).sum() == 0  # a speck at that resolution


@pytest.mark.realdata
def test_her2st_spots_stay_on_tissue(her2st_images):
    for name, sdata in her2st_images.items():
        if name == "A2":  # its image is misregistered to its spots
            continue
        assert sdata.attrs[Key.attrs.ROOT][Key.attrs.REGISTRATION] >= 0.99, name


# --- warnings that name the section and fire only when the input differs ----------------------------------


def test_cross_validation_warnings_name_sections_by_their_keys(sections):
    coarse = {name: copy_section(sdata) for name, sdata in sections.items()}
    for sdata in coarse.values():
        del sdata.attrs[Key.attrs.ROOT][Key.attrs.SECTION]
    sthist.pp.set_microns_per_pixel(coarse["toy1"], 8.0)  # patches of this one would be far blurrier
    with pytest.warns(UserWarning) as caught:
        sthist.tl.cross_validate(
            coarse, groups="section", methods=["ridge"], n_top=3, fit_options=tiny_fit(patch_size_um=112.0)
        )
    messages = [str(w.message) for w in caught if "µm/px" in str(w.message)]
    assert messages and all("section 'toy1'" in m for m in messages)
    assert not any("section0" in str(w.message) for w in caught)


def test_no_resolution_warning_when_the_model_was_trained_on_such_images(sections):
    coarse = {name: copy_section(sdata) for name, sdata in sections.items()}
    for sdata in coarse.values():
        sthist.pp.set_microns_per_pixel(
            sdata, 16.0
        )  # 112 µm patches of 32 px read at 16 µm/px: upsampled 4.6×
    model = sthist.tl.fit({"toy0": coarse["toy0"]}, **tiny_fit(patch_size_um=112.0))
    assert model.config.image_microns_per_pixel == {"toy0": pytest.approx(16.0)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sthist.tl.predict(coarse["toy1"], model)
    assert not [w for w in caught if "µm/px" in str(w.message)]
    domain = coarse["toy1"].tables["table"].uns[Key.obsm.PREDICTION]["domain"]
    assert domain["upsampling"] > 2 and not [m for m in domain["warnings"] if "µm/px" in m]
    coarser = copy_section(sections["toy1"])
    sthist.pp.set_microns_per_pixel(coarser, 64.0)
    with pytest.warns(UserWarning, match=r"4.0× coarser than the 16 µm/px of the model's training images"):
        sthist.tl.predict(coarser, model)


def test_the_image_resolution_record_is_saved_and_read_back(model, tmp_path):
    loaded = sthist.models.load(model.save(tmp_path / "m"))
    assert loaded.config.image_microns_per_pixel == model.config.image_microns_per_pixel != {}


# --- one-line answers --------------------------------------------------------------------------------------


def test_a_batch_that_cannot_fit_is_refused_before_any_work(sections, model):
    with pytest.raises(
        ValueError, match=r"batch_size=100000000 needs about .* GiB .* use batch_size=\d+ or less"
    ):
        sthist.tl.predict(copy_section(sections["toy1"]), model, batch_size=100_000_000)
    with pytest.raises(ValueError, match=r"batch_size=100000000 needs about"):
        sthist.tl.predict_tiles(copy_section(sections["toy1"]), model, batch_size=100_000_000)


@pytest.mark.parametrize(
    ("values", "suggestion"),
    [
        (["True", "False", "True"], "table.obs['qc'].astype(str) == 'True'"),
        ([1.0, np.nan, 1.0], "table.obs['qc'].fillna(0) == 1"),
        ([1, 0, 1], "table.obs['qc'] == 1"),
        (["pass", "fail", "pass"], "table.obs['qc'].astype(str) == 'pass'"),
        ([True, None, False], "table.obs['qc'].fillna(False).astype(bool)"),
    ],
)
def test_a_non_boolean_qc_column_gets_the_conversion_its_values_need(values, suggestion):
    import anndata as ad

    from sthist._core._checks import boolean_column

    table = ad.AnnData(obs=pd.DataFrame({"qc": values}, index=list("abc")))
    with pytest.raises(TypeError) as caught:
        boolean_column(table, "qc", section="s")
    assert f"`table.obs['qc'] = {suggestion}`" in str(caught.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_refused_before_any_work(sections, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the sections were read before the accelerator was checked")

    monkeypatch.setattr(sthist.models.SthistModel, "__init__", no_work)
    with pytest.raises(ValueError, match="accelerator='gpu' asks for a GPU, but torch sees none"):
        sthist.tl.fit(sections, **tiny_fit(), accelerator="gpu")
    with pytest.raises(ValueError, match="accelerator='gpu' asks for a GPU"):
        sthist.tl.predict_stores(["a.zarr"], "model", accelerator="gpu")


def test_an_empty_key_is_refused(store, model_dir, capsys):
    from sthist.cli import main

    assert main(["predict", str(store), "--model", str(model_dir), "--key", ""]) == 2
    assert "--key is empty" in capsys.readouterr().err
    import spatialdata as sd

    assert Key.obsm.PREDICTION not in sd.read_zarr(store).tables["table"].obsm


def test_anisotropic_pixels_give_both_axes_ready_for_from_arrays():
    grid = np.array([[x, y] for x in range(6) for y in range(6)], dtype=float)
    with pytest.warns(UserWarning, match="pass the fit's .axes to from_arrays"):
        fit = sthist.pp.fit_microns_per_pixel(grid, grid * [21.6, 24.05] + 5, pitch_um=100)
    assert fit.axes == pytest.approx((4.6296, 4.158), abs=1e-3)
    scale, rms = fit  # unpacks as before
    assert scale == pytest.approx(np.sqrt(fit.x * fit.y)) and rms == pytest.approx(0, abs=1e-9)


def test_reading_visium_keeps_third_party_notices_out_of_the_log(visium_dir, tmp_path):
    sthist.datasets.seurat_visium(folder=tmp_path / "outs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata = sthist.datasets.visium(tmp_path / "outs")
    noise = [
        str(w.message) for w in caught if "not unique" in str(w.message) or "region_key" in str(w.message)
    ]
    assert noise == []
    assert all(table.var_names.is_unique for table in sdata.tables.values())


# --- long jobs ---------------------------------------------------------------------------------------------


def test_an_interrupted_cross_validation_resumes_from_its_results_file(sections, tmp_path, monkeypatch):
    import sthist.tl._fit as fit_module

    options = {"groups": "section", "methods": ["ridge", "bleep"], "n_top": 3, "fit_options": tiny_fit()}
    results = tmp_path / "cv.csv"
    fresh = sthist.tl.cross_validate(sections, **options)
    real_fit, calls = fit_module.fit, []

    def interrupted_fit(*args, **kwargs):
        calls.append(kwargs["method"])
        if len(calls) == 3:  # fold 0 done (ridge, bleep); Ctrl-C in fold 1
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fit_module, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        sthist.tl.cross_validate(sections, **options, results_file=results)
    kept = pd.read_csv(results)
    assert set(kept["fold"]) == {0} and set(kept["method"]) == {"ridge", "bleep"}
    calls.clear()
    resumed = sthist.tl.cross_validate(sections, **options, results_file=results)
    assert calls == ["ridge", "bleep"]  # fold 1 only
    pd.testing.assert_frame_equal(
        resumed.reset_index(drop=True), fresh.reset_index(drop=True), check_dtype=False, atol=1e-6
    )
    other = {**options, "n_top": 4}
    with pytest.raises(ValueError, match="holds results of another cross-validation"):
        sthist.tl.cross_validate(sections, **other, results_file=results)


def test_ctrl_c_during_a_fit_leaves_no_temporary_folder(sections, tmp_path, monkeypatch):
    import lightning as L

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(L.Trainer, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sthist.tl.fit({"toy0": sections["toy0"]}, **tiny_fit())
    assert [p.name for p in temp.iterdir() if p.name.startswith("sthist")] == []


def test_a_full_disk_while_writing_tiles_leaves_the_store_as_it_was(store, model, monkeypatch):
    import spatialdata as sd
    from spatialdata import SpatialData

    sdata = sd.read_zarr(store)
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    real_write = SpatialData.write

    def full_disk(self, path, *args, **kwargs):
        real_write(self, path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SpatialData, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        sthist.tl.predict_tiles(sdata, model, stride_um=224)
    after = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith(".sthist.lock")] == []
    assert Key.tables.tiles(Key.shapes.TILES) not in sd.read_zarr(store).tables


def test_an_interrupted_cohort_prediction_resumes(sections, model, tmp_path):
    stores = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.zarr"
        sections["toy1"].write(path)
        stores.append(str(path))
    model_dir = model.save(tmp_path / "model")
    first = sthist.tl.predict_stores(stores[:1], model_dir, tta_views=1)
    assert list(first["resumed"]) == [False]
    resumed = sthist.tl.predict_stores(stores, model_dir, tta_views=1, resume=True)
    assert list(resumed["store"]) == stores and list(resumed["resumed"]) == [True, False]
    assert list(resumed["n_spots"]) == [first["n_spots"][0]] * 2
    with pytest.raises(ValueError, match="already has predictions"):
        sthist.tl.predict_stores(stores, model_dir, tta_views=1)
    other = sthist.tl.fit({"toy0": sections["toy0"]}, **tiny_fit(method="ridge")).save(tmp_path / "other")
    with pytest.raises(ValueError, match="already has predictions"):  # another model's results are no resume
        sthist.tl.predict_stores(stores, other, tta_views=1, resume=True)


def test_a_read_only_data_folder_without_the_files_is_one_clear_line(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        # root writes anyway: read-only is simulated where sthist asks the operating system
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o555)
    monkeypatch.setattr(sthist.settings, "data_dir", folder)
    with pytest.raises(PermissionError, match="cannot be written .* set STHIST_DATA_DIR"):
        sthist.datasets.her2st(["A1"])
