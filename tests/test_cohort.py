"""Cohort prediction over zarr stores, shared among processes by Lightning; results equal one process's."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd

import sthist


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three toy stores and a saved model."""
    sthist.settings.progress = False
    folder = tmp_path_factory.mktemp("cohort")
    sections = sthist.datasets.toy(4, grid=6, n_genes=8, random_state=3)
    model = sthist.tl.fit(
        {"toy0": sections["toy0"]}, method="regression", backbone="tiny", max_epochs=2, batch_size=16,
        training={"views": 1}, architecture={"context_um": None},
    )  # fmt: skip
    model_path = model.save(folder / "model")
    stores = []
    for name in ("toy1", "toy2", "toy3"):
        sections[name].write(folder / f"{name}.zarr")
        stores.append(str(folder / f"{name}.zarr"))
    return stores, model_path, model, sections


def _predictions(store):
    return sd.read_zarr(store).tables["table"].obsm["sthist_pred"]


def test_two_processes_give_the_predictions_of_one(cohort):
    stores, model_path, model, sections = cohort
    summary = sthist.tl.predict_stores(
        stores, model_path, accelerator="cpu", devices=2, strategy="ddp_spawn", tta_views=2
    )
    assert list(summary["store"]) == stores
    assert sorted(summary["rank"]) == [0, 0, 1]  # stores 0 and 2 on rank 0, store 1 on rank 1
    for store, name in zip(stores, ("toy1", "toy2", "toy3"), strict=True):
        expected, _ = sthist.tl.predict(sections[name], model, inplace=False, tta_views=2, device="cpu")
        written = _predictions(store)
        assert written.to_numpy().std(axis=0).min() > 0  # predictions that vary from spot to spot
        assert summary.set_index("store").loc[store, "n_spots"] == len(written)
        np.testing.assert_allclose(written.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)
        assert sd.read_zarr(store).tables["table"].uns["sthist_pred"]["tta_views"] == 2
    # Nothing is overwritten silently: a second run is refused before any process starts.
    with pytest.raises(ValueError, match="already has predictions under 'sthist_pred'"):
        sthist.tl.predict_stores(stores, model_path, accelerator="cpu")
    # One process, in place, with overwrite: the same numbers.
    again = sthist.tl.predict_stores(stores[:1], model_path, accelerator="cpu", overwrite=True, tta_views=2)
    assert list(again["rank"]) == [0]
    np.testing.assert_allclose(
        _predictions(stores[0]).to_numpy(),
        sthist.tl.predict(sections["toy1"], model, inplace=False, tta_views=2, device="cpu")[0].to_numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_cohort_input_is_refused_before_work(cohort, tmp_path):
    stores, model_path, _, _ = cohort
    with pytest.raises(FileNotFoundError, match="not a saved sthist model"):
        sthist.tl.predict_stores(stores, tmp_path, accelerator="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sthist.tl.predict_stores([str(tmp_path / "missing.zarr")], model_path, accelerator="cpu")
    with pytest.raises(ValueError, match="more than once"):
        sthist.tl.predict_stores([stores[0], stores[0]], model_path, accelerator="cpu")
    with pytest.raises(TypeError, match="unknown options \\['stride_um'\\]"):
        sthist.tl.predict_stores(stores, model_path, stride_um=50)
    with pytest.raises(ValueError, match="at least one store"):
        sthist.tl.predict_stores([], model_path)


def test_cli_predicts_several_stores(cohort, capsys):
    from sthist.cli import main

    stores, model_path, model, sections = cohort
    code = main(["predict", *stores[1:], "--model", str(model_path), "--device", "cpu", "--overwrite"])
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote obsm['sthist_pred'] into 2 stores" in out and "n_spots" in out
    expected, _ = sthist.tl.predict(sections["toy3"], model, inplace=False, device="cpu")
    np.testing.assert_allclose(_predictions(stores[2]).to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)
    assert main(["predict", *stores, "--model", str(model_path), "--tiles"]) != 0
    assert "--tiles predicts one store at a time" in capsys.readouterr().err
