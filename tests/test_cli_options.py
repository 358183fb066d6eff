"""Flags generated from the configuration dataclasses: every field has one, with its default and help."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

import sthist
from sthist.cli import build_parser
from sthist.cli._fit import CONFIG_CLASSES, TRAINER_DEFAULTS
from sthist.cli._options import flag_name


def _fit_args(*flags):
    return build_parser().parse_args(["fit", "a.zarr", "--output", "m", *flags])


def _fit_help() -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return " ".join(subparsers.choices["fit"].format_help().split())


@pytest.mark.parametrize("config_class", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_config_field_has_a_fit_flag_with_its_default(config_class):
    args = _fit_args()
    help_text = _fit_help()
    for item in fields(config_class):
        assert getattr(args, item.name) == item.default, item.name
        assert flag_name(item.name) in help_text, item.name
        # The field's own help text is what the flag shows.
        first_words = " ".join(item.metadata["help"].replace("``", "").split()[:3])
        assert first_words in help_text, item.name


def test_help_shows_the_true_defaults():
    help_text = _fit_help()
    assert "--context-um CONTEXT_UM" in help_text
    # The last mention of a flag is its entry in the option list (the usage line names it first).
    context_help = help_text.split("--context-um CONTEXT_UM")[-1].split("--ridge-alpha")[0]
    assert "(default: 300)" in context_help
    assert "(default: 30)" in help_text.split("--max-epochs MAX_EPOCHS")[-1].split("--batch-size")[0]


def test_optional_settings_accept_none_and_booleans_have_no_forms():
    args = _fit_args("--context-um", "none", "--n-top-genes", "all", "--fine-tune", "--no-detach-target")
    assert args.context_um is None and args.n_top_genes is None
    assert args.fine_tune is True and args.detach_target is False
    assert _fit_args("--context-um", "150").context_um == 150.0
    assert _fit_args("--ridge-alpha", "hest").ridge_alpha == "hest"
    assert _fit_args("--ridge-alpha", "2.5").ridge_alpha == 2.5
    assert _fit_args("--epochs", "3").max_epochs == 3  # the alias of --max-epochs


def test_a_bad_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit):
        _fit_args("--context-um", "far")
    assert "expected float or None, got 'far'" in capsys.readouterr().err


def test_trainer_flags_default_as_the_model_trains():
    signature = inspect.signature(sthist.models.SthistModel.train)
    args = _fit_args()
    for name, default in TRAINER_DEFAULTS.items():
        assert signature.parameters[name].default == default == getattr(args, name)


def test_fit_takes_a_dozen_options_and_the_configs():
    parameters = inspect.signature(sthist.tl.fit).parameters
    assert {"architecture", "training", "data", "trainer_kwargs"} <= set(parameters)
    assert len(parameters) <= 18
    defaults = {name: p.default for name, p in parameters.items()}
    # No default of a configuration field is copied into the signature.
    config_fields = {item.name for cls in CONFIG_CLASSES for item in fields(cls)}
    assert config_fields & set(parameters) == {"max_epochs", "batch_size"}
    assert defaults["max_epochs"] is None and defaults["batch_size"] is None


def test_configs_from_dicts_and_merged_options():
    from sthist.models import ArchitectureConfig, TrainingConfig
    from sthist.tl._fit import merge_fit_options, resolve_configs

    configs = resolve_configs(architecture={"context_um": None}, training=TrainingConfig(views=2))
    assert configs["architecture"] == ArchitectureConfig(context_um=None)
    assert configs["training"].views == 2 and configs["data"] == sthist.models.DataConfig()
    with pytest.raises(TypeError, match="architecture must be a ArchitectureConfig or a dict"):
        resolve_configs(architecture=["context_um"])
    with pytest.raises(ValueError, match="Unknown TrainingConfig fields"):
        resolve_configs(training={"context_um": 3})
    merged = merge_fit_options(
        {"k": 5, "training": {"views": 1, "max_epochs": 2}}, {"training": {"views": 4}, "method": "bleep"}
    )
    assert merged == {"k": 5, "training": {"views": 4, "max_epochs": 2}, "method": "bleep"}


def test_fit_refuses_an_unknown_trainer_option(toy):
    with pytest.raises(
        TypeError,
        match=r"unexpected keyword argument 'views'; it is a field of TrainingConfig: pass training=\{'views': ...\}",
    ):
        sthist.tl.fit(toy, backbone="tiny", patch_size_um=64, k=5, max_epochs=1, views=2)


def test_config_docstrings_list_their_fields():
    for config_class in CONFIG_CLASSES:
        doc = config_class.__doc__
        assert "Attributes\n    ----------" in doc
        for item in fields(config_class):
            assert f"\n    {item.name}\n" in doc, item.name
