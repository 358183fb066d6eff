"""Predictions handed to scanpy: an AnnData with spatial coordinates and the H&E, ready for its tools and plots."""

import numpy as np
import pandas as pd
import pytest

import sthist


@pytest.fixture(scope="module")
def predicted():
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=8, n_genes=10, random_state=1)
    model = sthist.tl.fit(
        {"toy0": sections["toy0"]}, backbone="tiny", max_epochs=2, batch_size=16, k=5, training={"views": 1}
    )
    sdata = sections["toy1"]
    table = sdata.tables["table"]
    table.obs["keep"] = np.arange(table.n_obs) % 5 != 0
    sthist.tl.predict(sdata, model, qc_column="keep")
    return sdata, model


def test_to_anndata_holds_predictions_positions_and_provenance(predicted):
    sdata, model = predicted
    table = sdata.tables["table"]
    adata = sthist.tl.to_anndata(sdata)
    keep = table.obs["keep"].to_numpy()
    assert adata.n_obs == keep.sum() and list(adata.var_names) == model.genes
    np.testing.assert_allclose(adata.X, table.obsm["sthist_pred"].to_numpy()[keep])
    np.testing.assert_allclose(
        adata.layers["uncertainty"], table.obsm["sthist_pred_uncertainty"].to_numpy()[keep]
    )
    centres = (
        sdata.shapes["spots"].geometry.get_coordinates().to_numpy()[table.obs["spot_id"].to_numpy()[keep]]
    )
    np.testing.assert_allclose(adata.obsm["spatial"], centres)
    assert adata.uns["sthist_pred"]["method"] == "cmrcnet"
    assert "sthist_pred" not in adata.obsm and "keep" in adata.obs  # a new object; sdata unchanged
    with pytest.raises(KeyError, match="run `sthist.tl.predict"):
        sthist.tl.to_anndata(sdata, key="absent")


