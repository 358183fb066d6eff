"""Encoder features computed once and kept on disk; per-spot features computed elsewhere (table.obsm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _shared import copy_section, tiny_fit

import sthist
from sthist.data import SpotPatchDataset, TokenCache
from sthist.data import _features as features

IDENTITY = "tiny|random initialisation, seed 0"


@pytest.fixture
def sections():
    sthist.settings.progress = False
    return sthist.datasets.toy(3, grid=6, n_genes=12, random_state=0)


@pytest.fixture
def count_encoding(monkeypatch):
    """The number of sections TokenCache encoded (rather than read) since the fixture was set up."""
    calls = []
    original = features.encode_patches

    def counted(*args, **kwargs):
        calls.append(kwargs.get("description"))
        return original(*args, **kwargs)

    monkeypatch.setattr(features, "encode_patches", counted)
    return calls


def tiny_encoder():
    torch.manual_seed(0)
    return sthist.models.create_encoder("tiny", pretrained=False).eval()


def dataset_of(section, **kwargs):
    return SpotPatchDataset(section, patch_size_um=64, patch_size_px=32, **kwargs)


def test_another_process_reads_what_one_process_encoded(sections, tmp_path):
    """Encode (and fit, predict) in this process; a fresh Python process reads every token from the folder."""
    folder = tmp_path / "cache"
    cache = TokenCache(folder)
    train = {k: sections[k] for k in ("toy0", "toy1")}
    model = sthist.tl.fit(train, method="ridge", token_cache=cache, **tiny_fit())
    predicted, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, token_cache=cache)
    assert (cache.encoded, cache.read) == (3, 0)
    np.save(tmp_path / "predicted.npy", predicted.to_numpy())
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np
        import sthist
        from _shared import tiny_fit
        sthist.settings.progress = False
        sections = sthist.datasets.toy(3, grid=6, n_genes=12, random_state=0)
        cache = sthist.data.TokenCache({str(folder)!r})
        model = sthist.tl.fit({{k: sections[k] for k in ("toy0", "toy1")}}, method="ridge", token_cache=cache, **tiny_fit())
        predicted, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, token_cache=cache)
        same = bool(np.array_equal(predicted.to_numpy(), np.load({str(tmp_path / "predicted.npy")!r})))
        print(json.dumps({{"encoded": cache.encoded, "read": cache.read, "same": same}}))
        """
    )
    environment = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "4294967296",
        "MALLOC_TRIM_THRESHOLD_": "4294967296",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"encoded": 0, "read": 3, "same": True}


def test_fit_predict_and_cross_validate_reuse_the_folder(sections, tmp_path, monkeypatch, count_encoding):
    monkeypatch.setattr(sthist.settings, "cache_dir", tmp_path / "cache")
    assert TokenCache().folder == tmp_path / "cache" / "tokens" and TokenCache(False).folder is None
    train = {k: sections[k] for k in ("toy0", "toy1")}
    options = tiny_fit(method="regression", training={"views": 2, "hed_jitter": 0.1})
    first = sthist.tl.fit(train, token_cache=TokenCache(), **options)
    assert len(count_encoding) == 2
    second = sthist.tl.fit(train, token_cache=TokenCache(), **options)
    assert len(count_encoding) == 2  # every token read from the folder
    for model in (first, second):
        sthist.tl.predict(sections["toy2"], model, inplace=False, token_cache=TokenCache())
    assert len(count_encoding) == 3  # toy2 once, at the mean-token grid prediction reads
    for name, tensor in first.module.state_dict().items():
        torch.testing.assert_close(second.module.state_dict()[name], tensor)
    run = dict(groups="section", methods=["ridge"], n_top=5, fit_options=tiny_fit())
    before = sthist.tl.cross_validate(sections, **run)
    encoded = len(count_encoding)
    again = sthist.tl.cross_validate(sections, **run)  # its own default TokenCache(), on the same folder
    assert len(count_encoding) == encoded
    np.testing.assert_array_equal(again["pearson_mean"].to_numpy(), before["pearson_mean"].to_numpy())


