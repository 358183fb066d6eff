"""``sthist.tl.fit``: set up and train CMRCNet or a baseline on sections with measured spots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from sthist._constants import Key
from sthist._core._checks import gene_list
from sthist._core._config import (
    N_TOP_GENES,
    TARGET_SUM,
    ArchitectureConfig,
    PatchConfig,
    TrainingConfig,
)
from sthist._core._docs import doc_params

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from sthist.models import SthistModel

#: Defaults shown in :func:`fit`'s signature come from the configuration dataclasses, their only home.
_ARCHITECTURE, _TRAINING = ArchitectureConfig(), TrainingConfig()


@doc_params
def fit(
    sdata: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
    *,
    genes: Sequence[str] | None = None,
    method: Literal["cmrcnet", "bleep", "regression", "ridge"] = "cmrcnet",
    backbone: str | None = None,
    pretrained: bool | str = True,
    n_top_genes: int | None = N_TOP_GENES,
    exclude_technical: bool = False,
    max_epochs: int = _TRAINING.max_epochs,
    batch_size: int = _TRAINING.batch_size,
    learning_rate: float = _TRAINING.learning_rate,
    weight_decay: float = _TRAINING.weight_decay,
    min_learning_rate: float = _TRAINING.min_learning_rate,
    k: int | None = None,
    smooth_um: float | None = None,
    temperature: float = _ARCHITECTURE.temperature,
    mask_ratio: float = _ARCHITECTURE.mask_ratio,
    embedding_dim: int = _ARCHITECTURE.embedding_dim,
    gene_tokens: int = _ARCHITECTURE.gene_tokens,
    heads: int = _ARCHITECTURE.heads,
    fusion_blocks: int = _ARCHITECTURE.fusion_blocks,
    dropout: float = _ARCHITECTURE.dropout,
    token_layers: int = _ARCHITECTURE.token_layers,
    reconstruction_grid: int = _ARCHITECTURE.reconstruction_grid,
    context_um: float | None = _ARCHITECTURE.context_um,
    ridge_alpha: float | str = _ARCHITECTURE.ridge_alpha,
    detach_target: bool = _ARCHITECTURE.detach_target,
    views: int = _TRAINING.views,
    hed_jitter: float = _TRAINING.hed_jitter,
    fine_tune: bool = _TRAINING.fine_tune,
    patch_size_um: float = PatchConfig.size_um,
    qc_column: str | None = None,
    layer: str = Key.layers.NORMALIZED,
    target_sum: float = TARGET_SUM,
    center_expression: bool = False,
    center_tokens: bool = False,
    stain_normalization: bool = False,
    random_state: int | None = None,
    accelerator: str = "auto",
    devices: int | str | list = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    checkpoint_dir: str | None = None,
    resume_from: str | None = None,
    token_cache=None,
) -> SthistModel:
    """Train a model that predicts expression from H&E patches.

    The scanpy-style entry point: it builds a :class:`sthist.models.SthistModel` (data contract, gene panel,
    encoder and modules) and calls its :meth:`~sthist.models.SthistModel.train`. Defaults are those of
    :class:`sthist.models.ArchitectureConfig` and :class:`sthist.models.TrainingConfig`.

    Parameters
    ----------
    sdata
        {fit_sections}
    {fit_genes}
    {fit_method}
    {fit_backbone}
    max_epochs, batch_size, learning_rate, weight_decay, min_learning_rate
        AdamW with a cosine schedule from ``learning_rate`` to ``min_learning_rate`` over ``max_epochs``.
    {fit_k}
    temperature
        Contrastive temperature τ.
    mask_ratio, embedding_dim, gene_tokens, heads, fusion_blocks, dropout, token_layers, reconstruction_grid, detach_target
        Architecture: fraction of masked token entries, embedding size d, gene tokens, attention heads,
        fusion blocks of the reconstruction branch, dropout, trainable transformer layers over the token grid,
        the side of the regional token grid the reconstruction branch sees, and whether the reconstruction
        target is detached (:class:`sthist.models.ArchitectureConfig`).
    context_um
        Spatial context: the mean token of the spots within this many µm (same section) is added to each
        spot's representation, in training and at prediction (:class:`sthist.models.ArchitectureConfig`);
        ``None`` uses the spot's patch alone.
    ridge_alpha
        Ridge baseline only: ``'cv'`` (strength chosen by cross-validation over the training sections),
        ``'hest'`` (the HEST protocol's fixed strength) or a number.
    views
        Fast path: dihedral views (1-8) of each patch encoded once and sampled during training.
    hed_jitter
        Stain augmentation strength σ (haematoxylin, eosin and DAB concentrations scaled by U(1 − σ, 1 + σ) and
        shifted by U(−σ, σ); Tellez et al. 2018). Fast path: views 1 and up are encoded jittered, once;
        fine-tuning jitters every patch it reads. 0 turns it off.
    fine_tune
        Train the encoder end to end on patches (GPU; mixed precision) instead of the fast path, in which
        the encoder is frozen and its tokens are computed once. On HER2ST-sized cohorts (about 1,200
        training spots) fine-tuning lowered held-out accuracy (``benchmarks/results/finetune_gpu.md``);
        keep the encoder frozen unless there are many more spots. Set ``sthist.settings.num_workers`` so that
        patch reading keeps a GPU fed.
    {fit_patch}
    {qc_column}
    {fit_layer}
    {centering}
    {random_state}
    {trainer}
    {token_cache}

    Returns
    -------
    The trained :class:`sthist.models.SthistModel`. Nothing is written into ``sdata``.

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.toy()
    >>> model = sthist.tl.fit(
    ...     sections, backbone="tiny", patch_size_um=64, max_epochs=2, batch_size=32, views=1, k=5
    ... )
    >>> model.method, len(model.genes) > 0
    ('cmrcnet', True)
    """
    from sthist.models import SthistModel, get_method

    get_method(method)  # an unknown method fails before anything is read
    training = TrainingConfig(
        max_epochs=max_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        min_learning_rate=min_learning_rate,
        views=views,
        hed_jitter=hed_jitter,
        fine_tune=fine_tune,
    )
    architecture = ArchitectureConfig(
        embedding_dim=embedding_dim,
        gene_tokens=gene_tokens,
        heads=heads,
        fusion_blocks=fusion_blocks,
        mask_ratio=mask_ratio,
        temperature=temperature,
        dropout=dropout,
        token_layers=token_layers,
        reconstruction_grid=reconstruction_grid,
        context_um=context_um,
        ridge_alpha=ridge_alpha,
        detach_target=detach_target,
    )
    model = SthistModel(
        sdata,
        method=method,
        genes=gene_list(genes),
        n_top_genes=n_top_genes,
        exclude_technical=exclude_technical,
        backbone=backbone,
        pretrained=pretrained,
        architecture=architecture,
        patch_size_um=patch_size_um,
        k=k,
        smooth_um=smooth_um,
        qc_column=qc_column,
        layer=layer,
        target_sum=target_sum,
        center_expression=center_expression,
        center_tokens=center_tokens,
        stain_normalization=stain_normalization,
        random_state=random_state,
    )
    return model.train(
        training,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=precision,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        token_cache=token_cache,
    )
