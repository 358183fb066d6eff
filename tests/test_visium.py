"""Real 10x Visium output (Seurat's test data) read through spatialdata-io; patches at the right place."""

import gzip
import io
import json

import numpy as np
import pandas as pd
import pytest

import sthist

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def visium(visium_dir, tmp_path_factory):
    return sthist.datasets.seurat_visium(folder=tmp_path_factory.mktemp("visium"))


def test_reads_counts_spots_and_scale(visium, visium_dir):
    table = visium.tables["table"]
    assert table.shape == (2695, 100)
    scalefactors = json.loads((visium_dir / "spatial/scalefactors_json.json").read_text())
    assert sthist.pp.get_microns_per_pixel(visium) == pytest.approx(
        65 / scalefactors["spot_diameter_fullres"]
    )
    assert "global" in visium.coordinate_systems


def test_patches_are_cut_at_the_spots(visium, visium_dir):
    scalefactors = json.loads((visium_dir / "spatial/scalefactors_json.json").read_text())
    with gzip.open(visium_dir / "spatial/tissue_positions_list.csv.gz", "rb") as handle:
        positions = pd.read_csv(io.BytesIO(handle.read()), header=None, index_col=0)
    geometry = sthist.pp.patch_geometry(visium)
    # Spot centres in low-resolution pixels = full-resolution pixels × tissue_lowres_scalef.
    fullres_xy = positions.loc[geometry.obs_names, [5, 4]].to_numpy(dtype=float)
    np.testing.assert_allclose(geometry.centres, fullres_xy * scalefactors["tissue_lowres_scalef"], rtol=1e-5)
    level_mpp = geometry.level_microns_per_pixel[0]
    assert level_mpp == pytest.approx(
        65 / scalefactors["spot_diameter_fullres"] / scalefactors["tissue_lowres_scalef"]
    )
    # Patches: mean colour of each patch centre equals the image colour at the spot.
    sthist.pp.qc_spots(visium, min_tissue_fraction=0.0)
    dataset = sthist.data.SpotPatchDataset(
        visium, qc_column="sthist_pass_qc", patch_size_um=112, patch_size_px=32
    )
    assert len(dataset) > 2000
    image = np.asarray(visium.images["seurat_lowres_image"].transpose("y", "x", "c").data)
    for index in [0, 100, 1000]:
        row = dataset.spots.iloc[index]
        cx, cy = geometry.centres[list(geometry.obs_names).index(row["obs_name"])]
        centre = dataset.patch(index)[15:17, 15:17].reshape(-1, 3).mean(axis=0)
        expected = image[int(cy), int(cx)]
        assert np.abs(centre - expected).max() < 40
