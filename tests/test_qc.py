import numpy as np
import pytest

import sthist


def test_tissue_mask_separates_stain_from_glass_and_black():
    rgb = np.full((60, 90, 3), 240, dtype=np.uint8)  # glass
    rgb[:, 60:] = 0  # masked black background
    rgb[10:50, 10:50] = (200, 120, 180)  # stained tissue
    rgb[25:30, 25:30] = (245, 245, 245)  # a fat vacuole inside tissue
    mask = sthist.pp.tissue_mask(rgb)
    assert mask[12:48, 12:48].all()  # hole filled
    assert not mask[:, 55:].any() and not mask[:5].any()


def test_tissue_mask_keeps_pale_tissue_and_drops_grey_specks_on_glass():
    rng = np.random.default_rng(0)
    rgb = np.full((80, 120, 3), 235, dtype=np.uint8) + rng.integers(0, 3, (80, 120, 3)).astype(
        np.uint8
    )  # glass
    rgb[10:70, 10:50] = (180, 90, 160)  # stained tissue
    rgb[10:70, 50:90] = (215, 208, 213)  # pale tissue beside it: barely coloured, darker than the glass
    rgb[5:9, 100:104] = (200, 200, 200)  # a grey fiducial dot on the glass
    rgb[60:70, 100:110] = (205, 205, 205)  # a grey smudge, larger than the dot
    mask = sthist.pp.tissue_mask(rgb)
    assert mask[12:68, 12:88].mean() > 0.98  # stained and pale tissue
    assert not mask[:, 95:].any()  # fiducials and smudges on the glass are not tissue
    assert not mask[75:].any()


def test_qc_flags_spots_on_glass(toy):
    sdata = toy["toy0"]
    # Move two spots onto the glass margin (x < 100 µm carries no tissue).
    shapes = sdata.shapes["spots"]
    shapes.geometry = shapes.geometry.translate(xoff=0.0)
    from shapely.geometry import Point

    shapes.loc[0, "geometry"] = Point(60.0, 300.0)
    shapes.loc[1, "geometry"] = Point(60.0, 500.0)
    result = sthist.pp.qc_spots(sdata, patch_size_um=100, patch_size_px=32, inplace=False)
    assert "sthist_on_tissue" not in sdata.tables["table"].obs  # inplace=False leaves sdata as it was
    assert result["sthist_on_tissue"].tolist()[:2] == [False, False]
    assert result["sthist_on_tissue"].iloc[2:].all()
    assert result["sthist_in_image"].all()
    assert result["sthist_tissue_fraction"].iloc[2:].min() > 0.9

    sthist.pp.qc_spots(sdata, patch_size_um=100, patch_size_px=32)
    obs = sdata.tables["table"].obs
    assert obs["sthist_pass_qc"].sum() == len(obs) - 2
    assert sdata.tables["table"].uns["sthist_qc"]["patch_size_um"] == 100
    with pytest.raises(ValueError, match="already has QC columns.*overwrite=True"):
        sthist.pp.qc_spots(sdata)
    sthist.pp.qc_spots(sdata, patch_size_um=100, patch_size_px=32, min_tissue_fraction=0.0, overwrite=True)
    assert sdata.tables["table"].obs["sthist_pass_qc"].all()


def test_qc_input_errors(toy):
    with pytest.raises(ValueError, match="min_tissue_fraction"):
        sthist.pp.qc_spots(toy["toy0"], min_tissue_fraction=2)
