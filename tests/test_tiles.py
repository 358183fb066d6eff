"""Dense prediction over a synthetic slide with known tissue regions; atomic writes into a zarr store."""

import os

import numpy as np
import pandas as pd
import pytest

import sthist


def _slide(image_scale: float = 1.0):
    """A 1,600 µm square slide at 1 µm/px: glass everywhere but tissue in x 300-1,100, y 400-1,000 µm."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    size = int(1600 / image_scale)
    rng = np.random.default_rng(0)
    rgb = np.full((size, size, 3), 242, dtype=np.uint8)
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) * image_scale
    tissue = (xs >= 300) & (xs < 1100) & (ys >= 400) & (ys < 1000)
    texture = rng.integers(0, 60, size=(size, size))
    rgb[tissue] = np.stack([200 - texture, 110 + texture // 2, 180 - texture // 3], axis=-1)[tissue]
    transformation = Identity() if image_scale == 1 else Scale([image_scale, image_scale], axes=("y", "x"))
    image = Image2DModel.parse(
        rgb.transpose(2, 0, 1),
        dims=("c", "y", "x"),
        scale_factors=[2, 2, 2],
        transformations={"global": transformation},
    )
    sdata = SpatialData(images={"he": image})
    sthist.pp.set_microns_per_pixel(sdata, 1.0)
    return sdata


@pytest.fixture(scope="module")
def model():
    sthist.settings.progress = False
    toy = sthist.datasets.toy(1, grid=8, n_genes=6, random_state=0)
    return sthist.tl.fit(toy, backbone="tiny", max_epochs=2, batch_size=16, k=5, training={"views": 1})


@pytest.mark.parametrize("image_scale", [1.0, 2.0])
def test_tiles_only_on_tissue_and_centres_map_back(model, image_scale):
    sdata = _slide(image_scale)
    sthist.tl.predict_tiles(sdata, model, stride_um=56, chunk_tiles=7)
    table = sdata.tables["sthist_tiles_table"]
    shapes = sdata.shapes["sthist_tiles"]
    assert table.uns["spatialdata_attrs"]["region"] == "sthist_tiles"
    np.testing.assert_array_equal(np.sort(table.obs["spot_id"]), np.sort(shapes.index))
    centres = table.obsm["spatial"]
    # Tiles are squares (drawn as tiles by spatialdata-plot) whose centroids are the centres.
    assert set(shapes.geometry.geom_type) == {"Polygon"}
    centroids = shapes.geometry.centroid.get_coordinates().to_numpy()
    np.testing.assert_allclose(centres, centroids[table.obs["spot_id"]])
    np.testing.assert_allclose(shapes.geometry.area, 56.0**2)
    # Every tile's centre lies in (or within half a tile of) the tissue rectangle; the rectangle is covered.
    assert (centres[:, 0] > 300 - 28).all() and (centres[:, 0] < 1100 + 28).all()
    assert (centres[:, 1] > 400 - 28).all() and (centres[:, 1] < 1000 + 28).all()
    expected = ((1100 - 300) / 56) * ((1000 - 400) / 56)
    assert 0.8 * expected < len(table) < 1.3 * expected
    # Tile centres map back to tissue pixels of the image as placed (scale transformation respected).
    level = sdata.images["he"]["scale0"]["image"]
    pixels = np.floor(centres / image_scale).astype(int)
    colours = np.asarray(level.data)[:, pixels[:, 1], pixels[:, 0]].T
    assert (colours.max(axis=1) - colours.min(axis=1) > 20).mean() > 0.9  # stained, not glass
    assert table.X.shape == (len(table), 6) and np.isfinite(table.X).all()
    assert (table.layers["uncertainty"] >= 0).all()
    # Ready for scanpy.
    import scanpy as sc

    sc.pp.pca(table, n_comps=3)
    assert table.obsm["X_pca"].shape == (len(table), 3)


def test_refuses_to_overwrite_and_needs_tissue(model):
    sdata = _slide()
    sthist.tl.predict_tiles(sdata, model)
    first = sdata.tables["sthist_tiles_table"].X.copy()
    with pytest.raises(ValueError, match="exist already; pass overwrite=True"):
        sthist.tl.predict_tiles(sdata, model, stride_um=80)
    np.testing.assert_array_equal(sdata.tables["sthist_tiles_table"].X, first)
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    glass = SpatialData(
        images={"he": Image2DModel.parse(np.full((3, 400, 400), 242, dtype=np.uint8), dims=("c", "y", "x"))}
    )
    sthist.pp.set_microns_per_pixel(glass, 1.0)
    with pytest.raises(ValueError, match="No tile lies on tissue"):
        sthist.tl.predict_tiles(glass, model)
    with pytest.raises(ValueError, match="physical scale"):
        sthist.tl.predict_tiles(SpatialData(images=dict(glass.images)), model)


def _listing(root):
    """Files of a store, without the writer lock (which stays once a writer has taken it)."""
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
        if f != ".sthist.lock"
    )


def test_store_writes_are_atomic(model, tmp_path, monkeypatch):
    import spatialdata as sd

    sdata = _slide()
    store = tmp_path / "slide.zarr"
    sdata.write(store)
    backed = sd.read_zarr(store)
    before = _listing(store)
    before_bytes = (store / "zarr.json").read_bytes()

    # Interrupt the write half-way (after staging began): the store must be exactly as it was.
    from spatialdata import SpatialData

    original = SpatialData.write

    def failing(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        raise KeyboardInterrupt("interrupted while writing")

    monkeypatch.setattr(SpatialData, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        sthist.tl.predict_tiles(backed, model)
    monkeypatch.setattr(SpatialData, "write", original)
    assert _listing(store) == before and (store / "zarr.json").read_bytes() == before_bytes
    assert not any(p.name.startswith(".slide.zarr.sthist") for p in tmp_path.iterdir())

    # A complete run adds the two elements and keeps everything else.
    del backed.tables["sthist_tiles_table"], backed.shapes["sthist_tiles"]
    sthist.tl.predict_tiles(backed, model)
    again = sd.read_zarr(store)
    assert "sthist_tiles_table" in again.tables and "sthist_tiles" in again.shapes and "he" in again.images
    np.testing.assert_allclose(again.tables["sthist_tiles_table"].X, backed.tables["sthist_tiles_table"].X)
    assert set(before) <= set(_listing(store))


def test_gene_reliability_flags_genes_in_outputs(tmp_path):
    sthist.settings.progress = False
    sections = sthist.datasets.toy(3, grid=6, n_genes=8, random_state=4)
    options = {"backbone": "tiny", "max_epochs": 2, "batch_size": 16, "k": 5, "training": {"views": 1}}
    model = sthist.tl.fit(sections, **options)
    reliability = sthist.tl.gene_reliability(sections, model, groups="section", threshold=0.3)
    assert list(reliability.index) == model.genes
    # By definition: each gene's Pearson r on the held-out section, averaged over the three folds.
    from sthist._core._metrics import gene_pearson
    from sthist.tl._cross_validate import observed_expression

    folds = []
    for held_out in sections:
        fold = sthist.tl.fit(
            {k: v for k, v in sections.items() if k != held_out}, genes=model.genes, **options
        )
        predicted, _ = sthist.tl.predict(sections[held_out], fold, inplace=False)
        folds.append(gene_pearson(observed_expression(sections[held_out], model.genes, 1e4), predicted))
    np.testing.assert_allclose(
        reliability.to_numpy(), pd.concat(folds, axis=1).mean(axis=1).to_numpy(), rtol=1e-6
    )
    assert set(model.unreliable_genes) == {g for g in model.genes if not reliability[g] >= 0.3}
    # Flags travel with the saved model into spot and tile predictions.
    loaded = sthist.models.load(model.save(tmp_path / "m"))
    assert loaded.unreliable_genes == model.unreliable_genes
    target = sections["toy2"]
    sthist.tl.predict(target, loaded, key_added="flagged")
    assert target.tables["table"].uns["flagged"]["unreliable_genes"] == model.unreliable_genes
    slide = _slide()
    sthist.tl.predict_tiles(slide, loaded)
    var = slide.tables["sthist_tiles_table"].var
    np.testing.assert_allclose(var["reliability"], reliability[model.genes].to_numpy())
    assert var.index[var["unreliable"]].tolist() == model.unreliable_genes


def test_bounds_keep_tiles_inside_a_rectangle():
    sdata = _slide()
    everything = sthist.tl.tile_grid(sdata, tile_size_um=56, stride_um=56)
    bounded = sthist.tl.tile_grid(sdata, tile_size_um=56, stride_um=56, bounds=(300, 400, 700, 700))
    assert 0 < len(bounded) < len(everything)
    assert bounded["x"].between(300, 700).all() and bounded["y"].between(400, 700).all()
    inside = everything["x"].between(300, 700) & everything["y"].between(400, 700)
    assert len(bounded) == int(inside.sum())
    with pytest.raises(ValueError, match="x_min < x_max"):
        sthist.tl.tile_grid(sdata, tile_size_um=56, stride_um=56, bounds=(700, 400, 300, 700))


def test_tiles_plot_maps_values_to_tiles(model, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sdata = _slide()
    sthist.tl.predict_tiles(sdata, model, stride_um=56)
    table = sdata.tables["sthist_tiles_table"]
    genes = list(table.var_names[:2])
    figure = sthist.pl.tiles(sdata, genes, save=tmp_path / "tiles.png")
    assert (tmp_path / "tiles.png").stat().st_size > 10_000
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert (
        len(panels) == 4 and len(figure.axes) == 8
    )  # prediction and uncertainty per gene, each a colour bar
    underlay, raster = panels[0].images  # the H&E, then the tile values
    assert underlay.get_array().shape[-1] == 3
    # Each tile's value sits in the raster cell under its centre (full-resolution level: 1 px = 1 µm).
    values = raster.get_array()
    x0, x1, _, y0 = raster.get_extent()
    step = (x1 - x0) / values.shape[1]
    centres = table.obsm["spatial"]
    scale = 1 / np.mean(sdata.images["he"]["scale0"]["image"].shape[1:]) * underlay.get_array().shape[0]
    column = ((centres[:, 0] * scale - x0) // step).astype(int)
    row = ((centres[:, 1] * scale - y0) // step).astype(int)
    np.testing.assert_allclose(values[row, column], np.asarray(table.X[:, 0]), rtol=1e-6)
    assert values.mask.sum() == values.size - len(table)  # no tile: transparent
    assert "uncertainty" in panels[1].get_title()
    with pytest.raises(KeyError, match="run `sthist.tl.predict_tiles"):
        sthist.pl.tiles(sdata, genes, key="elsewhere")
    with pytest.raises(KeyError, match="not among the tile predictions"):
        sthist.pl.tiles(sdata, ["NOPE"])


def test_sections_with_tile_predictions_still_fit_predict_and_evaluate(model):
    """After predict_tiles a section holds two tables; the spots' table is found without table_key."""
    sections = sthist.datasets.toy(2, grid=6, n_genes=6, random_state=0)
    sdata = sections["toy1"]
    sthist.tl.predict_tiles(sdata, model, stride_um=224)
    assert len(sdata.tables) == 2
    sthist.tl.predict(sdata, model)
    sthist.pp.normalize(sdata.tables["table"])
    sthist.tl.evaluate(sdata)
    refit = sthist.tl.fit(sections, backbone="tiny", max_epochs=1, batch_size=16, k=5, training={"views": 1})
    assert refit.config.training_sections == {"toy0": 36, "toy1": 36}


def test_square_bins_are_spots_too(model):
    """Polygons (Visium HD bins, tiles) are spots: their centroid is the centre, the equal-area disc the size."""
    import geopandas as gpd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    from sthist._core._section import Section
    from sthist.tl._tiles import _squares

    sdata = sthist.datasets.toy(1, grid=6, n_genes=6, random_state=0)["toy0"]
    circles = sdata.shapes["spots"]
    xy = circles.geometry.get_coordinates().to_numpy()
    bins = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=_squares(xy[:, 0], xy[:, 1], 16.0), index=circles.index),
        transformations={"global": Identity()},
    )
    expected = Section.resolve(sdata).centres
    sdata.shapes["spots"] = bins
    section = Section.resolve(sdata)
    np.testing.assert_allclose(section.centres, expected)
    np.testing.assert_allclose(section.radii, 16.0 / np.sqrt(np.pi))
    sthist.tl.predict(sdata, model)
    assert sdata.tables["table"].obsm["sthist_pred"].notna().all().all()
