"""The real HER2ST data (../shared/data/her2st): counts, geometry, physical scale, labels, errors."""

import gzip

import numpy as np
import pandas as pd
import pytest

import sthist

pytestmark = pytest.mark.realdata
IMAGE_SECTIONS = ["A1", "A2", "B4", "C2", "C3", "C4", "C5", "C6"]


def test_sections_and_spot_counts_match_the_source(her2st_images, her2st_dir):
    assert list(her2st_images) == IMAGE_SECTIONS
    assert sum(s.tables["table"].n_obs for s in her2st_images.values()) == 1864
    # Counts of one section equal the source file's, spot by spot and gene by gene.
    table = her2st_images["B4"].tables["table"]
    with gzip.open(her2st_dir / "data/ST-cnts/B4.tsv.gz", "rt") as handle:
        source = pd.read_csv(handle, sep="\t", index_col=0)
    assert table.n_vars == source.shape[1]
    rows = [name.removeprefix("B4_") for name in table.obs_names]
    np.testing.assert_array_equal(table.X.toarray(), source.loc[rows, table.var_names].to_numpy())
    assert table.X.dtype == np.int32
    assert table.obs["patient"].unique().tolist() == ["B"]
    assert {"section", "patient", "array_x", "array_y"} <= set(table.obs.columns)


def test_physical_scale_is_fitted_and_consistent(her2st_images):
    full_resolution = [
        her2st_images[s].attrs["sthist"]["microns_per_pixel"]["global"] for s in IMAGE_SECTIONS[2:]
    ]
    assert max(full_resolution) / min(full_resolution) < 1.03
    assert 0.6 < np.mean(full_resolution) < 0.8
    source = her2st_images["C2"].attrs["sthist"]["microns_per_pixel_source"]["global"]
    assert "least-squares fit" in source
    # Spot radius is 50 µm in pixels of 'global'.
    shapes = her2st_images["C2"].shapes["spots"]
    assert shapes["radius"].iloc[0] * full_resolution[1] == pytest.approx(50.0)


def test_downsampled_images_are_placed_by_a_scale_transformation(her2st_images):
    from spatialdata.transformations import get_transformation

    sdata = her2st_images["A1"]
    transformation = get_transformation(sdata.images["he"], to_coordinate_system="global")
    matrix = transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    assert matrix[0, 0] == pytest.approx(6954 / 2000)
    # The spot coordinates are kept as recorded (full-resolution pixels), not rewritten.
    centres = sdata.shapes["spots"].geometry
    assert centres.x.max() > 2000
    # And spots fall on the tissue of the downsampled image.
    assert sdata.attrs["sthist"]["fraction_spots_on_tissue"] > 0.9


def test_registration_check_flags_a2(her2st_images):
    assert her2st_images["A2"].attrs["sthist"]["fraction_spots_on_tissue"] < 0.9
    for section in ["A1", "B4", "C2", "C3", "C4", "C5", "C6"]:
        assert her2st_images[section].attrs["sthist"]["fraction_spots_on_tissue"] > 0.9, section


def test_patches_cover_the_same_area_across_resolutions(her2st_images):
    # A1 (3.19 µm/px PNG) and C2 (0.69 µm/px JPEG): the same 112 µm.
    for section in ["A1", "C2"]:
        geometry = sthist.pp.patch_geometry(her2st_images[section])
        crop_um = np.asarray(geometry.crop_size) * np.asarray(geometry.level_microns_per_pixel)
        np.testing.assert_allclose(crop_um, 112.0)
        assert geometry.inside.all()
    assert sthist.pp.patch_geometry(her2st_images["A1"]).level_microns_per_pixel[0] == pytest.approx(
        3.19, abs=0.01
    )


def test_real_patches_and_expression(her2st_images):
    sections = {s: her2st_images[s] for s in ["A1", "C2"]}
    for sdata in sections.values():
        table = sdata.tables["table"]
        if "sthist_log1p" not in table.layers:
            sthist.pp.normalize(table)
    genes = sthist.pp.select_genes(sections, n_top=50)
    assert "ERBB2" in sthist.pp.select_genes(sections, genes=["ERBB2", "GRB7"])
    dataset = sthist.data.SpotPatchDataset(sections, genes=genes)
    assert len(dataset) == 346 + 187
    item = dataset[400]
    assert item["image"].shape == (3, 224, 224) and item["expression"].shape == (50,)
    # Patches over tissue are stained (not black background or glass).
    patch = dataset.patch(0).astype(float)
    assert 40 < patch.mean() < 235 and patch.std() > 10


def test_labels_of_a1(her2st_images):
    labels = her2st_images["A1"].tables["table"].obs["label"]
    assert labels.notna().sum() >= 340
    assert labels.value_counts()["invasive cancer"] > 250
    assert "label" not in her2st_images["C2"].tables["table"].obs


def test_expression_only_sections(her2st_dir):
    with pytest.raises(ValueError, match=r"\['B1'\] have no H&E image.*require_image=False"):
        sthist.datasets.her2st(["B1"])
    sections = sthist.datasets.her2st(["B1", "A1"], require_image=False)
    assert len(sections["B1"].images) == 0 and len(sections["A1"].images) == 1
    table = sections["B1"].tables["table"]
    assert table.n_obs == 295 and table.obs["label"].notna().sum() > 250
    with pytest.raises(ValueError, match="has no image"):
        sthist.pp.patch_geometry(sections["B1"])


def test_unknown_section(her2st_dir):
    with pytest.raises(KeyError, match=r"Unknown HER2ST sections \['Z9'\]"):
        sthist.datasets.her2st(["Z9"])


def test_marker_list_is_in_the_data(her2st_images):
    genes = her2st_images["C2"].tables["table"].var_names
    assert set(sthist.datasets.her2st_marker_genes) <= set(genes)
