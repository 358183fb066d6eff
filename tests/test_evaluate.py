"""Metrics against hand-computed values, NaN handling, cross-validation folds without leakage, AUROC."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import sthist
from sthist.tl._evaluate import evaluation_frames
from sthist.tl._fit import merge_fit_options


def _frames():
    observed = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": [2.0, 2.0, 2.0, 2.0, 2.0], "c": [5.0, 1.0, 4.0, 2.0, 3.0]},
        index=[f"s{i}" for i in range(5)],
    )
    predicted = pd.DataFrame(
        {"a": [1.5, 1.0, 3.5, 5.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0, 6.0], "c": [3.0, 3.0, 3.0, 3.0, 3.0]},
        index=observed.index,
    )
    return observed, predicted


def test_metrics_match_scipy_and_count_nans():
    observed, predicted = _frames()
    result = evaluation_frames(observed, predicted, n_top=2, marker_genes=["a", "c", "not_in_panel"])
    genes = result["genes"]
    assert genes.loc["a", "pearson"] == pytest.approx(stats.pearsonr(observed["a"], predicted["a"])[0])
    assert genes.loc["a", "spearman"] == pytest.approx(stats.spearmanr(observed["a"], predicted["a"])[0])
    assert genes.loc["a", "mse"] == pytest.approx(np.mean((observed["a"] - predicted["a"]) ** 2))
    assert np.isnan(genes.loc["b", "pearson"]) and np.isnan(genes.loc["c", "pearson"])  # constant sides
    summary = result["summary"]
    assert summary.loc["panel", "n_nan"] == 2 and summary.loc["panel", "n_genes"] == 3
    assert summary.loc["panel", "pearson_mean"] == pytest.approx(genes.loc["a", "pearson"])
    assert summary.loc["MG", "n_genes"] == 2
    # HEG@2: top by mean observed (c 3, a 3, b 2: stable order keeps a before c); HVG@2: a and c.
    assert set(genes.index[genes["in_HEG@2"]]) == {"a", "c"}
    assert set(genes.index[genes["in_HVG@2"]]) == {"a", "c"}


def test_gene_gene_fidelity_by_hand():
    rng = np.random.default_rng(0)
    observed = pd.DataFrame(rng.normal(size=(30, 4)), columns=list("wxyz"))
    predicted = observed + rng.normal(scale=0.5, size=(30, 4))
    upper = np.triu_indices(4, k=1)
    expected = stats.pearsonr(np.corrcoef(observed.T)[upper], np.corrcoef(predicted.T)[upper])[0]
    assert sthist.tl.gene_gene_fidelity(observed, predicted) == pytest.approx(expected)


def _table():
    observed, predicted = _frames()
    adata = ad.AnnData(
        X=np.zeros((5, 3)), obs=pd.DataFrame(index=observed.index), var=pd.DataFrame(index=["a", "b", "c"])
    )
    adata.layers["sthist_log1p"] = observed.to_numpy()
    adata.obsm["sthist_pred"] = predicted
    return adata


def test_evaluate_writes_uns_and_refuses_bad_input():
    adata = _table()
    assert sthist.tl.evaluate(adata, n_top=2) is None  # scanpy's convention: inplace writes, returns None
    assert "sthist_pred_evaluation" in adata.uns and adata.uns["sthist_pred_evaluation"]["spots"] == 5
    with pytest.raises(ValueError, match="exists already"):
        sthist.tl.evaluate(adata, n_top=2)
    with pytest.raises(KeyError, match=r"No predictions under table.obsm\['nope'\]"):
        sthist.tl.evaluate(adata, key="nope")
    # AnnData itself refuses obsm frames of other spots; the metric core checks alignment too.
    observed, predicted = _frames()
    with pytest.raises(ValueError, match="same spots and genes"):
        evaluation_frames(observed, predicted.iloc[::-1])
    with pytest.raises(ValueError, match="same spots and genes"):
        evaluation_frames(observed, predicted[["b", "a", "c"]])
    adata.obsm["other_genes"] = adata.obsm["sthist_pred"].rename(columns={"a": "zz"})
    with pytest.raises(KeyError, match=r"\['zz'\] are not measured"):
        sthist.tl.evaluate(adata, key="other_genes")
    with pytest.raises(ValueError, match="None of the 1 marker genes is in the evaluated panel"):
        sthist.tl.evaluate(adata, marker_genes=["XYZ"], inplace=False)


def test_evaluate_skips_spots_without_prediction():
    adata = _table()
    adata.obsm["sthist_pred"].iloc[0] = np.nan
    result = sthist.tl.evaluate(adata, inplace=False, n_top=2)
    assert result["spots"] == 4


def test_auroc_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    assert sthist.tl.auroc(scores, positive) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both positive and negative"):
        sthist.tl.auroc(scores, np.ones(4, dtype=bool))


@pytest.fixture(scope="module")
def toy_sections():
    sthist.settings.progress = False
    return sthist.datasets.toy(3, grid=8, n_genes=12, random_state=2)


# Without spatial context: on these tiny synthetic sections the context token differs more between sections
# than within, and one fold's retrieval collapses onto the same reference spots (constant predictions, which
# tl.predict warns about: test_constant_predictions_are_flagged).
OPTIONS = {"backbone": "tiny", "max_epochs": 3, "batch_size": 16, "k": 5, "training": {"views": 1},
           "data": {"n_top_genes": 8}, "architecture": {"context_um": None}}  # fmt: skip


def test_cross_validation_folds_and_table(toy_sections):
    table = sthist.tl.cross_validate(
        toy_sections, groups="section", methods=["bleep", "ridge"], fit_options=OPTIONS, n_top=5
    )
    assert set(table["held_out"]) == {"toy0", "toy1", "toy2"}
    assert set(table["method"]) == {"bleep", "ridge"}
    assert set(table["gene_set"]) == {"HEG@5", "HVG@5", "panel"}
    assert len(table) == 3 * 2 * 3
    assert table["pearson_mean"].notna().all()
    with pytest.raises(ValueError, match="at least two patients"):
        sthist.tl.cross_validate(
            {"toy0": toy_sections["toy0"], "toy2": toy_sections["toy2"]}, groups="patient"
        )


def test_held_out_section_influences_neither_panel_nor_model(toy_sections):
    # Perturb the held-out section's expression: the fold's panel and weights must not change.
    import copy

    perturbed = dict(toy_sections)
    altered = copy.deepcopy(toy_sections["toy2"])
    from scipy import sparse

    counts = altered.tables["table"].X.toarray()
    counts[:, 5] = counts[:, 5] * 50 + 7
    altered.tables["table"].X = sparse.csr_matrix(counts)
    perturbed["toy2"] = altered
    options = {"groups": "section", "methods": ["cmrcnet"], "fit_options": OPTIONS, "return_models": True}
    first, first_models = sthist.tl.cross_validate(toy_sections, **options)
    second, second_models = sthist.tl.cross_validate(perturbed, **options)
    a, b = first_models[("toy2", "cmrcnet")], second_models[("toy2", "cmrcnet")]
    assert a.genes == b.genes
    for (name, x), (_, y) in zip(a.module.state_dict().items(), b.module.state_dict().items(), strict=True):
        assert np.array_equal(x.numpy(), y.numpy()), name
    # ... while folds that train on toy2 do see the change.
    c, d = first_models[("toy0", "cmrcnet")], second_models[("toy0", "cmrcnet")]
    assert c.genes != d.genes or not all(
        np.array_equal(x.numpy(), y.numpy())
        for x, y in zip(c.module.state_dict().values(), d.module.state_dict().values(), strict=True)
    )
    held = first[first["held_out"] == "toy2"]["pearson_mean"].to_numpy()
    assert not np.allclose(held, second[second["held_out"] == "toy2"]["pearson_mean"].to_numpy())


def test_constant_predictions_are_flagged(toy_sections):
    train = {k: toy_sections[k] for k in ("toy1", "toy2")}
    model = sthist.tl.fit(
        train, method="bleep", **merge_fit_options(OPTIONS, {"architecture": {"context_um": 300.0}})
    )
    bank = model.tensors["bank.expression"]
    model.tensors["bank.expression"] = (
        bank[:1].clone().expand_as(bank).contiguous()
    )  # every reference spot alike
    with pytest.warns(UserWarning, match="the same for every spot"):
        sthist.tl.predict(toy_sections["toy0"], model, key_added="flat")
    domain = toy_sections["toy0"].tables["table"].uns["flat"]["domain"]
    assert domain["constant_predictions"] is True