def test_scanpy_clusters_and_plots_the_predictions(predicted, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    sdata, model = predicted
    adata = sthist.tl.to_anndata(sdata)
    sc.pp.pca(adata, n_comps=5)
    sc.pp.neighbors(adata, n_neighbors=8)
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(adata.obsm["X_pca"], 3, seed=0, minit="++")
    adata.obs["cluster"] = labels.astype(str)
    library = sdata.attrs["sthist"]["section"]
    spatial = adata.uns["spatial"][library]
    assert spatial["images"]["lowres"].ndim == 3 and spatial["scalefactors"]["tissue_lowres_scalef"] > 0
    axes = sc.pl.spatial(adata, color=[model.genes[0], "cluster"], library_id=library, show=False)
    figure = axes[0].figure
    figure.savefig(tmp_path / "spatial.png")
    assert (tmp_path / "spatial.png").stat().st_size > 10_000
    # The spots land on the image where the section places them (scale factor applied).
    height, width = spatial["images"]["lowres"].shape[:2]
    scaled = adata.obsm["spatial"] * spatial["scalefactors"]["tissue_lowres_scalef"]
    assert (scaled[:, 0] < width).all() and (scaled[:, 1] < height).all()


def test_expression_plot_of_an_unmeasured_section(predicted):
    """An H&E-only section (a table without genes) gets its predictions drawn alone, by default."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    sdata, model = predicted
    table = sdata.tables["table"]
    bare = ad.AnnData(obs=table.obs.copy())
    bare.obsm["sthist_pred"] = table.obsm["sthist_pred"]
    bare = TableModel.parse(bare, region="spots", region_key="region", instance_key="spot_id")
    unmeasured = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": bare})
    figure = sthist.pl.expression(unmeasured, model.genes[:2])
    assert [ax.get_title() for ax in figure.axes[:2]] == [f"{g}: predicted" for g in model.genes[:2]]


def test_expression_plot_takes_colour_limits(predicted):
    import matplotlib

    matplotlib.use("Agg")
    sdata, model = predicted
    sthist.pp.normalize(sdata.tables["table"], overwrite=True)
    figure = sthist.pl.expression(sdata, model.genes[:1], vmin=0.0, vmax=9.0)
    spots = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert all(ax.collections[0].get_clim() == (0.0, 9.0) for ax in spots)


def test_to_anndata_draws_stretched_pixels_with_true_aspect(caplog):
    """Non-square pixels: the image kept for scanpy is resampled to one scale, so spots land where they are."""
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    image = (rng.random((400, 600, 3)) * 100 + 80).astype(np.uint8)
    ys, xs = np.meshgrid(np.arange(100, 300, 50.0), np.arange(100, 500, 50.0), indexing="ij")
    xy = np.c_[xs.ravel(), ys.ravel()]
    counts = rng.poisson(3, (len(xy), 4))
    sdata = sthist.datasets.from_arrays(
        counts, xy, image, microns_per_pixel=(0.5, 0.45), spot_diameter_um=20,
        gene_names=["A", "B", "C", "D"], section="stretched",
    )  # fmt: skip
    table = sdata.tables["table"]
    table.obsm["sthist_pred"] = pd.DataFrame(
        rng.random((table.n_obs, 4)), index=table.obs_names, columns=["A", "B", "C", "D"]
    )
    adata = sthist.tl.to_anndata(sdata, max_image_pixels=600)
    spatial = adata.uns["spatial"]["stretched"]
    lowres, factor = spatial["images"]["lowres"], spatial["scalefactors"]["tissue_lowres_scalef"]
    # 600 px × 0.5 µm = 300 µm wide, 400 px × 0.45 µm = 180 µm high: the kept image has that aspect.
    assert lowres.shape[1] / lowres.shape[0] == pytest.approx(300 / 180, rel=0.01)
    # A spot's centre in µm times the factor is its pixel in the kept image (x and y alike).
    expected = xy * np.array([0.5, 0.45]) * factor  # µm → kept pixels
    np.testing.assert_allclose(adata.obsm["spatial"] * factor, expected, rtol=1e-6)
    assert (expected[:, 0] < lowres.shape[1]).all() and (expected[:, 1] < lowres.shape[0]).all()
    # Pixel (x, y) of the source maps to the kept image at the same place: compare a bright marker.
    marked = image.copy()
    marked[200:210, 300:310] = 255
    sdata_marked = sthist.datasets.from_arrays(
        counts, xy, marked, microns_per_pixel=(0.5, 0.45), spot_diameter_um=20,
        gene_names=["A", "B", "C", "D"], section="marked",
    )  # fmt: skip
    sdata_marked.tables["table"].obsm["sthist_pred"] = table.obsm["sthist_pred"]
    kept = sthist.tl.to_anndata(sdata_marked, max_image_pixels=600).uns["spatial"]["marked"]
    bright = np.argwhere(kept["images"]["lowres"].min(axis=2) > 0.98).mean(axis=0)  # (row, col)
    f = kept["scalefactors"]["tissue_lowres_scalef"]
    np.testing.assert_allclose(bright, [205 * 0.45 * f, 305 * 0.5 * f], atol=2)


def test_to_anndata_warns_when_the_image_is_offset(predicted, caplog):
    from spatialdata.transformations import Sequence, Translation, get_transformation, set_transformation

    sdata, _ = predicted
    image_key = next(iter(sdata.images))
    original = get_transformation(sdata.images[image_key], "global")
    try:
        shifted = Sequence([original, Translation([-30.0, -20.0], axes=("x", "y"))])  # image offset
        set_transformation(sdata.images[image_key], shifted, "global")
        with caplog.at_level("WARNING", logger="sthist"):
            adata = sthist.tl.to_anndata(sdata)
    finally:
        set_transformation(sdata.images[image_key], original, "global")
    assert "spatial" not in adata.uns and "uns['spatial'] is left out" in caplog.text


def test_spatialdata_plot_draws_the_predictions(predicted, tmp_path):
    """spatialdata-plot renders predicted expression on the H&E from the view to_spatialdata returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spatialdata_plot = pytest.importorskip("spatialdata_plot")
    sdata, model = predicted
    tables_before = set(sdata.tables)
    view = sthist.tl.to_spatialdata(sdata)
    assert set(sdata.tables) == tables_before  # the user's object is unchanged
    table = view.tables["predictions"]
    keep = sdata.tables["table"].obs["keep"].to_numpy()
    np.testing.assert_allclose(table.X, sdata.tables["table"].obsm["sthist_pred"].to_numpy()[keep])
    assert table.uns["spatialdata_attrs"]["region"] == "spots"
    gene = model.genes[0]
    figure, ax = plt.subplots(figsize=(4, 4))
    view.pl.render_images().pl.render_shapes(color=gene, table_name="predictions").pl.show(ax=ax)
    # The spots are drawn in the colours of their predicted values: as many distinct colours as values.
    collections = [c for c in ax.collections if len(c.get_facecolors()) == table.n_obs]
    assert collections, "no collection with one face per predicted spot"
    colours = collections[0].get_facecolors()
    order = np.argsort(table[:, gene].X.ravel())
    assert not np.allclose(colours[order[0]], colours[order[-1]])  # lowest and highest differ
    figure.savefig(tmp_path / "spatialdata_plot.png")
    assert (tmp_path / "spatialdata_plot.png").stat().st_size > 5_000
    assert spatialdata_plot.__version__
    plt.close(figure)
