"""Plot on tissue and the command line."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import sthist
from sthist.cli import build_parser, main


@pytest.fixture(scope="module")
def predicted():
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=1)
    # One tiny training section: without spatial context, so that every gene's prediction varies.
    model = sthist.tl.fit(
        {"toy0": sections["toy0"]},
        backbone="tiny",
        max_epochs=2,
        batch_size=16,
        k=5,
        training={"views": 1},
        architecture={"context_um": None},
    )
    sdata = sections["toy1"]
    sthist.pp.normalize(sdata.tables["table"])
    sthist.tl.predict(sdata, model)
    return sdata, model


def test_expression_plot(predicted, tmp_path):
    sdata, model = predicted
    genes = model.genes[:2]
    figure = sthist.pl.expression(sdata, genes, save=tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 10_000
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and len(figure.axes) == 6  # 2 genes × (observed, predicted) + 2 colour bars
    assert all(ax.images for ax in panels)  # the H&E underlay
    predicted_panel = panels[1]
    collection = predicted_panel.collections[0]
    table = sdata.tables["table"]
    np.testing.assert_allclose(collection.get_array(), table.obsm["sthist_pred"][genes[0]].to_numpy())
    np.testing.assert_allclose(
        collection.get_offsets(), sdata.shapes["spots"].get_coordinates().to_numpy() / 1, rtol=1e-6
    )
    assert genes[0] in predicted_panel.get_title() and "r =" in predicted_panel.get_title()
    with pytest.raises(KeyError, match="No predictions under table.obsm\\['missing'\\]"):
        sthist.pl.expression(sdata, genes, key="missing")
    with pytest.raises(KeyError, match="not among the predictions"):
        sthist.pl.expression(sdata, ["NOPE"])


def test_plots_draw_into_given_axes_and_show(predicted, monkeypatch):
    import matplotlib.pyplot as plt

    sdata, model = predicted
    genes = model.genes[:2]
    figure, axes = plt.subplots(2, 2)
    assert sthist.pl.expression(sdata, genes, ax=axes) is figure
    assert all(ax.images and ax.collections for ax in axes.ravel())  # H&E and spots in each given panel
    np.testing.assert_allclose(
        axes[1, 1].collections[0].get_array(), sdata.tables["table"].obsm["sthist_pred"][genes[1]].to_numpy()
    )
    with pytest.raises(ValueError, match="Pass one Axes per panel: 4 panels, 1 Axes"):
        sthist.pl.expression(sdata, genes, ax=axes[0, 0])
    _, pair = plt.subplots(1, 2)
    sthist.pl.gene_correlation(sdata, genes=model.genes[:4], ax=pair)
    assert pair[0].get_title() == "observed gene–gene correlation" and pair[1].images
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    assert sthist.pl.uncertainty(sdata, genes[0], show=True) is None and shown == [True]
    assert sthist.pl.training_curves(model, show=True) is None and shown == [True, True]
    plt.close("all")


def test_expression_plot_has_scale_bar_and_skips_unpredicted_spots(predicted, tmp_path):
    sdata, model = predicted
    table = sdata.tables["table"]
    saved = table.obsm["sthist_pred"].copy()
    table.obsm["sthist_pred"].iloc[:3] = np.nan  # e.g. spots that failed QC
    try:
        figure = sthist.pl.expression(sdata, model.genes[0], layer=None)
    finally:
        table.obsm["sthist_pred"] = saved
    (panel,) = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert panel.collections[0].get_array().mask[:3].all()
    assert not panel.collections[0].get_array().mask[3:].any()
    assert [t.get_text() for t in panel.texts] and panel.texts[0].get_text().endswith("µm")  # scale bar
    with pytest.raises(ValueError, match="at least one gene"):
        sthist.pl.expression(sdata, [])


def test_plots_find_the_table_with_predictions_beside_tiles(predicted):
    sdata, model = predicted
    sthist.tl.predict_tiles(sdata, model, key_added="tiles_here")
    try:
        assert len(sdata.tables) == 2
        figure = sthist.pl.expression(sdata, model.genes[:1])  # the spot table holds obsm['sthist_pred']
        assert len([ax for ax in figure.axes if ax.get_label() != "<colorbar>"]) == 2
        sthist.pl.gene_correlation(sdata, genes=model.genes[:3])
        assert sthist.tl.evaluate(sdata, inplace=False)["spots"] == sdata.tables["table"].n_obs
        with pytest.raises(ValueError, match="Several tables"):
            sthist.pl.expression(sdata, model.genes[:1], key="absent")
    finally:
        del sdata.tables["tiles_here_table"]
        del sdata.shapes["tiles_here"]


def test_uncertainty_plot(predicted, tmp_path):
    sdata, model = predicted
    genes = model.genes[:2]
    figure = sthist.pl.uncertainty(sdata, genes, save=tmp_path / "u.png")
    assert (tmp_path / "u.png").stat().st_size > 10_000
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and len(figure.axes) == 8  # each panel its own colour bar
    assert all(ax.images for ax in panels)
    table = sdata.tables["table"]
    spread = table.obsm["sthist_pred_uncertainty"][genes[1]].to_numpy()
    np.testing.assert_allclose(panels[3].collections[0].get_array(), spread)
    assert panels[3].collections[0].get_clim()[0] == 0
    assert "uncertainty" in panels[3].get_title()
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert all("log1p" in bar.get_ylabel() for bar in bars)  # units on every colour bar
    assert "spread" in bars[3].get_ylabel()


def test_uncertainty_plot_refuses_models_without_spread():
    sections = sthist.datasets.toy(2, grid=5, n_genes=6, random_state=2)
    ridge = sthist.tl.fit({"toy0": sections["toy0"]}, method="ridge", backbone="tiny")
    sthist.tl.predict(sections["toy1"], ridge)
    with pytest.raises(ValueError, match="carry no uncertainty"):
        sthist.pl.uncertainty(sections["toy1"], ridge.genes[:1])
    with pytest.raises(ValueError, match="no training history"):
        sthist.pl.training_curves(ridge)


def test_gene_scores_plot(predicted, tmp_path):
    import matplotlib.pyplot as plt

    sdata, model = predicted
    table = sdata.tables["table"]
    with pytest.raises(KeyError, match="run `sthist.tl.evaluate"):
        sthist.pl.gene_scores(sdata)
    options = {"n_top": 3, "marker_genes": model.genes[-2:]}
    assert sthist.tl.evaluate(sdata, overwrite=True, **options) is None
    results = sthist.tl.evaluate(sdata, inplace=False, **options)
    _, ax = plt.subplots()
    returned = sthist.pl.gene_scores(sdata, ax=ax, n_labels=1, save=tmp_path / "g.png")
    assert returned is ax and (tmp_path / "g.png").exists()
    genes = results["genes"].dropna(subset=["pearson"])
    everything = ax.collections[0]
    np.testing.assert_allclose(np.sort(everything.get_offsets()[:, 1]), np.sort(genes["pearson"]))
    assert np.all(np.diff(everything.get_offsets()[:, 1]) <= 0)  # ranked, best first
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    heg_mean = results["summary"].loc["HEG@3", "pearson_mean"]
    assert f"HEG@3 (mean r = {heg_mean:.3f})" in legend and any(t.startswith("MG") for t in legend)
    labels = {t.get_text() for t in ax.texts}
    assert set(model.genes[-2:]) <= labels and genes["pearson"].idxmax() in labels
    # The dict returned by evaluate works too, and agrees with what was stored.
    other = sthist.pl.gene_scores(results)
    np.testing.assert_allclose(other.collections[0].get_offsets(), everything.get_offsets())
    assert "sthist_pred_evaluation" in table.uns


def test_gene_correlation_plot(predicted, tmp_path):
    sdata, model = predicted
    table = sdata.tables["table"]
    genes = model.genes[:5]
    figure = sthist.pl.gene_correlation(sdata, genes=genes, save=tmp_path / "c.png")
    heatmaps = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(heatmaps) == 2 and len(figure.axes) == 3  # one shared colour bar
    observed = table[:, genes].to_df(layer="sthist_log1p")
    order = [t.get_text() for t in heatmaps[0].get_yticklabels()]
    assert sorted(order) == sorted(genes) and order == [t.get_text() for t in heatmaps[1].get_xticklabels()]
    expected = np.corrcoef(observed[order].to_numpy(), rowvar=False)
    np.testing.assert_allclose(heatmaps[0].images[0].get_array(), expected, atol=1e-6)
    assert heatmaps[0].images[0].get_clim() == (-1, 1)
    fidelity = sthist.tl.gene_gene_fidelity(observed, table.obsm["sthist_pred"][genes])
    assert f"{fidelity:.3f}" in figure._suptitle.get_text()
    default = sthist.pl.gene_correlation(sdata, n_genes=4)
    assert len(default.axes[0].get_xticklabels()) == 4
    with pytest.raises(ValueError, match="at least 3 genes"):
        sthist.pl.gene_correlation(sdata, genes=genes[:2])
    with pytest.raises(KeyError, match="No layer 'counts'"):
        sthist.pl.gene_correlation(sdata, layer="counts")


def test_cross_validation_plot(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = [
        {"section": s, "method": m, "gene_set": g, "pearson_mean": v + (0.1 if g == "HVG@50" else 0)}
        for s, offset in (("A1", 0.0), ("B1", 0.02))
        for m, v0 in (("ridge", 0.05), ("cmrcnet", 0.15))
        for g in ("HEG@50", "HVG@50", "panel")
        for v in [v0 + offset]
    ]
    results = pd.DataFrame(rows)
    figure = sthist.pl.cross_validation(results, save=tmp_path / "cv.png")
    assert [ax.get_title() for ax in figure.axes] == ["HEG@50", "HVG@50"]  # 'all' left out by default
    heg = figure.axes[0]
    assert [t.get_text() for t in heg.get_xticklabels()] == ["cmrcnet", "ridge"]  # CMRCNet first
    assert heg.get_ylabel().startswith("mean Pearson r per held-out section")
    np.testing.assert_allclose([bar.get_height() for bar in heg.patches], [0.16, 0.06])
    assert len(heg.collections) == 2 and len(heg.collections[0].get_offsets()) == 2  # one dot per section
    _, ax = plt.subplots()
    assert sthist.pl.cross_validation(results, gene_sets=["HVG@50"], ax=ax) is ax.figure
    with pytest.raises(ValueError, match="one Axes per gene set"):
        sthist.pl.cross_validation(results, ax=ax)
    with pytest.raises(KeyError, match="lack columns \\['spearman_mean'\\]"):
        sthist.pl.cross_validation(results, metric="spearman_mean")
    with pytest.raises(KeyError, match="Methods \\['bleep'\\]"):
        sthist.pl.cross_validation(results, methods=["bleep"])


def test_training_curves_plot(predicted, tmp_path):
    _, model = predicted
    figure = sthist.pl.training_curves(model, save=tmp_path / "t.png")
    assert [ax.get_title() for ax in figure.axes] == ["loss", "contrastive", "reconstruction", "decoder"]
    line = figure.axes[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [r["epoch"] + 1 for r in model.history])
    np.testing.assert_allclose(line.get_ydata(), [r["loss"] for r in model.history])
    compared = sthist.pl.training_curves({"a": model, "b": model.history}, components=["loss"])
    assert len(compared.axes[0].lines) == 2 and compared.axes[0].get_legend() is not None
    with pytest.raises(KeyError, match="were not recorded"):
        sthist.pl.training_curves(model, components=["mse"])
    with pytest.raises(TypeError, match="SthistModel or its history"):
        sthist.pl.training_curves({"x": 3})


def test_cli_help_explains_units(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "µm" in text and "held-out" in text
    assert build_parser().parse_args(["demo"]).test_section == "C6"


def test_cli_fit_predict_evaluate_on_stores(tmp_path, capsys):
    import spatialdata as sd

    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=3)
    stores = []
    for name, sdata in sections.items():
        sdata.write(tmp_path / f"{name}.zarr")
        stores.append(str(tmp_path / f"{name}.zarr"))
    model_dir = str(tmp_path / "model")
    options = ["--backbone", "tiny", "--epochs", "2", "--batch-size", "16", "--k", "5"]
    assert main(["fit", stores[0], "--output", model_dir, *options]) == 0
    assert (tmp_path / "model" / "config.json").exists()
    assert main(["fit", stores[0], "--output", model_dir, *options]) == 2
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err
    before = sd.read_zarr(stores[1])
    assert main(["predict", stores[1], "--model", model_dir]) == 0
    after = sd.read_zarr(stores[1])
    assert set(after.images) == set(before.images) and set(after.shapes) == set(before.shapes)
    table = after.tables["table"]
    assert "sthist_pred" in table.obsm and table.n_obs == before.tables["table"].n_obs
    np.testing.assert_array_equal(table.X.toarray(), before.tables["table"].X.toarray())
    assert main(["predict", stores[1], "--model", model_dir]) == 2
    assert "pass --overwrite or another --key" in capsys.readouterr().err
    assert main(["evaluate", stores[1]]) == 0
    assert "HEG@50" in capsys.readouterr().out
    assert main(["predict", stores[1], "--model", model_dir, "--tiles", "--key", "tiles"]) == 0
    assert "tiles_table" in sd.read_zarr(stores[1]).tables
    gene = sthist.models.load(model_dir).genes[0]
    figure = tmp_path / "tiles.png"
    assert (
        main(
            ["plot", stores[1], "--kind", "tiles", "--key", "tiles", "--genes", gene, "--output", str(figure)]
        )
        == 0
    )
    assert figure.stat().st_size > 10_000
    spots_figure = str(tmp_path / "spots.png")
    # Two tables now (spots, tiles): the one holding the spot predictions is found, or named with --table.
    assert main(["plot", stores[1], "--genes", gene, "--output", spots_figure]) == 0
    assert (
        main(
            ["plot", stores[1], "--genes", gene, "--table", "table", "--output", spots_figure, "--overwrite"]
        )
        == 0
    )
    assert (
        main(["plot", stores[1], "--genes", gene, "--key", "absent", "--output", spots_figure, "--overwrite"])
        == 2
    )
    assert "several tables" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.zarr"), "--model", model_dir]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.realdata
def test_cli_on_real_sections(her2st_images, tmp_path, capsys):
    """fit on HER2ST C5, predict C6 into its store, evaluate and plot it, all through the command line."""
    import pandas as pd
    import spatialdata as sd

    stores = {}
    for name in ("C5", "C6"):
        stores[name] = str(tmp_path / f"{name}.zarr")
        sd.deepcopy(her2st_images[name]).write(stores[name])
    model_dir = str(tmp_path / "model")
    options = ["--epochs", "3", "--views", "1", "--k", "20", "--n-top-genes", "60", "--learning-rate", "1e-3"]
    assert main(["fit", stores["C5"], "--output", model_dir, *options]) == 0
    model = sthist.models.load(model_dir)
    assert model.config.training_sections == {"C5": her2st_images["C5"].tables["table"].n_obs}
    assert model.config.backbone.name == "efficientnet_lite0" and len(model.history) == 3
    assert main(["predict", stores["C6"], "--model", model_dir]) == 0
    after = sd.read_zarr(stores["C6"])
    table = after.tables["table"]
    assert table.obsm["sthist_pred"].shape == (table.n_obs, len(model.genes))
    assert set(after.images) == set(her2st_images["C6"].images)
    assert (
        after.attrs["sthist"]["microns_per_pixel"] == her2st_images["C6"].attrs["sthist"]["microns_per_pixel"]
    )
    capsys.readouterr()
    scores = tmp_path / "scores.csv"
    assert main(["evaluate", stores["C6"], "--her2st-markers", "--output", str(scores)]) == 0
    printed = capsys.readouterr().out
    assert "| HEG@50 |" in printed and "| MG |" in printed and "fidelity" in printed
    per_gene = pd.read_csv(scores, index_col="gene")
    assert list(per_gene.index) == model.genes and per_gene["pearson"].notna().sum() > 0.9 * len(model.genes)
    assert main(["evaluate", stores["C6"], "--output", str(scores)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    figure = tmp_path / "erbb2.png"
    gene = "ERBB2" if "ERBB2" in model.genes else model.genes[0]
    assert main(["plot", stores["C6"], "--genes", gene, "--output", str(figure)]) == 0
    assert figure.stat().st_size > 50_000
    assert (
        main(
            [
                "plot",
                stores["C6"],
                "--kind",
                "scores",
                "--her2st-markers",
                "--output",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    assert main(["plot", stores["C6"], "--kind", "uncertainty", "--output", str(tmp_path / "u.png")]) == 2
    assert "--genes is required" in capsys.readouterr().err
