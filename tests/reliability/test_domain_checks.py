"""Input unlike what a model was trained on is flagged or refused: foreign genes, implausible or anisotropic
scales, missing image chunks, predictions in other units."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _shared import copy_section

import sthist


def test_out_of_domain_sections_are_flagged_and_recorded(sections, model):
    import anndata as ad

    sdata = copy_section(sections["toy1"])
    old = sdata.tables["table"]
    renamed = ad.AnnData(
        X=old.X, obs=old.obs, var=pd.DataFrame(index=[g.lower() + "_mm" for g in old.var_names]), uns=old.uns
    )
    sdata.tables["table"] = renamed
    with pytest.warns(UserWarning, match="measures 0 of the model's 8 genes"):
        sthist.tl.predict(sdata, model)
    domain = renamed.uns["sthist_pred"]["domain"]
    assert domain["gene_overlap"] == 0 and domain["warnings"]
    # Same image, but recorded as 8× coarser pixels: the patches would be upsampled.
    coarse = copy_section(sections["toy1"])
    sthist.pp.set_microns_per_pixel(coarse, 8.0)
    with pytest.warns(UserWarning, match="coarser than the .* µm/px of the model's training images"):
        sthist.tl.predict(coarse, model)
    assert coarse.tables["table"].uns["sthist_pred"]["domain"]["upsampling"] > 2
    # In-domain: no warning, and the check is recorded.
    plain = copy_section(sections["toy1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sthist.tl.predict(plain, model)
    assert plain.tables["table"].uns["sthist_pred"]["domain"]["gene_overlap"] == 1.0


@pytest.mark.parametrize("value", [1000.0, 0.001, 0.0, float("nan")])
def test_implausible_scales_are_refused(sections, value):
    sdata = copy_section(sections["toy1"])
    with pytest.raises(ValueError, match="µm per pixel"):
        sthist.pp.set_microns_per_pixel(sdata, value)
    sdata.attrs["sthist"]["microns_per_pixel"]["global"] = value  # written by another tool
    with pytest.raises(ValueError, match="the scale recorded in sdata.attrs"):
        sthist.pp.get_microns_per_pixel(sdata)


def test_anisotropic_pixels_are_reported_and_tiles_drawn_per_axis():
    from types import SimpleNamespace

    from sthist.pl._tiles import tile_raster

    grid = np.array([[x, y] for x in range(6) for y in range(6)], dtype=float)
    pixels = grid * [100 / 4.625, 100 / 4.158]
    with pytest.warns(UserWarning, match="pixels are not square: 4.625 µm/px along x and 4.158"):
        scale, _ = sthist.pp.fit_microns_per_pixel(grid, pixels, pitch_um=100)
    assert scale == pytest.approx(np.sqrt(4.625 * 4.158), rel=1e-6)
    # Tiles 10 units apart in x and 9 in y: each gets its own cell, nothing drawn over another.
    xy = np.array([[x * 10.0, y * 9.0] for x in range(30) for y in range(20)])
    values = np.arange(len(xy), dtype=float)
    raster, extent = tile_raster(SimpleNamespace(xy=xy, diameters=np.full(len(xy), 9.5)), values)
    assert raster.shape == (20, 30) and np.isfinite(raster).all()
    assert sorted(raster.ravel()) == sorted(values)
    assert extent == pytest.approx((-5, 295, 175.5, -4.5))


def test_missing_image_chunks_are_reported(store, model):
    import spatialdata as sd

    for level in ("s0", "s1", "s2"):
        chunks = sorted((store / "images" / "he" / level).rglob("c/*/*/*"))
        assert chunks
        chunks[len(chunks) // 2].unlink()
    with pytest.warns(UserWarning, match="chunks of image 'he' .* are not in its zarr store"):
        sthist.tl.predict(sd.read_zarr(store), model, inplace=False)


def test_evaluate_refuses_predictions_in_other_units(sections, model):
    sdata = copy_section(sections["toy1"])
    table = sdata.tables["table"]
    sthist.pp.normalize(table, target_sum=1e6, key_added="per_million")
    sthist.tl.predict(sdata, model)
    with pytest.raises(ValueError, match="log1p of counts per 1e\\+06, but table.obsm\\['sthist_pred'\\]"):
        sthist.tl.evaluate(sdata, layer="per_million")
    sthist.pp.normalize(table)
    sthist.tl.evaluate(sdata)
