"""Visium HD's Space Ranger layout read through spatialdata-io (small files written here in that exact layout)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from _tenx import write_10x_h5

import sthist

MICRONS_PER_PIXEL = 0.5
GENES = ["ERBB2", "KRT19", "ACTB", "CD74", "COL1A1"]


def _write_outs(root, *, bin_sizes=(8, 16), full_image=True, prefix=""):
    """A Visium HD ``outs`` folder: feature slice, binned counts and positions, scale factors, H&E."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    size = 1200  # px at 0.5 µm/px: a 600 µm square of tissue and glass
    image = np.full((size, size, 3), 235, dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    tissue = (xx > 200) & (xx < 1000) & (yy > 200) & (yy < 1000)
    stain = np.stack([150 + 60 * np.sin(xx / 90), 80 + 40 * np.cos(yy / 70), 170 + 0 * xx], axis=-1)
    image[tissue] = stain[tissue].astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / f"{prefix}feature_slice.h5", "w") as handle:
        layout = {"file_format": "1.0", "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
        handle.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps(layout)})
    if full_image:
        (root / "microscope_image").mkdir()
        tifffile.imwrite(root / "microscope_image" / "he.tif", image)
    for bin_um in bin_sizes:
        folder = root / "binned_outputs" / f"square_{bin_um:03d}um"
        (folder / "spatial").mkdir(parents=True)
        pitch = bin_um / MICRONS_PER_PIXEL
        rows, cols = np.mgrid[: int(size // pitch), : int(size // pitch)]
        x, y = (cols.ravel() + 0.5) * pitch, (rows.ravel() + 0.5) * pitch
        barcodes = [
            f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows.ravel(), cols.ravel(), strict=True)
        ]
        in_tissue = tissue[y.astype(int), x.astype(int)]
        positions = pd.DataFrame({
            "barcode": barcodes, "in_tissue": in_tissue.astype(np.int32), "array_row": rows.ravel(),
            "array_col": cols.ravel(), "pxl_row_in_fullres": y, "pxl_col_in_fullres": x,
        })  # fmt: skip
        positions.to_parquet(folder / "spatial" / "tissue_positions.parquet")
        scalefactors = {
            "spot_diameter_fullres": pitch, "bin_size_um": float(bin_um), "microns_per_pixel": MICRONS_PER_PIXEL,
            "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.05, "regist_target_img_scalef": 0.25,
        }  # fmt: skip
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
        Image.fromarray(image[::4, ::4]).save(folder / "spatial" / "tissue_hires_image.png")
        kept = np.flatnonzero(in_tissue)
        mean = 2 + 8 * stain[y[kept].astype(int), x[kept].astype(int), :1] / 255 * np.arange(
            1, len(GENES) + 1
        )
        counts = rng.poisson(mean * (bin_um / 8) ** 2).astype(np.int32)  # bins × genes
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, [barcodes[i] for i in kept], GENES)
    return image


def test_bins_become_the_spots_with_the_scale_of_the_run(tmp_path):
    image = _write_outs(tmp_path / "outs")
    sdata = sthist.datasets.visium_hd(tmp_path / "outs", bin_size=16)
    assert list(sdata.images) == ["he"] and list(sdata.shapes) == ["bins"] and list(sdata.tables) == ["table"]
    assert sdata.coordinate_systems == ["global"]
    assert sthist.pp.get_microns_per_pixel(sdata) == MICRONS_PER_PIXEL
    assert sdata.attrs["sthist"]["bin_size_um"] == 16
    table = sdata.tables["table"]
    assert list(table.var_names) == GENES and (table.obs["in_tissue"] == 1).all()
    # Each bin is a 16 µm square (32 px) centred on its Space Ranger position.
    bins = sdata.shapes["bins"].loc[table.obs["location_id"].to_numpy()]
    bounds = bins.geometry.bounds
    np.testing.assert_allclose(bounds["maxx"] - bounds["minx"], 16 / MICRONS_PER_PIXEL)
    centroids = np.c_[bins.geometry.centroid.x, bins.geometry.centroid.y]
    np.testing.assert_allclose(centroids, table.obsm["spatial"])
    # Patches are cut from the full-resolution pyramid at the bins' centres.
    assert sthist.pp.patch_geometry(sdata).level_microns_per_pixel[0] == pytest.approx(MICRONS_PER_PIXEL)
    dataset = sthist.data.SpotPatchDataset(sdata, patch_size_um=8, patch_size_px=16)  # 16 px at 0.5 µm/px
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        x, y = table.obsm["spatial"][table.obs_names.get_loc(dataset.spots.iloc[index]["obs_name"])].astype(
            int
        )
        np.testing.assert_array_equal(dataset.patch(index), image[y - 8 : y + 8, x - 8 : x + 8])


def test_a_model_trains_on_bins_and_predicts_at_bin_centres(tmp_path):
    _write_outs(tmp_path / "outs", bin_sizes=(16,))
    sdata = sthist.datasets.visium_hd(tmp_path / "outs", bin_size=16)
    model = sthist.tl.fit(
        sdata, method="ridge", backbone="tiny", pretrained=False, patch_size_um=48, random_state=0,
        data={"n_top_genes": None}, training={"views": 1}, architecture={"context_um": None},
    )  # fmt: skip
    sthist.tl.predict(sdata, model, tta_views=1)
    table = sdata.tables["table"]
    predicted = table.obsm["sthist_pred"]
    assert predicted.shape == (table.n_obs, len(GENES)) and np.isfinite(predicted.to_numpy()).all()
    assert list(predicted.index) == list(table.obs_names)


def test_files_with_a_dataset_prefix_are_read(tmp_path):
    _write_outs(tmp_path / "outs", bin_sizes=(8,), prefix="run1_")
    sdata = sthist.datasets.visium_hd(tmp_path / "outs", bin_size=8)
    assert sdata.coordinate_systems == ["global"] and sdata.tables["table"].n_obs > 0


def test_missing_bins_and_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        sthist.datasets.visium_hd(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="square_<size>um"):
        sthist.datasets.visium_hd(tmp_path / "empty")
    _write_outs(tmp_path / "outs", bin_sizes=(8,), full_image=False)
    with pytest.raises(ValueError, match=r"No 16 µm bins .* available bin sizes \(µm\): \[8\]"):
        sthist.datasets.visium_hd(tmp_path / "outs", bin_size=16)
    with pytest.warns(UserWarning, match="no full-resolution H&E"):
        sdata = sthist.datasets.visium_hd(tmp_path / "outs", bin_size=8)
    level = sthist.pp.patch_geometry(sdata).level_microns_per_pixel[0]
    assert level == pytest.approx(MICRONS_PER_PIXEL / 0.25)  # the hires PNG, placed by its scale factor