def test_entries_are_served_for_their_own_content_only(sections, tmp_path, count_encoding):
    encoder, folder = tiny_encoder(), tmp_path / "cache"
    dataset = dataset_of(sections["toy0"])

    def tokens(data=dataset, identity=IDENTITY, **kwargs):
        return TokenCache(folder).tokens(
            data, encoder, identity=identity, **{"views": 1, "grid": 3, **kwargs}
        )

    reference = tokens()
    assert len(count_encoding) == 1
    torch.testing.assert_close(tokens(), reference, rtol=0, atol=0)  # a fresh cache: read from disk
    # Mean tokens are served from the grid-3 summary (its mean is the mean of every token).
    torch.testing.assert_close(
        tokens(grid=1)[:, :, 0].float(), reference.float().mean(dim=2), rtol=1e-3, atol=1e-3
    )
    tokens(views=1, jitter=0.5)  # jitter changes views 1 and up only
    assert len(count_encoding) == 1
    # Another encoder, more views than kept, another jitter of views 1 and up, a stain normalisation: encoded.
    tokens(identity="tiny|sha256:" + "0" * 64)
    tokens(views=2, jitter=0.2)
    tokens(views=2, jitter=0.3)
    torch.testing.assert_close(tokens(views=1), reference, rtol=0, atol=0)  # served by the 2-view entry
    reference_stain = sthist._core._stain.StainStats((60.0, 0.0, 0.0), (10.0, 5.0, 5.0))
    tokens(data=dataset_of(sections["toy0"], stain_reference=reference_stain))
    assert len(count_encoding) == 5
    # One pixel changed under one patch (the image's dask identity unchanged): another digest, encoded again.
    changed = dataset_of(sections["toy0"], in_memory=True)
    reader = changed._sections[0].reader
    reader._pixels = reader.pixels.copy()
    y0, _, x0, _ = changed._sections[0].windows[0]
    reader._pixels[y0 + 2, x0 + 2] ^= 0xFF
    assert features.section_digest(changed, 0) == features.section_digest(dataset, 0)
    assert features.content_digest(changed, 0) != features.content_digest(dataset, 0)
    tokens(data=changed)
    assert len(count_encoding) == 6


def test_damaged_or_foreign_files_are_never_served(sections, tmp_path, count_encoding, caplog):
    encoder, folder = tiny_encoder(), tmp_path / "cache"
    toy0, toy1 = dataset_of(sections["toy0"]), dataset_of(sections["toy1"])
    first = TokenCache(folder).tokens(toy0, encoder, identity=IDENTITY, views=1, grid=1)
    TokenCache(folder).tokens(toy1, encoder, identity=IDENTITY, views=1, grid=1)
    files = {path.stat().st_mtime_ns: path for path in folder.glob("*.safetensors")}
    one, other = (files[k] for k in sorted(files))
    assert not list(folder.glob(".writing-*"))
    # toy1's file put in place of toy0's: its metadata names other content, so it is not served.
    one.write_bytes(other.read_bytes())
    again = TokenCache(folder).tokens(toy0, encoder, identity=IDENTITY, views=1, grid=1)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert len(count_encoding) == 3 and "does not hold the entry its name says" in caplog.text
    # A truncated file (a disk that filled up under another writer) is reported and encoded again.
    one.write_bytes(one.read_bytes()[:100])
    torch.testing.assert_close(
        TokenCache(folder).tokens(toy0, encoder, identity=IDENTITY, views=1, grid=1), first
    )
    assert len(count_encoding) == 4 and "ignoring unreadable" in caplog.text


