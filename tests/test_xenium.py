"""Xenium's output layout with a post-run H&E and its alignment (small files written here in that exact layout)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _tenx import write_10x_h5

import sthist

PIXEL_SIZE = 0.2125  # µm per morphology pixel (Xenium's)
HE_MICRONS_PER_PIXEL = 0.5
GENES = ["ERBB2", "KRT19", "ACTB", "CD74"]
MARKED = [3, 40, 120]  # cells under a dark disc in the H&E


def _alignment() -> np.ndarray:
    """H&E pixels → morphology pixels: scale 0.5/0.2125, 5° rotation, a shift (as Xenium Explorer exports)."""
    s, theta = HE_MICRONS_PER_PIXEL / PIXEL_SIZE, np.deg2rad(5.0)
    return np.array([[s * np.cos(theta), -s * np.sin(theta), 200.0], [s * np.sin(theta), s * np.cos(theta), -80.0],
                     [0.0, 0.0, 1.0]])  # fmt: skip


def _write_outs(root, *, n_cells=200, with_he=True):
    import tifffile
    import zarr

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "experiment.xenium").write_text(
        json.dumps({"analysis_sw_version": "xenium-1.0.2", "pixel_size": PIXEL_SIZE})
    )
    store = zarr.storage.ZipStore(root / "cells.zarr.zip", mode="w")
    zarr.open_group(store, mode="w")
    store.close()
    ids = [f"cell{i:04d}-1" for i in range(n_cells)]
    xy_um = rng.uniform(150, 450, size=(n_cells, 2))  # centroids in µm
    pd.DataFrame({
        "cell_id": ids, "x_centroid": xy_um[:, 0], "y_centroid": xy_um[:, 1],
        "transcript_counts": 50, "control_probe_counts": 0, "control_codeword_counts": 0, "total_counts": 50,
        "cell_area": rng.uniform(40, 90, n_cells), "nucleus_area": 20.0,
    }).to_parquet(root / "cells.parquet")  # fmt: skip
    counts = rng.poisson(3 + 4 * np.arange(1, len(GENES) + 1), size=(n_cells, len(GENES)))
    write_10x_h5(root / "cell_feature_matrix.h5", counts, ids, GENES)
    # The H&E: pink tissue, dark discs on the marked cells (mapped from µm through the inverse alignment).
    he = np.full((1400, 1400, 3), (225, 170, 200), dtype=np.uint8)
    inverse = np.linalg.inv(_alignment())
    yy, xx = np.mgrid[:1400, :1400]
    for i in MARKED:
        hx, hy, _ = inverse @ np.r_[xy_um[i] / PIXEL_SIZE, 1.0]
        he[(xx - hx) ** 2 + (yy - hy) ** 2 < 8**2] = (40, 20, 60)  # 4 µm radius
    if with_he:
        tifffile.imwrite(root / "s1_he_image.ome.tif", he, photometric="rgb")
        pd.DataFrame(_alignment()).to_csv(root / "s1_he_imagealignment.csv", header=False, index=False)
    return xy_um


def test_cells_are_the_spots_and_the_he_sits_where_the_alignment_puts_it(tmp_path):
    xy_um = _write_outs(tmp_path / "outs")
    sdata = sthist.datasets.xenium(tmp_path / "outs")
    assert (
        list(sdata.images) == ["he"] and list(sdata.shapes) == ["cells"] and list(sdata.tables) == ["table"]
    )
    assert sthist.pp.get_microns_per_pixel(sdata) == pytest.approx(
        HE_MICRONS_PER_PIXEL
    )  # the H&E's own pixels
    table = sdata.tables["table"]
    assert list(table.var_names) == GENES and table.n_obs == len(xy_um)
    np.testing.assert_allclose(table.obsm["spatial"], xy_um)
    # A 4 µm patch at each marked cell is the dark disc; at the others, the pink tissue.
    dataset = sthist.data.SpotPatchDataset(sdata, patch_size_um=4, patch_size_px=8)
    darkness = {row["obs_name"]: dataset.patch(i).mean() for i, row in dataset.spots.iterrows()}
    marked = {table.obs_names[i] for i in MARKED}
    assert all(darkness[name] < 80 for name in marked)
    assert np.median([v for name, v in darkness.items() if name not in marked]) > 180


def test_a_model_trains_on_cells_and_predicts_at_cell_centres(tmp_path):
    _write_outs(tmp_path / "outs")
    he, alignment = tmp_path / "outs" / "s1_he_image.ome.tif", tmp_path / "outs" / "s1_he_imagealignment.csv"
    sdata = sthist.datasets.xenium(tmp_path / "outs", he_image=he, alignment_file=alignment)
    model = sthist.tl.fit(
        sdata, method="ridge", backbone="tiny", pretrained=False, patch_size_um=24, random_state=0,
        data={"n_top_genes": None}, training={"views": 1}, architecture={"context_um": None},
    )  # fmt: skip
    sthist.tl.predict(sdata, model, tta_views=1)
    predicted = sdata.tables["table"].obsm["sthist_pred"]
    assert predicted.shape == (sdata.tables["table"].n_obs, len(GENES))
    assert np.isfinite(predicted.to_numpy()).all()


def test_a_missing_he_or_scale_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment.xenium is missing"):
        sthist.datasets.xenium(tmp_path)
    _write_outs(tmp_path / "outs", with_he=False)
    with pytest.raises(FileNotFoundError, match="has no aligned H&E"):
        sthist.datasets.xenium(tmp_path / "outs")
    with pytest.raises(FileNotFoundError, match="he_image='nowhere.tif' is not a file"):
        sthist.datasets.xenium(tmp_path / "outs", he_image="nowhere.tif")
    with pytest.raises(ValueError, match="give both"):
        sthist.datasets.xenium(tmp_path / "outs", alignment_file=tmp_path / "outs" / "cells.parquet")
    stretched = _alignment() @ np.diag([1.0, 1.1, 1.0])  # 10 % taller pixels: not a similarity
    pd.DataFrame(stretched).to_csv(tmp_path / "stretched.csv", header=False, index=False)
    import tifffile

    tifffile.imwrite(tmp_path / "he.tif", np.full((64, 64, 3), 200, dtype=np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="square H&E pixels"):
        sthist.datasets.xenium(
            tmp_path / "outs", he_image=tmp_path / "he.tif", alignment_file=tmp_path / "stretched.csv"
        )
    (tmp_path / "outs" / "experiment.xenium").write_text(json.dumps({"analysis_sw_version": "xenium-1.0.2"}))
    with pytest.raises(ValueError, match="no positive 'pixel_size'"):
        sthist.datasets.xenium(tmp_path / "outs")
