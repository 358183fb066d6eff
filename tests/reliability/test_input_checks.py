"""Mistakes in arguments and input fail early with one clear line, before any work; results never replace
what sthist does not own."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from _shared import copy_section

import sthist
from sthist.tl._fit import merge_fit_options


def test_results_never_replace_what_sthist_does_not_own(sections, model):
    sdata = copy_section(sections["toy1"])
    table = sdata.tables["table"]
    for reserved in ("spatialdata_attrs", "sthist_normalization", "spatial"):
        with pytest.raises(ValueError, match="keep for themselves"):
            sthist.tl.predict(sdata, model, key_added=reserved, overwrite=True)
    table.obsm["mine"] = np.zeros((table.n_obs, 2))
    with pytest.raises(ValueError, match="not written by sthist.tl.predict"):
        sthist.tl.predict(sdata, model, key_added="mine", overwrite=True)
    assert table.obsm["mine"].shape == (table.n_obs, 2)
    # What sthist wrote it may replace when asked.
    sthist.tl.predict(sdata, model, key_added="ours")
    sthist.tl.predict(sdata, model, key_added="ours", overwrite=True)
    for taken in ("spots", "he", "table"):
        with pytest.raises(ValueError, match="did not write"):
            sthist.tl.predict_tiles(sdata, model, key_added=taken, overwrite=True, stride_um=224)
    sthist.tl.predict_tiles(sdata, model, key_added="tiles", stride_um=224)
    sthist.tl.predict_tiles(sdata, model, key_added="tiles", stride_um=224, overwrite=True)
    assert set(sdata.shapes) == {"spots", "tiles"} and "he" in sdata.images


@pytest.mark.parametrize(
    "values",
    [
        ["True", "False"],
        [1.0, np.nan],
        pd.Categorical(["pass", "fail"]),
        [1, 0],
    ],
    ids=["strings", "nan-floats", "categories", "integers"],
)
def test_qc_column_must_hold_booleans(sections, model, fit_options, values):
    sdata = copy_section(sections["toy1"])
    table = sdata.tables["table"]
    pattern = np.resize(np.asarray(values, dtype=object), table.n_obs)
    table.obs["keep"] = pd.Categorical(pattern) if isinstance(values, pd.Categorical) else list(pattern)
    with pytest.raises(TypeError, match="obs column 'keep' must hold booleans"):
        sthist.tl.predict(sdata, model, qc_column="keep")
    with pytest.raises(TypeError, match="must hold booleans"):
        sthist.tl.fit({"toy1": sdata}, qc_column="keep", **fit_options)
    table.obs["keep"] = np.arange(table.n_obs) % 2 == 0
    sthist.tl.predict(sdata, model, qc_column="keep")
    assert table.obsm["sthist_pred"].notna().all(axis=1).sum() == (table.obs["keep"]).sum()


def test_degenerate_settings_are_refused(sections, model, fit_options):
    sdata = copy_section(sections["toy1"])
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        sthist.tl.predict(sdata, model, k=0)
    with pytest.raises(ValueError, match="n_top must be a positive integer"):
        sthist.tl.evaluate(sdata, n_top=0)
    with pytest.raises(ValueError, match="n_top_genes must be a positive integer"):
        sthist.tl.fit(sections, **merge_fit_options(fit_options, {"data": {"n_top_genes": 0}}))


def test_training_on_constant_expression_is_refused(sections, fit_options):
    sdata = copy_section(sections["toy0"])
    table = sdata.tables["table"]
    table.X = table.X * 0
    with pytest.raises(ValueError, match="Every gene of the panel is constant"):
        sthist.tl.fit({"toy0": sdata}, genes=list(table.var_names[:3]), **fit_options)


@pytest.mark.parametrize("stride", [1.0, 0.01])
def test_tiny_strides_are_refused_before_any_work(sections, model, stride):
    tick = time.perf_counter()
    with pytest.raises(ValueError, match="tiles"):
        sthist.tl.predict_tiles(copy_section(sections["toy1"]), model, stride_um=stride)
    assert time.perf_counter() - tick < 30


def test_input_mistakes_fail_early_with_one_clear_line(sections, model, monkeypatch):
    import sthist.data._features as features

    sdata = copy_section(sections["toy1"])

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before checking the input")

    monkeypatch.setattr(features, "encode_patches", no_encoding)
    cases = [
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
        (dict(genes="gene000"), TypeError, "not the string 'gene000'"),
        (dict(key_added="a/b"), ValueError, "cannot be stored in a zarr store"),
        (dict(tta_views=9), ValueError, "tta_views"),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append((dict(device="cuda"), ValueError, "torch sees none"))
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            sthist.tl.predict(sdata, model, **options)
    table = sdata.tables["table"]
    table.obs_names = ["s0"] * table.n_obs
    with pytest.raises(ValueError, match="names spots more than once"):
        sthist.tl.predict(sdata, model)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"training": {"learning_rate": float("nan")}}, "learning_rate must be a positive finite number"),
        ({"training": {"learning_rate": -1e-3}}, "learning_rate must be a positive finite number"),
        ({"genes": "gene000"}, "not the string 'gene000'"),
        ({"genes": ["gene000", "gene000"]}, "more than once"),
    ],
)
def test_fit_mistakes_fail_before_encoding(sections, monkeypatch, fit_options, options, message):
    import sthist.data._features as features

    monkeypatch.setattr(features, "encode_patches", lambda *a, **k: pytest.fail("encoded"))
    with pytest.raises((ValueError, TypeError), match=message):
        sthist.tl.fit(sections, **merge_fit_options(fit_options, options))


def test_duplicated_gene_names_in_a_table_are_named(sections, fit_options):
    sdata = copy_section(sections["toy0"])
    table = sdata.tables["table"]
    table.var_names = [table.var_names[0]] * 2 + list(table.var_names[2:])
    with pytest.raises(ValueError, match="not unique"):
        sthist.tl.fit({"toy0": sdata}, genes=list(table.var_names[2:5]), **fit_options)


def test_gene_names_in_another_case_get_a_suggestion(sections, model):
    gene = model.genes[0]
    with pytest.raises(KeyError, match=f"Did you mean '{gene.upper()}' → '{gene}'"):
        sthist.tl.predict(copy_section(sections["toy1"]), model, genes=[gene.upper()])
    with pytest.raises(KeyError, match="Did you mean"):
        sthist.pp.select_genes(sections["toy1"], genes=[gene.upper()])
