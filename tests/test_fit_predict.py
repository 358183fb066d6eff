"""tl.fit / tl.predict on the synthetic toy data with the tiny backbone: learning, determinism, save/load, errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _shared import tiny_fit

import sthist
from sthist.tl._fit import merge_fit_options

#: Long enough to learn the toy data: 12 epochs, two views, 10 neighbours, on 112 µm patches.
FAST = tiny_fit(patch_size_um=112.0, k=10, max_epochs=12, training={"views": 2, "learning_rate": 1e-3})


@pytest.fixture(scope="module")
def sections():
    sthist.settings.progress = False
    return sthist.datasets.toy(3, grid=10, n_genes=16, random_state=0)


@pytest.fixture(scope="module")
def fitted(sections):
    train = {k: sections[k] for k in ["toy0", "toy1"]}
    return sthist.tl.fit(train, method="cmrcnet", **FAST)


def _observed(sdata, genes):
    table = sdata.tables["table"]
    return pd.DataFrame(
        sthist.pp.normalize(table, inplace=False).toarray(), index=table.obs_names, columns=table.var_names
    )[genes]


def test_training_lowers_the_loss_and_beats_the_mean(sections, fitted):
    losses = [record["loss"] for record in fitted.history]
    assert len(losses) == FAST["max_epochs"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    assert {"contrastive", "reconstruction", "decoder"} <= set(fitted.history[0])
    prediction, uncertainty = sthist.tl.predict(sections["toy2"], fitted, inplace=False)
    observed = _observed(sections["toy2"], fitted.genes)
    train_mean = np.concatenate(
        [_observed(sections[k], fitted.genes).to_numpy() for k in ["toy0", "toy1"]]
    ).mean(axis=0)
    model_mse = ((prediction - observed) ** 2).to_numpy().mean()
    mean_mse = ((observed - train_mean) ** 2).to_numpy().mean()
    assert model_mse < 0.85 * mean_mse
    correlations = [np.corrcoef(prediction[g], observed[g])[0, 1] for g in fitted.genes]
    assert np.nanmean(correlations) > 0.3
    assert (uncertainty.to_numpy() >= 0).all() and uncertainty.to_numpy().mean() > 0


@pytest.mark.parametrize("method", ["bleep", "regression", "ridge"])
def test_baselines_run_through_the_same_path(sections, method):
    train = {k: sections[k] for k in ["toy0", "toy1"]}
    model = sthist.tl.fit(train, method=method, **FAST)
    prediction, uncertainty = sthist.tl.predict(sections["toy2"], model, inplace=False)
    observed = _observed(sections["toy2"], model.genes)
    assert prediction.shape == observed.shape and np.isfinite(prediction.to_numpy()).all()
    assert np.nanmean([np.corrcoef(prediction[g], observed[g])[0, 1] for g in model.genes]) > 0.2
    if method == "bleep":
        assert "reconstruction" not in model.history[0]
        with pytest.raises(ValueError, match="this bleep model has no decoder"):
            sthist.tl.predict(sections["toy2"], model, retrieval_weight=0.5, inplace=False)
    else:
        assert np.isnan(uncertainty.to_numpy()).all()


def test_predict_writes_obsm_and_refuses_to_overwrite(sections, fitted):
    sdata = sections["toy2"]
    table = sdata.tables["table"]
    sthist.tl.predict(sdata, fitted, key_added="pred_test")
    result = table.obsm["pred_test"]
    assert isinstance(result, pd.DataFrame) and list(result.columns) == fitted.genes
    assert (result.index == table.obs_names).all()
    assert table.uns["pred_test"]["method"] == "cmrcnet" and table.uns["pred_test"]["k"] == 10
    assert "pred_test_uncertainty" in table.obsm
    before = result.copy()
    with pytest.raises(ValueError, match=r"already has \['pred_test'.*overwrite=True"):
        sthist.tl.predict(sdata, fitted, key_added="pred_test", k=3)
    pd.testing.assert_frame_equal(table.obsm["pred_test"], before)
    sthist.tl.predict(sdata, fitted, key_added="pred_test", k=3, overwrite=True)
    assert not table.obsm["pred_test"].equals(before)
    for key in ["pred_test", "pred_test_uncertainty"]:
        del table.obsm[key]
    del table.uns["pred_test"]


def test_fit_leaves_inputs_untouched(sections, fitted):
    # ``fitted`` (trained on toy0 and toy1) is requested so that the fit has run even when this test runs alone.
    assert fitted.is_trained and set(fitted.config.training_sections) == {"toy0", "toy1"}
    for name in ("toy0", "toy1"):
        table = sections[name].tables["table"]
        assert "sthist_log1p" not in table.layers and "sthist_normalization" not in table.uns


def test_save_load_reproduces_predictions(sections, fitted, tmp_path):
    fitted.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["genes"] == fitted.genes and config["patch"] == {"size_um": 112.0, "size_px": 32}
    assert config["normalization"]["target_sum"] == 1e4 and config["seed"] == 0
    assert set(config["training_sections"]) == {"toy0", "toy1"}
    loaded = sthist.models.load(tmp_path / "model")
    first, _ = sthist.tl.predict(sections["toy2"], fitted, inplace=False)
    second, _ = sthist.tl.predict(sections["toy2"], loaded, inplace=False)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        fitted.save(tmp_path / "model")


def test_same_seed_same_numbers(sections):
    train = {"toy0": sections["toy0"]}
    options = merge_fit_options(FAST, {"max_epochs": 3})
    first = sthist.tl.fit(train, random_state=7, **options)
    second = sthist.tl.fit(train, random_state=7, **options)
    for (name, a), (_, b) in zip(
        first.module.state_dict().items(), second.module.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert first.history == second.history
    third = sthist.tl.fit(train, random_state=8, **options)
    assert first.history != third.history


def test_resume_after_interruption(sections, tmp_path):
    train = {"toy0": sections["toy0"]}
    options = merge_fit_options(FAST, {"max_epochs": 4})
    # An interrupted run: stopped after 2 of 4 epochs (its checkpoint says epoch 2).
    import lightning as L

    class Interrupt(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    from unittest import mock

    original = L.Trainer.__init__

    def with_interrupt(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Interrupt()]
        original(self, *args, **kwargs)

    # Lightning shuts down gracefully on an interrupt and exits the process (SystemExit).
    with mock.patch.object(L.Trainer, "__init__", with_interrupt), pytest.raises(SystemExit):
        sthist.tl.fit(train, checkpoint_dir=str(tmp_path), **options)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] < 3
    resumed = sthist.tl.fit(
        train, checkpoint_dir=str(tmp_path), resume_from=str(tmp_path / "last.ckpt"), **options
    )
    assert [record["epoch"] for record in resumed.history] == [0, 1, 2, 3]
    uninterrupted = sthist.tl.fit(train, **options)
    # Epochs before the interruption come from the checkpoint, identical to an uninterrupted run.
    done = len(checkpoint["sthist_history"])
    assert done >= 1 and resumed.history[:done] == uninterrupted.history[:done]
    assert resumed.history[-1]["loss"] < resumed.history[0]["loss"]


def test_retrieval_weight_blends_retrieval_with_the_decoder(sections, fitted):
    """The default prediction is the recorded blend of retrieval and decoder, each end on its own."""
    sdata = sections["toy2"]
    weight = fitted.retrieval_weight
    assert weight == fitted.architecture.retrieval_weight and 0 < weight < 1
    ends = {w: sthist.tl.predict(sdata, fitted, retrieval_weight=w, inplace=False) for w in (0.0, 1.0)}
    default, spread = sthist.tl.predict(sdata, fitted, inplace=False)
    np.testing.assert_allclose(
        default, weight * ends[1.0][0] + (1 - weight) * ends[0.0][0], rtol=1e-5, atol=1e-5
    )
    assert not ends[1.0][0].equals(ends[0.0][0])
    assert np.isnan(ends[0.0][1].to_numpy()).all()  # the decoder alone retrieves no spots: no spread
    np.testing.assert_allclose(spread, ends[1.0][1], rtol=1e-5)
    sthist.tl.predict(sdata, fitted, retrieval_weight=0.0, key_added="decoded")
    try:
        assert sdata.tables["table"].uns["decoded"]["retrieval_weight"] == 0.0
    finally:
        table = sdata.tables["table"]
        del table.obsm["decoded"], table.obsm["decoded_uncertainty"], table.uns["decoded"]


def test_fit_input_errors(sections):
    train = {"toy0": sections["toy0"]}
    with pytest.raises(ValueError, match="Only 100 training spots for batch_size=128"):
        sthist.tl.fit(train, backbone="tiny", batch_size=128)
    with pytest.raises(ValueError, match="k=500 exceeds the 100 training spots"):
        sthist.tl.fit(train, backbone="tiny", batch_size=16, k=500)
    with pytest.raises(ValueError, match="method must be one of"):
        sthist.tl.fit(train, method="magic")
    with pytest.raises(KeyError, match="not measured in toy0"):
        sthist.tl.fit(train, backbone="tiny", genes=["gene000", "NOPE"])


def test_predict_input_errors(sections, fitted):
    sdata = sections["toy2"]
    with pytest.raises(KeyError, match=r"not trained with genes \['NOPE'\]"):
        sthist.tl.predict(sdata, fitted, genes=["NOPE"])
    with pytest.raises(ValueError, match="trained on 112 µm patches"):
        sthist.tl.predict(sdata, fitted, patch_size_um=55)
    with pytest.raises(ValueError, match="k=1000 exceeds"):
        sthist.tl.predict(sdata, fitted, k=1000)
    with pytest.raises(TypeError, match="fitted SthistModel"):
        sthist.tl.predict(sdata, "model")
    for weight in (1.5, -0.2, "half"):
        with pytest.raises(ValueError, match="retrieval_weight must be a number in"):
            sthist.tl.predict(sdata, fitted, retrieval_weight=weight, inplace=False)
    table = sdata.tables["table"]
    table.uns["sthist_normalization"] = {"sthist_log1p": {"target_sum": 1e6}}
    try:
        with pytest.raises(
            ValueError, match="counts per 1000000.0, but the model predicts log1p of counts per 10000"
        ):
            sthist.tl.predict(sdata, fitted, inplace=False)
    finally:
        del table.uns["sthist_normalization"]
    attrs = dict(sdata.attrs)
    sdata.attrs.clear()
    try:
        with pytest.raises(ValueError, match="physical scale"):
            sthist.tl.predict(sdata, fitted, inplace=False)
    finally:
        sdata.attrs.update(attrs)


def test_load_refuses_bad_folders(fitted, tmp_path):
    folder = fitted.save(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a complete sthist model"):
        sthist.models.load(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    newer = dict(config, format_version=99)
    (folder / "config.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="model format 99.*Upgrade sthist"):
        sthist.models.load(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-5] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ValueError, match="does not match the checksum"):
        sthist.models.load(folder)
    broken = {k: v for k, v in config.items() if k != "genes"}
    (folder / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="lacks 'genes'"):
        sthist.models.load(folder)


def test_fine_tuning_trains_the_encoder(sections):
    train = {"toy0": sections["toy0"]}
    model = sthist.tl.fit(
        train, **merge_fit_options(FAST, {"max_epochs": 2, "training": {"fine_tune": True}})
    )
    assert model.config.backbone.fine_tuned is True
    # Same seed, same initial encoder: the fast path keeps it frozen, fine-tuning moves its weights.
    frozen = sthist.tl.fit(
        train, **merge_fit_options(FAST, {"max_epochs": 1, "training": {"fine_tune": False}})
    )
    changed = [
        name
        for name, tensor in model.encoder.model.named_parameters()
        if not torch.equal(tensor, dict(frozen.encoder.model.named_parameters())[name])
    ]
    assert len(changed) == len(list(model.encoder.model.parameters()))
    prediction, _ = sthist.tl.predict(sections["toy2"], model, inplace=False)
    assert np.isfinite(prediction.to_numpy()).all()
    with pytest.raises(ValueError, match="ridge baseline uses frozen features"):
        sthist.tl.fit(train, method="ridge", backbone="tiny", training={"fine_tune": True})