def test_writes_are_atomic_and_failures_do_not_stop_the_work(sections, tmp_path, monkeypatch, caplog):
    import safetensors.torch

    encoder, folder = tiny_encoder(), tmp_path / "cache"
    dataset = dataset_of(sections["toy0"])
    replaced = []
    original_replace = os.replace

    def replace(source, target):
        replaced.append((os.path.dirname(source), os.path.basename(source), target))
        original_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    TokenCache(folder).tokens(dataset, encoder, identity=IDENTITY, views=1, grid=1)
    ((directory, name, target),) = replaced
    assert (
        directory == str(folder)
        and name.startswith(".writing-")
        and str(target).endswith(".grid1.safetensors")
    )

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    tokens = TokenCache(folder).tokens(dataset, encoder, identity=IDENTITY, views=1, grid=3)
    assert tokens.shape == (36, 1, 10, 32)
    assert "could not write" in caplog.text and not list(folder.glob(".writing-*"))
    assert len(list(folder.glob("*.safetensors"))) == 1
    # Every token (models with token layers) is never written.
    monkeypatch.undo()
    TokenCache(folder).tokens(dataset, encoder, identity=IDENTITY, views=1, grid=None)
    assert len(list(folder.glob("*.safetensors"))) == 1


def test_whole_slide_tiles_are_encoded_once_a_chunk_at_a_time(sections, tmp_path, count_encoding):
    model = sthist.tl.fit({"toy0": sections["toy0"]}, method="ridge", **tiny_fit())
    count_encoding.clear()  # the fit's
    folder = tmp_path / "cache"

    def tiles(cache, stride_um=100):
        sdata = copy_section(sections["toy1"])
        sthist.tl.predict_tiles(sdata, model, stride_um=stride_um, chunk_tiles=8, token_cache=cache)
        return sdata.tables["sthist_tiles_table"]

    without = tiles(None)
    chunks = len(count_encoding)
    assert chunks >= 2 and not folder.exists()
    cache = TokenCache(folder)
    first = tiles(cache)
    # Every chunk encoded, or read where an earlier chunk showed the same pixels.
    assert cache.encoded + cache.read == chunks and cache.encoded == len(list(folder.glob("*.safetensors")))
    encoded = len(count_encoding)
    again = TokenCache(folder)  # another process's view of the folder: every chunk read, none encoded
    second = tiles(again)
    assert len(count_encoding) == encoded and (again.encoded, again.read) == (0, chunks)
    np.testing.assert_array_equal(second.X, first.X)
    np.testing.assert_allclose(first.X, without.X, rtol=1e-2, atol=1e-2)  # float16 summaries
    tiles(TokenCache(folder), stride_um=90)  # other tiles: other pixels, encoded
    assert len(count_encoding) > encoded
    encoded = len(count_encoding)
    tiles(TokenCache(False))  # a cache without a folder keeps no chunk: encoded again
    assert len(count_encoding) == encoded + chunks
    with pytest.raises(TypeError, match="token_cache must be a sthist.data.TokenCache"):
        tiles(str(folder))


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("STHIST_CACHE_DIR", str(tmp_path / "from-env"))
    assert sthist._settings.Settings().cache_dir == tmp_path / "from-env"
    monkeypatch.delenv("STHIST_CACHE_DIR")
    assert sthist._settings.Settings().cache_dir is None
    monkeypatch.setattr(sthist.settings, "cache_dir", "~/features")
    assert sthist.settings.cache_dir == sthist._settings.Path("~/features").expanduser()
    with pytest.raises(ValueError, match="settings.cache_dir must be a folder or None"):
        sthist.settings.cache_dir = 3
    sthist.settings.cache_dir = None
    assert TokenCache().folder is None


# --------------------------------------------------------------------------------- precomputed features


