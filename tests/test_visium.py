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


def test_a_store_written_by_spatialdata_io_predicts_as_it_is(visium, tmp_path, capsys):
    """No sthist attrs, coordinate systems named after the dataset: the shared one and the scale are found."""
    import warnings

    import spatialdata as sd
    from spatialdata_io import visium as read_visium

    from sthist.cli import main

    folder = visium.attrs["sthist"]["path"]
    raw = read_visium(folder, dataset_id="seurat")
    raw.write(tmp_path / "raw.zarr")
    store = sd.read_zarr(tmp_path / "raw.zarr")
    assert "global" not in store.coordinate_systems and "sthist" not in store.attrs
    sthist.settings.progress = False
    model = sthist.tl.fit(
        visium, backbone="tiny", patch_size_um=200, max_epochs=1, batch_size=32, k=5, training={"views": 1}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the lowres image is upsampled: out of domain
        sthist.tl.predict(store, model)
        expected, _ = sthist.tl.predict(visium, model, inplace=False)
    predicted = store.tables["table"].obsm["sthist_pred"]
    record = store.tables["table"].uns["sthist_pred"]["domain"]
    assert record["microns_per_pixel"] == pytest.approx(sthist.pp.get_microns_per_pixel(visium))
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), rtol=1e-5)
    model_dir = model.save(tmp_path / "model")
    assert main(["predict", str(tmp_path / "raw.zarr"), "--model", str(model_dir)]) == 0
    assert main(["qc", str(tmp_path / "raw.zarr"), "--patch-size-um", "200"]) == 0
    capsys.readouterr()


def test_the_finest_image_is_the_one_read_when_several_are_present(visium_dir, tmp_path):
    """Space Ranger writes a high- and a low-resolution PNG: patches come from the finer without image_key=."""
    from PIL import Image

    sthist.datasets.seurat_visium(folder=tmp_path / "outs")
    scalefactors = json.loads((tmp_path / "outs/spatial/scalefactors_json.json").read_text())
    lowres = Image.open(tmp_path / "outs/spatial/tissue_lowres_image.png")
    ratio = scalefactors["tissue_hires_scalef"] / scalefactors["tissue_lowres_scalef"]
    lowres.resize((round(lowres.width * ratio), round(lowres.height * ratio))).save(
        tmp_path / "outs/spatial/tissue_hires_image.png"
    )
    sdata = sthist.datasets.visium(tmp_path / "outs", dataset_id="seurat")
    assert sorted(sdata.images) == ["seurat_hires_image", "seurat_lowres_image"]
    assert sdata.attrs["sthist"]["image_key"] == "seurat_hires_image"
    geometry = sthist.pp.patch_geometry(sdata)  # no image_key: the recorded finest image
    assert geometry.level_microns_per_pixel[0] == pytest.approx(
        65 / scalefactors["spot_diameter_fullres"] / scalefactors["tissue_hires_scalef"], rel=1e-3
    )
    lowres_geometry = sthist.pp.patch_geometry(
        sdata, image_key="seurat_lowres_image"
    )  # naming one still wins
    assert lowres_geometry.level_microns_per_pixel[0] > 3 * geometry.level_microns_per_pixel[0]
    with pytest.raises(FileNotFoundError, match="fullres_image_file='nowhere.tif' is not a file"):
        sthist.datasets.visium(tmp_path / "outs", fullres_image_file="nowhere.tif")


def test_space_ranger_names_without_a_prefix_need_no_dataset_id(visium_dir, tmp_path):
    sthist.datasets.seurat_visium(folder=tmp_path / "outs")
    sdata = sthist.datasets.visium(tmp_path / "outs")  # spatialdata-io alone asks for dataset_id here
    assert (
        list(sdata.images) == ["visium_lowres_image"]
        and sdata.attrs["sthist"]["image_key"] == "visium_lowres_image"
    )
