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
