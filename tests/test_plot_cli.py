"""Plot on tissue and the command line."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import sthist
from sthist.__main__ import build_parser, main


@pytest.fixture(scope="module")
def predicted():
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, seed=1)
    model = sthist.tl.fit(
        {"toy0": sections["toy0"]}, backbone="tiny", max_epochs=2, batch_size=16, k=5, views=1
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


def test_cli_help_explains_units(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "µm" in text and "held-out" in text
    assert build_parser().parse_args(["demo"]).test_section == "C6"


def test_cli_fit_predict_evaluate_on_stores(tmp_path, capsys):
    import spatialdata as sd

    sections = sthist.datasets.toy(2, grid=6, n_genes=8, seed=3)
    stores = []
    for name, sdata in sections.items():
        sdata.write(tmp_path / f"{name}.zarr")
        stores.append(str(tmp_path / f"{name}.zarr"))
    model_dir = str(tmp_path / "model")
    options = ["--backbone", "tiny", "--epochs", "2", "--batch-size", "16", "--k", "5"]
    assert main(["fit", stores[0], "--output", model_dir, *options]) == 0
    assert (tmp_path / "model" / "config.json").exists()
    with pytest.raises(FileExistsError):
        main(["fit", stores[0], "--output", model_dir, *options])
    before = sd.read_zarr(stores[1])
    assert main(["predict", stores[1], "--model", model_dir]) == 0
    after = sd.read_zarr(stores[1])
    assert set(after.images) == set(before.images) and set(after.shapes) == set(before.shapes)
    table = after.tables["table"]
    assert "sthist_pred" in table.obsm and table.n_obs == before.tables["table"].n_obs
    np.testing.assert_array_equal(table.X.toarray(), before.tables["table"].X.toarray())
    with pytest.raises(ValueError, match="overwrite=True"):
        main(["predict", stores[1], "--model", model_dir])
    assert main(["evaluate", stores[1]]) == 0
    assert "HEG@50" in capsys.readouterr().out
    assert main(["predict", stores[1], "--model", model_dir, "--tiles", "--key", "tiles"]) == 0
    assert "tiles_table" in sd.read_zarr(stores[1]).tables
    with pytest.raises(SystemExit, match="does not exist"):
        main(["predict", str(tmp_path / "missing.zarr"), "--model", model_dir])
