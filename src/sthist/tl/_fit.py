"""``sthist.tl.fit``: set up and train CMRCNet or a baseline on sections with measured spots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Literal

from sthist._core._checks import check_accelerator, gene_list
from sthist._core._config import ArchitectureConfig, DataConfig, PatchConfig, TrainingConfig
from sthist._core._docs import doc_params

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from sthist.models import SthistModel

#: The options of :func:`fit` that hold a configuration, and its class.
CONFIGS: dict[str, type[ArchitectureConfig] | type[TrainingConfig] | type[DataConfig]] = {
    "architecture": ArchitectureConfig,
    "training": TrainingConfig,
    "data": DataConfig,
}


@doc_params
def fit(
    sdata: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
    *,
    method: Literal["cmrcnet", "bleep", "regression", "ridge"] = "cmrcnet",
    genes: Sequence[str] | None = None,
    backbone: str | None = None,
    pretrained: bool | str = True,
    patch_size_um: float = PatchConfig.size_um,
    qc_column: str | None = None,
    k: int | None = None,
    smooth_um: float | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    random_state: int | None = None,
    architecture: ArchitectureConfig | Mapping | None = None,
    training: TrainingConfig | Mapping | None = None,
    data: DataConfig | Mapping | None = None,
    token_cache=None,
    **trainer_kwargs,
) -> SthistModel:
    """Train a model that predicts expression from H&E patches.

    The scanpy-style entry point: it builds a :class:`sthist.models.SthistModel` (data contract, gene panel,
    encoder and modules) and calls its :meth:`~sthist.models.SthistModel.train`. Every other setting lives
    in the configuration dataclasses, with its default: pass one, or a dict of the fields to change.

    Parameters
    ----------
    sdata
        {fit_sections}
    {fit_method}
    {fit_genes}
    {fit_backbone}
    {fit_patch}
    {qc_column}
    {fit_k}
    max_epochs, batch_size
        Shortcuts for the same fields of ``training`` (they take precedence).
    {random_state}
    architecture
        Trainable modules, spatial context and the ridge strength (:class:`sthist.models.ArchitectureConfig`).
    training
        Optimisation, dihedral views, stain augmentation, fine-tuning (:class:`sthist.models.TrainingConfig`).
    data
        Panel size, technical genes, normalised layer, centring and stain normalisation
        (:class:`sthist.models.DataConfig`).
    {token_cache}
    **trainer_kwargs
        ``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``precision``, ``checkpoint_dir`` and
        ``resume_from`` of :meth:`sthist.models.SthistModel.train` (Lightning's trainer).

    Returns
    -------
    The trained :class:`sthist.models.SthistModel`. Nothing is written into ``sdata``.

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.toy()
    >>> model = sthist.tl.fit(
    ...     sections, backbone="tiny", patch_size_um=64, k=5, max_epochs=2, batch_size=32, training={"views": 1}
    ... )
    >>> model.method, len(model.genes) > 0
    ('cmrcnet', True)
    """
    from sthist.models import SthistModel, get_method

    get_method(method)  # an unknown method fails before anything is read
    _check_trainer_kwargs(trainer_kwargs, SthistModel.train)
    check_accelerator(trainer_kwargs.get("accelerator", "auto"))
    configs = resolve_configs(architecture=architecture, training=training, data=data)
    shortcuts = {"max_epochs": max_epochs, "batch_size": batch_size}
    training_config = replace(configs["training"], **{k: v for k, v in shortcuts.items() if v is not None})
    model = SthistModel(
        sdata,
        method=method,
        genes=gene_list(genes),
        backbone=backbone,
        pretrained=pretrained,
        patch_size_um=patch_size_um,
        qc_column=qc_column,
        k=k,
        smooth_um=smooth_um,
        random_state=random_state,
        architecture=configs["architecture"],
        data=configs["data"],
    )
    return model.train(training_config, token_cache=token_cache, **trainer_kwargs)


def _check_trainer_kwargs(trainer_kwargs: Mapping, train) -> None:
    """Refuse, before any work, keywords the trainer does not take; name the configuration a field belongs to."""
    import inspect

    accepted = set(inspect.signature(train).parameters) - {"self", "training", "token_cache"}
    for name in trainer_kwargs:
        if name in accepted:
            continue
        owner = next((key for key, cls in CONFIGS.items() if name in {f.name for f in fields(cls)}), None)
        hint = (
            f"; it is a field of {CONFIGS[owner].__name__}: pass {owner}={{{name!r}: ...}}" if owner else ""
        )
        raise TypeError(
            f"fit() got an unexpected keyword argument {name!r}{hint} (trainer options: {sorted(accepted)})."
        )


def resolve_configs(**given) -> dict:
    """Each of ``architecture``, ``training`` and ``data`` as its configuration class (``None``: defaults)."""
    return {name: cls.coerce(given.get(name), name) for name, cls in CONFIGS.items()}


def merge_fit_options(base: Mapping | None, override: Mapping | None) -> dict:
    """``tl.fit`` options of ``override`` over those of ``base``, configuration dicts merged field by field."""
    merged = dict(base or {})
    for name, value in (override or {}).items():
        if name in CONFIGS and isinstance(merged.get(name), Mapping) and isinstance(value, Mapping):
            value = {**merged[name], **value}
        merged[name] = value
    return merged