def with_features(sections, key="uni", width=24, encoder="UNI (MahmoodLab/uni)", seed=0):
    """Sections whose tables carry per-spot features (spots × width) that a model can learn expression from."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, section in sections.items():
        section = copy_section(section)
        table = section.tables["table"]
        expression = np.asarray(
            table.X.toarray() if hasattr(table.X, "toarray") else table.X, dtype=np.float32
        )
        projection = rng.normal(size=(expression.shape[1], width))
        table.obsm[key] = np.log1p(expression) @ projection + 0.1 * rng.normal(size=(table.n_obs, width))
        if encoder is not None:
            table.uns["sthist_features"] = {key: encoder}
        out[name] = section
    return out


@pytest.mark.parametrize("method", ["ridge", "regression"])
def test_fit_and_predict_on_features_computed_elsewhere(sections, method, tmp_path):
    featured = with_features(sections)
    train = {k: featured[k] for k in ("toy0", "toy1")}
    options = tiny_fit(
        backbone="obsm:uni", training={"views": 2}, architecture={"context_um": None, "ridge_alpha": "hest"}
    )
    model = sthist.tl.fit(train, method=method, **options)
    record = model.config.backbone
    assert (record.name, record.weights_identity, model.config.token_dim) == (
        "obsm:uni",
        "UNI (MahmoodLab/uni)",
        24,
    )
    predicted, _ = sthist.tl.predict(featured["toy2"], model, inplace=False, smooth_um=0)
    assert predicted.std().min() > 0.01  # spot-specific predictions
    # The model reads each spot's features as its one token.
    table = featured["toy2"].tables["table"]
    tokens = torch.from_numpy(np.asarray(table.obsm["uni"], dtype=np.float32)).half()[:, None, :]
    by_hand = model.predict_tokens(tokens)[0].numpy()
    np.testing.assert_allclose(predicted.loc[table.obs_names].to_numpy(), by_hand, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "model")
    loaded = sthist.models.load(tmp_path / "model")
    again, _ = sthist.tl.predict(featured["toy2"], loaded, inplace=False, smooth_um=0)
    np.testing.assert_array_equal(again.to_numpy(), predicted.to_numpy())
    # Features of another encoder, or of another width, are refused.
    table.uns["sthist_features"] = {"uni": "Virchow2"}
    with pytest.raises(
        ValueError, match="declares features of 'Virchow2', but the model was trained on features of 'UNI"
    ):
        sthist.tl.predict(featured["toy2"], loaded, inplace=False)
    table.uns["sthist_features"] = {"uni": "UNI (MahmoodLab/uni)"}
    table.obsm["uni"] = np.zeros((table.n_obs, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="has 10 channels, the model reads 24"):
        sthist.tl.predict(featured["toy2"], model, inplace=False)


def test_features_computed_elsewhere_are_checked(sections):
    featured = with_features(sections, encoder=None)
    train = {k: featured[k] for k in ("toy0", "toy1")}
    with pytest.warns(UserWarning, match=r"do not declare the encoder of table.obsm\['uni'\]"):
        model = sthist.tl.fit(train, method="ridge", **tiny_fit(backbone="obsm:uni"))
    assert model.config.backbone.weights_identity == "undeclared"
    with pytest.raises(KeyError, match=r"has no table.obsm\['conch'\] \(it has \[.*'uni'\]\)"):
        sthist.tl.fit(train, method="ridge", **tiny_fit(backbone="obsm:conch"))
    mixed = with_features(sections, encoder="UNI")
    mixed["toy1"].tables["table"].uns["sthist_features"] = {"uni": "Virchow2"}
    with pytest.raises(ValueError, match=r"declare table.obsm\['uni'\] as computed by different encoders"):
        sthist.tl.fit(
            {k: mixed[k] for k in ("toy0", "toy1")}, method="ridge", **tiny_fit(backbone="obsm:uni")
        )
    featured["toy0"].tables["table"].obsm["uni"][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite features for 1 spots"):
        sthist.tl.fit(train, method="ridge", **tiny_fit(backbone="obsm:uni"))
    with pytest.raises(KeyError, match="tile predictions need an image-encoder backbone"):
        sthist.tl.predict_tiles(featured["toy2"], model)
    with pytest.raises(ValueError, match="reads precomputed features .* not pixels"):
        model.encoder(torch.zeros((1, 3, 32, 32), dtype=torch.uint8))


def _with_tile_features(section, *, side=170.0, skip=()):
    """``section`` with LazySlide-style tile features: squares drawn in full-resolution pixels (2 per unit)."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import box
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    section = copy_section(section)
    squares, features = [], []
    for iy in range(7):
        for ix in range(7):
            if (ix, iy) in skip:
                continue
            x0, y0 = 2 * ix * side, 2 * iy * side  # full-resolution pixels: twice the section's units
            squares.append(box(x0, y0, x0 + 2 * side, y0 + 2 * side))
            features.append([ix, iy, ix * iy, 1.0])
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=squares, index=pd.RangeIndex(len(squares))),
        transformations={"global": Scale([0.5, 0.5], axes=("x", "y"))},
    )
    table = ad.AnnData(
        X=np.asarray(features, dtype=np.float32),
        obs=pd.DataFrame({"tile_id": np.arange(len(squares)), "library_id": pd.Categorical(["tiles"] * len(squares))},
                         index=[str(i) for i in range(len(squares))]),
    )  # fmt: skip
    section.shapes["tiles"] = shapes
    section.tables["uni_tiles"] = TableModel.parse(
        table, region="tiles", region_key="library_id", instance_key="tile_id"
    )
    return section


