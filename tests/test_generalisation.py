"""Options that help predictions carry over to unseen sections: token layers, detached reconstruction target,
per-section centring of expression and tokens, spatial context, test-time augmentation, smoothing over
neighbours, the ridge baseline's strength."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _shared import tiny_fit

import sthist
from sthist.models import ArchitectureConfig, ContrastiveModel, TrainingConfig
from sthist.models._setup import recentre
from sthist.tl._fit import merge_fit_options
from sthist.tl._predict import smooth

FAST = tiny_fit(max_epochs=2, training={"views": 2})


def fast(**override) -> dict:
    """:data:`FAST` with ``override`` merged over it (configuration dicts field by field)."""
    return merge_fit_options(FAST, override)


@pytest.fixture(scope="module")
def sections():
    sthist.settings.progress = False
    return sthist.datasets.toy(3, grid=8, n_genes=12, random_state=5)


def test_token_layers_are_trained_and_ignore_the_order_of_tokens():
    torch.manual_seed(0)
    architecture = ArchitectureConfig(embedding_dim=16, heads=2, token_layers=2, context_um=None)
    model = ContrastiveModel(token_dim=8, n_genes=5, architecture=architecture, branches=True).eval()
    assert model.token_encoder is not None and len(model.token_encoder.layers) == 2
    tokens = torch.randn(4, 9, 8)
    rotated = tokens.view(4, 3, 3, 8).rot90(1, dims=(1, 2)).reshape(4, 9, 8)  # a quarter turn of the grid
    with torch.no_grad():
        torch.testing.assert_close(model.image_embedding(rotated), model.image_embedding(tokens))
    losses = model.train().losses(tokens, torch.rand(4, 5))
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.token_encoder.parameters())
    with pytest.raises(ValueError, match="non-negative integer"):
        ArchitectureConfig(token_layers=-1)


@pytest.mark.parametrize("detach", [True, False])
def test_detached_target_keeps_reconstruction_out_of_the_image_head(detach, monkeypatch):
    from sthist.models import _modules

    monkeypatch.setattr(
        _modules, "bleep_loss", lambda image, spot, temperature: (image.sum() + spot.sum()) * 0
    )
    torch.manual_seed(0)
    architecture = ArchitectureConfig(
        embedding_dim=16, heads=2, token_layers=1, detach_target=detach, dropout=0
    )
    model = ContrastiveModel(token_dim=8, n_genes=5, architecture=architecture, branches=True)
    model.losses(torch.randn(6, 9, 8), torch.rand(6, 5))["loss"].backward()
    head = torch.cat([p.grad.abs().flatten() for p in model.image_head.parameters()])
    encoder = torch.cat([p.grad.abs().flatten() for p in model.token_encoder.parameters()])
    assert (head.max() == 0) == detach  # only the joint target pulls the embedding towards the reconstruction
    assert encoder.max() > 0  # the token layers learn from the reconstruction either way


def test_recentre_puts_every_section_on_the_training_mean():
    expression = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [12.0, 2.0]])
    sections = torch.tensor([0, 0, 1, 1])
    centred = recentre(expression, sections)
    torch.testing.assert_close(centred[:2].mean(0), expression.mean(0))
    torch.testing.assert_close(centred[2:].mean(0), expression.mean(0))
    torch.testing.assert_close(centred[1] - centred[0], expression[1] - expression[0])  # within-section kept


def test_centred_expression_fills_the_bank_on_one_level(sections):
    train = {k: sections[k] for k in ("toy0", "toy1")}
    model = sthist.tl.fit(train, **fast(data={"center_expression": True}))
    assert model.centering == {"expression": True, "tokens": False}
    bank = model.tensors["bank.expression"]
    n0 = model.config.training_sections["toy0"]
    torch.testing.assert_close(bank[:n0].mean(0), bank[n0:].mean(0), rtol=1e-4, atol=1e-4)
    predicted, _ = sthist.tl.predict(sections["toy2"], model, inplace=False)
    assert predicted.notna().all().all()


def test_centred_tokens_make_predictions_blind_to_a_section_wide_shift(sections):
    train = {k: sections[k] for k in ("toy0", "toy1")}
    for method in ("cmrcnet", "ridge"):
        model = sthist.tl.fit(train, method=method, **fast(data={"center_tokens": True}))
        assert "tokens.mean" in model.tensors
        tokens = torch.randn(10, 4, 32)
        shift = torch.randn(32)  # a stain change seen in feature space
        plain = model.predict_tokens(tokens, section_mean=tokens.mean(dim=(0, 1)))[0]
        shifted = model.predict_tokens(tokens + shift, section_mean=(tokens + shift).mean(dim=(0, 1)))[0]
        torch.testing.assert_close(plain, shifted, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="mean channel vector"):
            model.predict_tokens(tokens)
    predicted, _ = sthist.tl.predict(sections["toy2"], model, inplace=False)
    assert predicted.notna().all().all()
    tiled = sthist.datasets.toy(3, grid=8, n_genes=12, random_state=5)["toy2"]  # a copy: tiles add a table
    sthist.tl.predict_tiles(tiled, model, stride_um=128)
    assert np.isfinite(tiled.tables["sthist_tiles_table"].X).all()
    with pytest.raises(ValueError, match="fine_tune=True"):
        sthist.models.SthistModel(
            train, data={"center_tokens": True}, backbone="tiny", patch_size_um=64, k=5
        ).train(TrainingConfig(fine_tune=True, max_epochs=1, batch_size=32))


def test_test_time_augmentation_averages_the_dihedral_views(sections):
    model = sthist.tl.fit(
        {k: sections[k] for k in ("toy0", "toy1")}, **fast(architecture={"context_um": None})
    )
    cache = sthist.data.TokenCache()
    once, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, token_cache=cache)
    twice, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, token_cache=cache, tta_views=2)
    dataset = sthist.data.SpotPatchDataset(sections["toy2"], patch_size_um=64, patch_size_px=32)
    tokens = sthist.data.encode_patches(dataset, model.encoder, views=2, grid=1)
    by_hand = (model.predict_tokens(tokens[:, 0])[0] + model.predict_tokens(tokens[:, 1])[0]) / 2
    index = dataset.spots["obs_name"].to_numpy()
    np.testing.assert_allclose(twice.loc[index].to_numpy(), by_hand.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(once.to_numpy(), twice.to_numpy())
    with pytest.raises(ValueError, match="tta_views must be an integer between 1 and 8"):
        sthist.tl.predict(sections["toy2"], model, tta_views=9)


def test_smoothing_over_neighbours_in_microns(sections):
    values = np.array([[1.0], [3.0], [10.0]], dtype=np.float32)
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [200.0, 0.0]])
    np.testing.assert_allclose(smooth(values, centres, 60.0), [[2.0], [2.0], [10.0]])
    model = sthist.tl.fit({k: sections[k] for k in ("toy0", "toy1")}, **FAST)
    plain, _ = sthist.tl.predict(sections["toy2"], model, inplace=False)
    tight, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, smooth_um=1.0)  # spots 150 µm apart
    smoothed, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, smooth_um=160.0)
    pd.testing.assert_frame_equal(plain, tight)
    assert smoothed.var().mean() < plain.var().mean()
    none, _ = sthist.tl.predict(sections["toy2"], model, inplace=False, smooth_um=0)  # 0: off
    pd.testing.assert_frame_equal(plain, none)
    with pytest.raises(ValueError, match="smooth_um must be a distance in µm"):
        sthist.tl.predict(sections["toy2"], model, smooth_um=-5)


def test_each_method_records_its_chosen_prediction_settings(sections):
    """k and smoothing chosen per method (nested_round3.md) are the defaults, recorded in the model for predict."""
    from sthist._core._config import default_k, default_smooth_um

    train = {k: sections[k] for k in ("toy0", "toy1")}
    quick = {key: value for key, value in FAST.items() if key not in ("k", "method")}
    ridge = sthist.tl.fit(train, method="ridge", **quick)
    assert ridge.smooth_um == default_smooth_um("ridge") == 350.0
    cmrcnet = sthist.tl.fit(train, method="cmrcnet", **quick)
    assert cmrcnet.k == default_k("cmrcnet") == 20 and cmrcnet.smooth_um == 0.0
    assert default_k("bleep") == 50
    # predict smooths ridge's predictions over 350 µm unless told otherwise, and records what it did.
    toy2 = sections["toy2"]
    by_default, _ = sthist.tl.predict(toy2, ridge, inplace=False, tta_views=1)
    unsmoothed, _ = sthist.tl.predict(toy2, ridge, inplace=False, tta_views=1, smooth_um=0)
    explicit, _ = sthist.tl.predict(toy2, ridge, inplace=False, tta_views=1, smooth_um=350.0)
    pd.testing.assert_frame_equal(by_default, explicit)
    assert not np.allclose(by_default.to_numpy(), unsmoothed.to_numpy())
    sthist.tl.predict(toy2, ridge, tta_views=1, key_added="ridge_default")
    assert toy2.tables["table"].uns["ridge_default"]["smooth_um"] == 350.0
    # An explicit setting at fit is recorded instead.
    assert sthist.tl.fit(train, method="ridge", **quick, smooth_um=0).smooth_um == 0.0
    with pytest.raises(ValueError, match="smooth_um must be a distance"):
        sthist.tl.fit(train, method="ridge", **quick, smooth_um=float("nan"))


def test_options_from_the_command_line_are_recorded(tmp_path):
    import spatialdata as sd

    from sthist.cli import main

    toy = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=3)
    stores = []
    for name, sdata in toy.items():
        sdata.write(tmp_path / f"{name}.zarr")
        stores.append(str(tmp_path / f"{name}.zarr"))
    fit = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "16", "--k", "5", "--token-layers", "1"]
    fit += ["--detach-target", "--center-expression", "--center-tokens", "--output", str(tmp_path / "model")]
    fit += ["--context-um", "300", "--reconstruction-grid", "2", "--exclude-technical"]
    assert main(["fit", stores[0], *fit]) == 0
    model = sthist.models.load(tmp_path / "model")
    assert model.architecture.token_layers == 1 and model.architecture.detach_target
    assert model.architecture.context_um == 300.0 and model.architecture.reconstruction_grid == 2
    assert model.config.panel.exclude_technical is True
    assert model.centering == {"expression": True, "tokens": True}
    assert (
        main(
            [
                "predict",
                stores[1],
                "--model",
                str(tmp_path / "model"),
                "--tta-views",
                "2",
                "--smooth-um",
                "200",
            ]
        )
        == 0
    )
    provenance = sd.read_zarr(stores[1]).tables["table"].uns["sthist_pred"]
    assert provenance["tta_views"] == 2 and provenance["smooth_um"] == 200.0


def test_the_command_line_can_switch_spatial_context_off(tmp_path):
    from sthist.cli import main

    sdata = sthist.datasets.toy(1, grid=6, n_genes=8, random_state=3)["toy0"]
    sdata.write(tmp_path / "toy0.zarr")
    options = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "16", "--k", "5", "--views", "1"]
    options += ["--context-um", "none", "--output", str(tmp_path / "model")]
    assert main(["fit", str(tmp_path / "toy0.zarr"), *options]) == 0
    model = sthist.models.load(tmp_path / "model")
    assert model.architecture.context_um is None and model.module.context_projection is None


def test_select_settings_ranks_candidates_on_inner_folds_only(sections):
    shared = tiny_fit()
    train = {k: sections[k] for k in ("toy0", "toy1")}  # toy2 plays the outer held-out section: never used
    candidates = {
        "bleep": {"method": "bleep"},
        "ridge centred": {"method": "ridge", "data": {"center_expression": True}},
    }
    ranking = sthist.tl.select_settings(train, candidates, groups="section", fit_options=shared)
    assert list(ranking.index) == sorted(candidates, key=lambda c: -ranking.loc[c, "score"])
    assert ranking.attrs["best"] == ranking.index[0]
    direct = sthist.tl.cross_validate(train, groups="section", methods=["bleep"], fit_options=shared)
    expected = (
        direct[direct["gene_set"].isin(["HEG@50", "HVG@50"])].groupby("gene_set")["pearson_mean"].mean()
    )
    assert ranking.loc["bleep", "score"] == pytest.approx(expected.mean())
    assert set(direct["section"]) == {"toy0", "toy1"}
    with pytest.raises(ValueError, match="names no method"):
        sthist.tl.select_settings(train, {"x": {"k": 3}}, groups="section", fit_options=shared)
    with pytest.raises(ValueError, match="gene_sets must be among"):
        sthist.tl.select_settings(train, candidates, groups="section", gene_sets=["XYZ"])


def test_select_settings_shares_fits_between_candidates_that_differ_only_at_prediction(sections, monkeypatch):
    from sthist.tl import _fit

    shared = tiny_fit(architecture={"context_um": None}, random_state=0)
    train = {k: sections[k] for k in ("toy0", "toy1")}
    fits = []
    original = _fit.fit
    monkeypatch.setattr(_fit, "fit", lambda *a, **o: fits.append(o["method"]) or original(*a, **o))
    candidates = {
        "as scanned": {"method": "bleep", "predict": {"tta_views": 1}},
        "smoothed": {"method": "bleep", "predict": {"tta_views": 1, "smooth_um": 160.0}},
        "ridge": {"method": "ridge"},
    }
    ranking = sthist.tl.select_settings(train, candidates, groups="section", fit_options=shared)
    assert sorted(fits) == [
        "bleep",
        "bleep",
        "ridge",
        "ridge",
    ]  # one fit per fold and method, not per candidate
    for name in ("as scanned", "smoothed"):
        direct = sthist.tl.cross_validate(
            train, groups="section", methods=["bleep"], fit_options=shared,
            predict_options=candidates[name]["predict"],
        )  # fmt: skip
        expected = (
            direct[direct["gene_set"].isin(["HEG@50", "HVG@50"])].groupby("gene_set")["pearson_mean"].mean()
        )
        assert ranking.loc[name, "score"] == pytest.approx(expected.mean())
    assert ranking.loc["as scanned", "score"] != pytest.approx(ranking.loc["smoothed", "score"])


def test_cross_validate_checks_its_prediction_variants(sections):
    shared = tiny_fit()
    with pytest.raises(ValueError, match="not both"):
        sthist.tl.cross_validate(
            sections, groups="section", fit_options=shared, predict_options={}, predict_variants={"a": {}}
        )
    with pytest.raises(ValueError, match="names no variant"):
        sthist.tl.cross_validate(sections, groups="section", fit_options=shared, predict_variants={})
    with pytest.raises(ValueError, match="predict variant 'a' must not set 'inplace'"):
        sthist.tl.cross_validate(
            sections, groups="section", fit_options=shared, predict_variants={"a": {"inplace": True}}
        )


def test_fine_tuning_trains_on_the_centred_targets(sections, monkeypatch):
    from sthist.models import _training

    seen = {}
    original = _training.fit_module

    def recording(module, encoder, train_data, training, **options):
        seen["targets"] = torch.stack([train_data[i]["expression"] for i in range(len(train_data))])
        return original(module, encoder, train_data, training, **options)

    monkeypatch.setattr(_training, "fit_module", recording)
    train = {k: sections[k] for k in ("toy0", "toy1")}
    model = sthist.tl.fit(
        train, **fast(max_epochs=1, training={"fine_tune": True}, data={"center_expression": True})
    )
    torch.testing.assert_close(seen["targets"], model.tensors["bank.expression"])


def test_cross_validation_scores_only_the_genes_a_held_out_section_measures():
    toy = sthist.datasets.toy(3, grid=6, n_genes=10, random_state=2)
    table = toy["toy2"].tables["table"]
    dropped = table.var_names[0]
    toy["toy2"].tables["table"] = table[:, 1:].copy()  # toy2 does not measure the first gene
    shared = tiny_fit(batch_size=16)
    results = sthist.tl.cross_validate(toy, groups="section", methods=["ridge"], fit_options=shared)
    held_out = results[(results["section"] == "toy2") & (results["gene_set"] == "panel")]
    # The model trained without toy2 predicts the first gene; toy2 is scored on the others.
    assert int(held_out["n_genes"].iloc[0]) == int(held_out["panel_size"].iloc[0]) - 1
    from sthist.tl._cross_validate import observed_expression

    assert dropped not in observed_expression(toy["toy2"], [dropped, table.var_names[1]], 1e4).columns


def test_context_token_is_the_mean_token_of_the_neighbourhood():
    # Three spots on a line (0, 100 and 300 µm) and a fourth in another section at the same place as the first.
    tokens = torch.arange(4 * 2 * 3 * 2, dtype=torch.float32).view(
        4, 2, 3, 2
    )  # spots, views, tokens, channels
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [300.0, 0.0], [0.0, 0.0]])
    groups = np.array([0, 0, 0, 1])
    out = sthist.data.add_context(tokens.half(), centres, 150.0, groups=groups)
    assert out.shape == (4, 2, 4, 2) and out.dtype == torch.float16
    assert torch.equal(out[:, :, :3], tokens.half())  # the patch's own tokens are kept, the context is last
    pooled = tokens.mean(dim=2)
    expected = torch.stack([(pooled[0] + pooled[1]) / 2, (pooled[0] + pooled[1]) / 2, pooled[2], pooled[3]])
    torch.testing.assert_close(out[:, :, 3].float(), expected, rtol=1e-3, atol=1e-2)
    with pytest.raises(ValueError, match="context_um must be a positive distance"):
        ArchitectureConfig(context_um=0)
    with pytest.raises(ValueError, match="context_um must be a positive distance"):
        ArchitectureConfig(context_um="wide")


@pytest.mark.parametrize("method", ["cmrcnet", "regression", "ridge"])
def test_context_models_predict_from_the_neighbourhood_and_survive_saving(sections, method, tmp_path):
    train = {k: sections[k] for k in ("toy0", "toy1")}
    model = sthist.tl.fit(train, method=method, **fast(architecture={"context_um": 320.0}))
    assert model.architecture.context_um == 320.0
    cache = sthist.data.TokenCache()
    predicted, _ = sthist.tl.predict(
        sections["toy2"], model, inplace=False, token_cache=cache, tta_views=1, smooth_um=0
    )
    assert np.isfinite(predicted.to_numpy()).all()
    # The neighbourhood matters: the same spots predicted from a section with its spots shuffled in space
    # keep their patches but not their neighbours.
    dataset = sthist.data.SpotPatchDataset(sections["toy2"], patch_size_um=64, patch_size_px=32)
    # Prediction reads the tokens as the model does: their mean, summarised on the device.
    assert model.token_grid(training=False) == 1
    tokens = sthist.data.encode_patches(dataset, model.encoder, views=1, grid=1)
    table = sections["toy2"].tables["table"]
    shapes = sections["toy2"].shapes["spots"]
    centres = np.c_[shapes.geometry.x, shapes.geometry.y][
        dataset.spots["row"].to_numpy()
    ] * sthist.pp.get_microns_per_pixel(sections["toy2"])
    by_hand = model.predict_tokens(sthist.data.add_context(tokens, centres, 320.0)[:, 0])[0]
    index = dataset.spots["obs_name"].to_numpy()
    np.testing.assert_allclose(predicted.loc[index].to_numpy(), by_hand.numpy(), rtol=1e-4, atol=1e-5)
    far = model.predict_tokens(sthist.data.add_context(tokens, centres, 1.0)[:, 0])[0]
    assert not np.allclose(far.numpy(), by_hand.numpy())
    model.save(tmp_path / "model")
    loaded = sthist.models.load(tmp_path / "model")
    assert loaded.smooth_um == model.smooth_um and loaded.k == model.k
    again, _ = sthist.tl.predict(sections["toy2"], loaded, inplace=False, tta_views=1, smooth_um=0)
    np.testing.assert_allclose(again.to_numpy(), predicted.to_numpy(), rtol=1e-5, atol=1e-6)
    assert table.n_obs == len(predicted)


def test_predict_tiles_builds_the_context_over_the_tile_grid(sections):
    model = sthist.tl.fit(
        {k: sections[k] for k in ("toy0", "toy1")}, method="bleep", **fast(architecture={"context_um": 320.0})
    )
    sdata = sthist.datasets.toy(1, grid=8, n_genes=12, random_state=9)["toy0"]
    sthist.tl.predict_tiles(sdata, model, stride_um=150, min_tissue_fraction=0.0)
    tiles = sdata.tables["sthist_tiles_table"]
    assert np.isfinite(tiles.X).all()
    plain = sthist.tl.fit(
        {k: sections[k] for k in ("toy0", "toy1")}, method="bleep", **fast(architecture={"context_um": None})
    )
    sthist.tl.predict_tiles(sdata, plain, stride_um=150, min_tissue_fraction=0.0, key_added="plain")
    assert not np.allclose(sdata.tables["plain_table"].X, tiles.X)
    layered = sthist.tl.fit(
        {k: sections[k] for k in ("toy0", "toy1")},
        method="bleep",
        **fast(architecture={"context_um": 320.0, "token_layers": 1}),
    )
    # Token layers read every token: the tiles keep them all and predict as by hand from the written tiles.
    sthist.tl.predict_tiles(sdata, layered, stride_um=150, min_tissue_fraction=0.0, key_added="layered")
    dataset = sthist.data.SpotPatchDataset(
        sdata, shapes_key="layered", table_key="layered_table", layer=None, patch_size_um=64, patch_size_px=32
    )
    tokens = sthist.data.encode_patches(dataset, layered.encoder, views=1)
    assert tokens.shape[2] == 16  # the tiny encoder's 4 × 4 grid, unsummarised
    centroids = sdata.shapes["layered"].geometry.centroid.get_coordinates().to_numpy()
    centres = centroids[dataset.spots["row"].to_numpy()] * sthist.pp.get_microns_per_pixel(sdata)
    by_hand = layered.predict_tokens(sthist.data.add_context(tokens, centres, 320.0)[:, 0])[0]
    written = sdata.tables["layered_table"].to_df().loc[dataset.spots["obs_name"]]
    np.testing.assert_allclose(written.to_numpy(), by_hand.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match="fine-tuning trains the model without spatial context"):
        tuned = sthist.tl.fit(
            {k: sections[k] for k in ("toy0", "toy1")},
            **fast(training={"fine_tune": True}, architecture={"context_um": 320.0}),
        )
    assert tuned.architecture.context_um is None and tuned.module.context_projection is None
    predicted, _ = sthist.tl.predict(sections["toy2"], tuned, inplace=False)
    assert np.isfinite(predicted.to_numpy()).all()


def test_ridge_strength_is_chosen_on_training_sections(sections):
    from sthist.models._ridge import ALPHAS, choose_alpha, fit_ridge

    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(300, 3, generator=generator)
    features = torch.cat([signal, torch.randn(300, 60, generator=generator)], dim=1).double()
    expression = (
        signal @ torch.randn(3, 5, generator=generator) + 3 * torch.randn(300, 5, generator=generator)
    ).double()
    groups = np.repeat([0, 1, 2], 100)
    best, scores = choose_alpha(features, expression, groups, n_components=40)
    assert best in ALPHAS and set(scores) == set(ALPHAS)
    assert scores[best] > scores[ALPHAS[0]]  # noisy targets: some shrinkage beats almost none
    hest = fit_ridge(features, expression, n_components=40, alpha="hest")
    assert float(hest["ridge.alpha"]) == pytest.approx(100 / (40 * 5))
    assert (
        float(fit_ridge(features, expression, n_components=40, alpha="cv", groups=groups)["ridge.alpha"])
        == best
    )
    with pytest.raises(ValueError, match="alpha must be 'hest', 'cv' or a positive number"):
        fit_ridge(features, expression, alpha=-1.0)
    with pytest.raises(ValueError, match="ridge_alpha must be"):
        ArchitectureConfig(ridge_alpha="loo")
    model = sthist.tl.fit(
        {k: sections[k] for k in ("toy0", "toy1")},
        method="ridge",
        **fast(architecture={"ridge_alpha": "hest"}),
    )
    assert model.architecture.ridge_alpha == "hest"


def test_loader_workers_live_for_the_whole_fit(sections, monkeypatch):
    # With loader workers the fit keeps them across epochs, and pins batches only when they go to a GPU.
    from sthist.models import _training

    seen = []
    real = torch.utils.data.DataLoader

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_training.torch.utils.data, "DataLoader", recording)
    monkeypatch.setattr(sthist.settings, "num_workers", 1)
    model = sthist.tl.fit({"toy0": sections["toy0"]}, **fast(max_epochs=2))
    assert model.is_trained and len(model.history) == 2
    assert seen and seen[-1]["num_workers"] == 1 and seen[-1]["persistent_workers"] is True
    assert seen[-1]["pin_memory"] is False  # the CPU


def test_ridge_holds_new_features_to_the_training_range():
    # Channels almost silent on the training spots (one spot carries a trace) but firing on a new section get a
    # tiny training deviation; standardised, they reach thousands of deviations there and swamp the ridge's
    # predictions. Held to the training range they cannot, and channels constant in training count for nothing.
    from sthist.models._ridge import fit_ridge, predict_ridge

    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(3, 6, generator=generator)

    def section(n: int, silent: bool) -> tuple[torch.Tensor, torch.Tensor]:
        signal = torch.randn(n, 3, generator=generator)
        noise = torch.randn(n, 10, generator=generator)
        if silent:
            sparse = torch.zeros(n, 4)
            sparse[0] = 1e-3  # a trace on one training spot
        else:
            sparse = torch.rand(n, 4, generator=generator)  # the same channels fire on the new section
        dead = torch.zeros(n, 2) if silent else torch.rand(n, 2, generator=generator)  # constant in training
        features = torch.cat([signal, noise, sparse, dead], dim=1).double()
        expression = signal @ weights + 0.5 * torch.randn(n, 6, generator=generator)
        return features, expression.double()

    def mean_r(predicted: torch.Tensor, observed: torch.Tensor) -> float:
        return float(
            np.mean([np.corrcoef(predicted[:, g], observed[:, g])[0, 1] for g in range(observed.shape[1])])
        )

    train_x, train_y = section(300, silent=True)
    test_x, test_y = section(200, silent=False)
    state = fit_ridge(train_x, train_y, n_components=19, alpha=1.0)
    assert torch.equal(state["ridge.low"], train_x.min(0).values.float())
    assert torch.equal(state["ridge.high"], train_x.max(0).values.float())
    held = mean_r(predict_ridge(state, test_x), test_y)
    as_given = {
        k: v for k, v in state.items() if k not in ("ridge.low", "ridge.high")
    }  # a model saved before
    unheld = mean_r(predict_ridge(as_given, test_x), test_y)
    assert held > 0.8 and unheld < 0.5, (held, unheld)
    # The constant channels change nothing; the training spots themselves are predicted as before.
    quiet = test_x.clone()
    quiet[:, -2:] = 0
    torch.testing.assert_close(predict_ridge(state, test_x), predict_ridge(state, quiet))
    torch.testing.assert_close(predict_ridge(state, train_x), predict_ridge(as_given, train_x))


def test_ridge_training_range_is_saved_with_the_model(sections, tmp_path):
    model = sthist.tl.fit({k: sections[k] for k in ("toy0", "toy1")}, method="ridge", **fast())
    assert {"ridge.low", "ridge.high"} <= set(model.tensors)
    assert bool((model.tensors["ridge.low"] <= model.tensors["ridge.high"]).all())
    model.save(tmp_path / "ridge")
    loaded = sthist.models.load(tmp_path / "ridge")
    for name in ("ridge.low", "ridge.high"):
        torch.testing.assert_close(loaded.tensors[name], model.tensors[name], rtol=0, atol=0)
    first, _ = sthist.tl.predict(sections["toy2"], model, inplace=False)
    second, _ = sthist.tl.predict(sections["toy2"], loaded, inplace=False)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
