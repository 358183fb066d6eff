"""The token cache: summaries kept and served without encoding again, entries keyed by content."""

from __future__ import annotations

import pandas as pd
from _shared import copy_section

import sthist


def test_token_cache_keeps_summaries_and_serves_means_from_them(sections, model, monkeypatch):
    """Training keeps the 3 × 3 summary; prediction's mean tokens come from it without encoding again."""
    import torch

    import sthist.data._features as features
    from sthist.data import SpotPatchDataset, TokenCache, tokens_of

    dataset = SpotPatchDataset(copy_section(sections["toy0"]), patch_size_um=64, patch_size_px=32)
    encoded = []
    original = features.encode_patches
    monkeypatch.setattr(
        features, "encode_patches", lambda *a, **k: encoded.append(k["grid"]) or original(*a, **k)
    )
    cache = TokenCache()
    options = {"identity": "tiny|random", "views": 2, "token_cache": cache}
    summary = tokens_of(dataset, model.encoder, grid=3, **options)
    assert summary.shape[2] == 10 and encoded == [3]
    means = tokens_of(dataset, model.encoder, grid=1, **options)
    assert means.shape[2] == 1 and encoded == [3]  # served from the summary
    fresh = original(dataset, model.encoder, views=2, grid=1)
    torch.testing.assert_close(means, fresh, atol=2e-3, rtol=2e-3)
    full = tokens_of(dataset, model.encoder, grid=None, **options)
    assert full.shape[2] == 16 and encoded == [3, None]  # every token: encoded again, kept beside
    assert len(cache) == 2 and cache.nbytes == summary.numel() * 2 + full.numel() * 2
    # Every token serves any summary: a cache that holds them encodes nothing more.
    encoded.clear()
    cache = TokenCache()
    tokens_of(dataset, model.encoder, grid=None, **{**options, "token_cache": cache})
    again = tokens_of(dataset, model.encoder, grid=3, **{**options, "token_cache": cache})
    assert encoded == [None] and again.shape == summary.shape
    torch.testing.assert_close(again, summary, atol=2e-3, rtol=2e-3)


def test_token_cache_is_keyed_by_content_not_by_name(sections, model):
    from sthist.data import TokenCache

    one, two = copy_section(sections["toy0"]), copy_section(sections["toy1"])
    for sdata in (one, two):  # hand-built sections carry no name: both are "section0"
        sdata.attrs.pop("sthist", None)
        sthist.pp.set_microns_per_pixel(sdata, 1.0)
    cache = TokenCache()
    cached = [sthist.tl.predict(s, model, inplace=False, token_cache=cache)[0] for s in (one, two)]
    fresh = [sthist.tl.predict(s, model, inplace=False)[0] for s in (one, two)]
    assert len(cache) == 2
    for a, b in zip(cached, fresh, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_the_command_line_keeps_encoder_summaries_in_the_cache_folder(
    store, model_dir, tmp_path, monkeypatch
):
    import sthist.data._features as features
    from sthist.cli import main

    monkeypatch.setattr(sthist.settings, "cache_dir", tmp_path / "cache")
    encoded = []
    original = features.encode_patches
    monkeypatch.setattr(features, "encode_patches", lambda *a, **k: encoded.append(1) or original(*a, **k))
    tiles = ["predict", str(store), "--model", str(model_dir), "--tiles", "--stride-um", "224"]
    assert main(tiles) == 0
    first = len(encoded)
    kept = sorted((tmp_path / "cache" / "tokens").glob("*.safetensors"))
    assert first >= 1 and len(kept) >= 1
    assert main([*tiles, "--overwrite"]) == 0
    assert len(encoded) == first  # every chunk read back, none encoded
    assert main(["predict", str(store), "--model", str(model_dir), "--tta-views", "1"]) == 0
    assert len(sorted((tmp_path / "cache" / "tokens").glob("*.safetensors"))) > len(kept)  # the spots' entry
