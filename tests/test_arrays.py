"""Sections built from plain arrays: a round trip against the HER2ST loader, non-square pixels, errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sthist


@pytest.mark.realdata
def test_from_arrays_reproduces_the_her2st_loader(her2st_images):
    from sthist._core._section import Section
    from sthist.data import SpotPatchDataset

    loaded = her2st_images["C5"]
    table = loaded.tables["table"]
    section = Section.resolve(loaded)
    rgb = np.asarray(loaded.images["he"]["scale0"]["image"].transpose("y", "x", "c").data)
    scale = sthist.pp.get_microns_per_pixel(loaded)
    built = sthist.datasets.from_arrays(
        pd.DataFrame(table.X.toarray(), index=table.obs_names, columns=table.var_names),
        section.centres,
        rgb,
        microns_per_pixel=scale,
        spot_diameter_um=100,
        obs=table.obs[["label"]] if "label" in table.obs else None,
        section="C5",
    )
    again = built.tables["table"]
    assert list(again.obs_names) == list(table.obs_names) and list(again.var_names) == list(table.var_names)
    np.testing.assert_array_equal(again.X.toarray(), table.X.toarray())
    assert sthist.pp.get_microns_per_pixel(built) == scale
    np.testing.assert_allclose(Section.resolve(built).centres, section.centres)
    np.testing.assert_allclose(Section.resolve(built).radii, section.radii)
    first = SpotPatchDataset(loaded, patch_size_um=112, patch_size_px=64)
    second = SpotPatchDataset(built, patch_size_um=112, patch_size_px=64)
    for index in (0, len(first) // 2, len(first) - 1):
        np.testing.assert_array_equal(first.patch(index), second.patch(index))


def _marked(scale_x: float, scale_y: float, centres_um):
    """White image with a red 56 µm square centred on each spot, drawn at (scale_x, scale_y) µm per pixel."""
    width, height = int(600 / scale_x), int(600 / scale_y)
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    xs = (np.arange(width) + 0.5) * scale_x
    ys = (np.arange(height) + 0.5) * scale_y
    for cx, cy in centres_um:
        inside = (np.abs(ys[:, None] - cy) <= 28) & (np.abs(xs[None, :] - cx) <= 28)
        rgb[inside] = (255, 0, 0)
    return rgb


def test_non_square_pixels_give_square_patches_of_tissue():
    from sthist.data import SpotPatchDataset

    centres_um = np.array([[200.0, 250.0], [400.0, 350.0]])
    scale = (0.5, 0.45)  # 11 % stretched in y, as legacy ST scans often are
    rgb = _marked(*scale, centres_um)
    xy_px = centres_um / scale
    sdata = sthist.datasets.from_arrays(
        np.ones((2, 3), dtype=int), xy_px, rgb, microns_per_pixel=scale, spot_diameter_um=100
    )
    assert sthist.pp.get_microns_per_pixel(sdata) == 1.0  # the coordinate system is in µm
    dataset = SpotPatchDataset(sdata, patch_size_um=112, patch_size_px=64)
    for index in range(2):
        red = (dataset.patch(index)[..., 1] < 128).astype(float)
        rows, cols = np.nonzero(red)
        # The 56 µm square fills the centre half of the 112 µm patch in both directions.
        assert red.mean() == pytest.approx(0.25, abs=0.03)
        assert (rows.max() - rows.min()) == pytest.approx(cols.max() - cols.min(), abs=2)
        assert rows.mean() == pytest.approx(31.5, abs=1.0) and cols.mean() == pytest.approx(31.5, abs=1.0)


def test_from_anndata_keeps_obs_and_names():
    adata = ad.AnnData(
        np.array([[3, 0], [1, 5], [2, 2]], dtype=np.float32),
        obs=pd.DataFrame({"label": ["a", "b", "a"]}, index=["x", "y", "z"]),
    )
    adata.var_names = ["G1", "G2"]
    adata.obsm["spatial"] = np.array([[50.0, 60.0], [120.0, 90.0], [150.0, 150.0]])
    image = np.full((200, 200, 3), 230, dtype=np.uint8)
    sdata = sthist.datasets.from_anndata(
        adata, image, microns_per_pixel=2.0, spot_diameter_um=55, section="s1"
    )
    table = sdata.tables["table"]
    assert list(table.obs_names) == ["x", "y", "z"] and list(table.obs["label"]) == ["a", "b", "a"]
    assert sdata.attrs["sthist"]["section"] == "s1"
    np.testing.assert_allclose(table.obsm["spatial"], adata.obsm["spatial"])
    with pytest.raises(KeyError, match="no 'xy' with spot centres"):
        sthist.datasets.from_anndata(
            adata, image, microns_per_pixel=2.0, spot_diameter_um=55, spatial_key="xy"
        )


def test_from_arrays_refuses_inconsistent_input():
    image = np.full((100, 100, 3), 230, dtype=np.uint8)
    counts = np.ones((2, 2), dtype=int)
    xy = np.array([[10.0, 10.0], [50.0, 50.0]])
    options = {"microns_per_pixel": 1.0, "spot_diameter_um": 55}
    with pytest.raises(ValueError, match="one \\(x, y\\) row per spot"):
        sthist.datasets.from_arrays(counts, xy[:1], image, **options)
    with pytest.raises(ValueError, match="uint8"):
        sthist.datasets.from_arrays(counts, xy, image.astype(float), **options)
    with pytest.raises(ValueError, match="No spot lies inside"):
        sthist.datasets.from_arrays(counts, xy + 1000, image, **options)
    with pytest.raises(ValueError, match="raw counts"):
        sthist.datasets.from_arrays(counts * 0.5, xy, image, **options)
    with pytest.raises(ValueError, match="gene_names must name the 2 columns"):
        sthist.datasets.from_arrays(counts, xy, image, gene_names=["A"], **options)
    with pytest.raises(ValueError, match="µm per pixel"):
        sthist.datasets.from_arrays(counts, xy, image, microns_per_pixel=(1.0, 0), spot_diameter_um=55)


@pytest.mark.parametrize("function", [sthist.datasets.from_arrays, sthist.datasets.from_anndata])
def test_constructor_examples_run(function):
    import doctest

    for test in doctest.DocTestFinder().find(function, function.__name__, globs={}):
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test, out=lambda text: pytest.fail(text))
        assert runner.failures == 0 and test.examples
