"""The user-facing model: set up, train, save, load; strategies per method; backbone registry; settings."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from _shared import TINY_FIT, resigned
from safetensors.torch import load_file

import sthist
from sthist._core._config import METHOD_NAMES
from sthist.models import (
    METHODS,
    ArchitectureConfig,
    BackboneConfig,
    SthistModel,
    TrainingConfig,
    get_backbone_config,
    register_backbone,
)

#: The set-up options of the shared tiny fit (backbone, patch, neighbours), without its training options.
FAST = {key: TINY_FIT[key] for key in ("backbone", "patch_size_um", "k")}


@pytest.fixture(scope="module")
def sections():
    sthist.settings.progress = False
    return sthist.datasets.toy(2, grid=6, n_genes=10, random_state=3)


def test_model_sets_up_then_trains_itself(sections):
    model = SthistModel(sections, architecture=ArchitectureConfig(embedding_dim=32, heads=4), **FAST)
    assert not model.is_trained and "not trained" in repr(model)
    with pytest.raises(ValueError, match="not trained yet"):
        model.predict_tokens(torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="not trained yet"):
        model.save("unused")
    returned = model.train(TrainingConfig(max_epochs=2, batch_size=16, views=1))
    assert returned is model and model.is_trained and len(model.history) == 2
    assert model.training == TrainingConfig(max_epochs=2, batch_size=16, views=1)
    assert model.architecture.embedding_dim == 32 and model.patch.size_um == 64
    # tl.fit is the same two steps with the same defaults.
    fitted = sthist.tl.fit(
        sections,
        architecture={"embedding_dim": 32, "heads": 4},
        max_epochs=2,
        batch_size=16,
        training={"views": 1},
        **FAST,
    )
    for (name, a), (_, b) in zip(
        model.module.state_dict().items(), fitted.module.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_fit_defaults_are_the_config_defaults(monkeypatch):
    import inspect

    from sthist.models import DataConfig

    # The dataclasses are the only home of the defaults: tl.fit copies none of their fields into its signature
    # (the max_epochs/batch_size shortcuts default to None, so that the training config's defaults apply) ...
    parameters = inspect.signature(sthist.tl.fit).parameters
    for name, config in (
        ("architecture", ArchitectureConfig),
        ("training", TrainingConfig),
        ("data", DataConfig),
    ):
        assert parameters[name].default is None, name
        for field in config().to_dict():
            assert field not in parameters or parameters[field].default is None, field
    # ... and the model it sets up and trains gets the dataclasses' defaults when given none of them.
    seen = {}

    def recording(self, training=None, **options):
        seen.update(self.setup_options(), training=training)
        return self

    monkeypatch.setattr(SthistModel, "train", recording)
    sthist.tl.fit(sthist.datasets.toy(1, grid=6, n_genes=8)["toy0"], backbone="tiny", method="ridge")
    assert seen["architecture"] == ArchitectureConfig() and seen["training"] == TrainingConfig()
    assert seen["data"] == DataConfig()


def test_save_and_load_classmethod_and_older_format(sections, tmp_path):
    model = sthist.tl.fit(
        sections, method="bleep", max_epochs=1, batch_size=16, training={"views": 1}, **FAST
    )
    model.save(tmp_path / "model")
    loaded = SthistModel.load(tmp_path / "model")
    tokens = torch.randn(3, 4, 32)
    torch.testing.assert_close(loaded.predict_tokens(tokens)[0], model.predict_tokens(tokens)[0])
    assert loaded.setup_options() == model.setup_options()
    with pytest.raises(ValueError, match="no training sections"):
        loaded.train()
    # A model saved in format 1 (flat hyperparameters, architecture 'dim') still loads.
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    architecture = dict(config["architecture"])
    architecture["dim"] = architecture.pop("embedding_dim")
    training = config.pop("training")
    old = {
        **config,
        "format_version": 1,
        "architecture": architecture,
        "hyperparameters": {**{k: v for k, v in training.items() if k != "fine_tune"}, "k": config.pop("k"),
                            "qc_column": config.pop("qc_column")},
    }  # fmt: skip
    (tmp_path / "model" / "config.json").write_text(json.dumps(old))
    upgraded = sthist.models.load(tmp_path / "model")
    assert (
        upgraded.k == 5
        and upgraded.architecture == model.architecture
        and upgraded.training == model.training
    )
    torch.testing.assert_close(upgraded.predict_tokens(tokens)[0], model.predict_tokens(tokens)[0])


def test_cmrcnet_saved_before_the_decoder_loads_as_retrieval_alone(sections, tmp_path):
    model = sthist.tl.fit(
        sections, max_epochs=1, batch_size=16, training={"views": 1}, architecture={"decoder_weight": 0.0},
        **FAST,
    )  # fmt: skip
    assert model.module.decoder is None and model.retrieval_weight == 1.0
    model.save(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    for name in ("decoder_weight", "retrieval_weight", "reconstruction_weight", "reconstruction_share"):
        del config["architecture"][name]  # what a model saved before these settings holds
    resigned(tmp_path / "model", load_file(tmp_path / "model" / "model.safetensors"), config)
    loaded = sthist.models.load(tmp_path / "model")
    assert loaded.architecture.decoder_weight == 0 and loaded.architecture.retrieval_weight == 1
    assert loaded.architecture.reconstruction_weight == 1 and loaded.module.reconstruction is not None
    assert loaded.architecture.reconstruction_share == 1  # it reconstructed every spot
    tokens = torch.randn(3, 4, 32)
    torch.testing.assert_close(loaded.predict_tokens(tokens)[0], model.predict_tokens(tokens)[0])
    with pytest.raises(ValueError, match="no decoder"):
        sthist.tl.predict(sections["toy0"], loaded, retrieval_weight=0.5, inplace=False)


def test_one_strategy_per_method():
    assert tuple(METHODS) == METHOD_NAMES
    assert [m.name for m in METHODS.values() if m.retrieval] == ["cmrcnet", "bleep"]
    assert [m.name for m in METHODS.values() if not m.trainable] == ["ridge"]
    architecture = ArchitectureConfig(embedding_dim=16, heads=2)
    cmrcnet = METHODS["cmrcnet"].build(token_dim=8, n_genes=5, architecture=architecture)
    bleep = METHODS["bleep"].build(token_dim=8, n_genes=5, architecture=architecture)
    assert cmrcnet.reconstruction is not None and bleep.reconstruction is None
    assert METHODS["ridge"].build(token_dim=8, n_genes=5, architecture=architecture) is None
    with pytest.raises(ValueError, match="method must be one of"):
        sthist.models.get_method("knn")


def test_registry_warns_on_overwrite_and_reads_timm_configs_without_building():
    config = get_backbone_config("tiny")
    with pytest.warns(UserWarning, match="'tiny' was registered already"):
        register_backbone(config)
    new = BackboneConfig(
        "tiny_copy_for_test", 32, (0.5,) * 3, (0.25,) * 3, 32, "random", "BSD-3-Clause", config.build
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_backbone(new)
    timm_config = get_backbone_config("resnet18")
    assert timm_config.embed_dim is None and timm_config.input_size == 224  # nothing built to read it


def test_offline_setting_refuses_hub_weights(monkeypatch):
    monkeypatch.setattr(sthist.settings, "offline", True)
    with pytest.raises(ValueError, match="settings.offline"):
        sthist.models.create_encoder("resnet10t", pretrained=True)
    with pytest.raises(ValueError, match="True or False"):
        sthist.settings.offline = "yes"