def test_spot_features_from_a_tile_feature_table(sections):
    section = _with_tile_features(sections["toy0"])
    assert sthist.pp.spot_features_from_tiles(section, "uni_tiles", table_key="table") == 0
    table = section.tables["table"]
    centres = sthist._core._section.Section.resolve(section, table_key="table").centres
    tile = centres // 170  # no spot lies on a border between tiles
    expected = np.c_[tile, tile[:, 0] * tile[:, 1], np.ones(len(centres))]
    np.testing.assert_array_equal(table.obsm["uni_tiles"], expected.astype(np.float32))
    assert table.uns["sthist_features"] == {"uni_tiles": "uni_tiles"}
    with pytest.raises(ValueError, match="exists already; pass overwrite=True"):
        sthist.pp.spot_features_from_tiles(section, "uni_tiles", table_key="table")
    sthist.pp.spot_features_from_tiles(
        section, "uni_tiles", table_key="table", key_added="uni", encoder="UNI (MahmoodLab/uni)"
    )
    assert table.uns["sthist_features"]["uni"] == "UNI (MahmoodLab/uni)"
    model = sthist.tl.fit(section, method="ridge", **tiny_fit(backbone="obsm:uni"))
    assert model.config.backbone.name == "obsm:uni"
    predicted, _ = sthist.tl.predict(section, model, table_key="table", inplace=False)
    assert np.isfinite(predicted.to_numpy()).all()


def test_spots_in_no_tile_get_nan_features_and_a_warning(sections):
    section = _with_tile_features(sections["toy0"], skip={(1, 1), (2, 1)})
    with pytest.warns(UserWarning, match="2 of 36 spots lie in no tile of 'uni_tiles'"):
        assert sthist.pp.spot_features_from_tiles(section, "uni_tiles", table_key="table") == 2
    features = section.tables["table"].obsm["uni_tiles"]
    assert np.isnan(features).all(axis=1).sum() == 2
    with pytest.raises(ValueError, match="NaN or infinite features for 2 spots"):
        sthist.tl.fit(section, method="ridge", **tiny_fit(backbone="obsm:uni_tiles"))
    with pytest.raises(KeyError, match="No table 'nope'"):
        sthist.pp.spot_features_from_tiles(section, "nope", table_key="table")
    with pytest.raises(ValueError, match="is the table of the tiles"):
        sthist.pp.spot_features_from_tiles(section, "uni_tiles", table_key="uni_tiles", shapes_key="tiles")
