"""The prediction core shared by :func:`sthist.tl.predict` and :func:`sthist.tl.predict_tiles`.

encode → context → predict → spread: patches are encoded as the model reads them (from a token cache, or a
chunk at a time), each gets its neighbourhood's context token when the model uses one, and the model predicts
each dihedral view, the views averaged. Both entry points also share the model check and the domain check.
"""

from __future__ import annotations

import warnings

import numpy as np

from sthist._core._timing import stage
from sthist._settings import retained_memory

#: Patches encoded to estimate a section's mean channel vector for models that centre tokens per section,
#: when the section is encoded a chunk at a time.
TOKEN_MEAN_PATCHES = 512
#: Spots predicted per call of the model when all tokens are at hand.
PREDICT_CHUNK = 256
#: Patches read from a level coarser than the model's training images by more than this factor are blurrier
#: than any the encoder saw in training: predictions are flagged out of domain.
MAX_UPSAMPLING = 2.0
#: Below this fraction of the model's genes measured in a section, the section is flagged out of domain.
MIN_GENE_OVERLAP = 0.5


def check_retrieval_weight(model, weight) -> float | None:
    """``weight`` checked against ``model`` (:meth:`sthist.models.SthistModel.blend_weight`); None stays None."""
    return None if weight is None else model.blend_weight(weight)


def check_trained_model(model) -> None:
    """Refuse anything but a trained :class:`sthist.models.SthistModel`."""
    from sthist.models import SthistModel

    if not isinstance(model, SthistModel):
        raise TypeError(
            f"model must be a fitted SthistModel (from sthist.tl.fit or sthist.models.load), got {type(model)}."
        )
    if not model.is_trained:
        raise ValueError("The model is not trained yet; call model.train() (or use sthist.tl.fit) first.")


def predict_patches(
    model,
    dataset,
    centres_um: np.ndarray,
    *,
    views: int = 1,
    batch_size: int,
    device: str,
    k: int | None = None,
    retrieval_weight: float | None = None,
    token_cache=None,
    chunk: int | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted expression and its spread (patches × model genes) for every patch of ``dataset``.

    ``chunk=None`` encodes every patch at once (through ``token_cache`` when given); a number encodes that
    many at a time (each chunk read from ``token_cache``'s folder when it keeps one), so that memory is
    bounded by the chunk: without spatial context each chunk is predicted
    as soon as it is encoded, with it the tokens the model reads are kept until every neighbourhood is known.
    ``centres_um`` are the patches' centres in µm (the context's neighbourhoods); ``progress`` a tqdm bar
    advanced per chunk. ``k`` and ``retrieval_weight`` replace the model's own for this prediction.
    """
    # Encoding and retrieval allocate and free the same large blocks batch after batch: the allocator keeps
    # what they free until both are done, then hands it back once.
    with retained_memory():
        if chunk is None:
            with stage("encoding"):
                tokens = _encode(model, dataset, views, batch_size, device, token_cache=token_cache)
            section_mean = tokens[:, 0].float().mean(dim=(0, 1))  # the section's mean channel vector
            with stage("retrieval"):
                return _predict_tokens(
                    model,
                    tokens,
                    centres_um,
                    k=k,
                    retrieval_weight=retrieval_weight,
                    section_mean=section_mean,
                    chunk=PREDICT_CHUNK,
                )
        section_mean = _sampled_section_mean(model, dataset, batch_size, device)
        starts = range(0, len(dataset), chunk)
        context = model.architecture.context_um is not None
        kept, means, spreads = [], [], []
        for start in starts:
            indices = range(start, min(start + chunk, len(dataset)))
            tokens = _encode(
                model, dataset, views, batch_size, device, token_cache=token_cache, indices=indices
            )
            if context:
                kept.append(tokens)
            else:
                mean, spread = _predict_tokens(
                    model,
                    tokens,
                    None,
                    k=k,
                    retrieval_weight=retrieval_weight,
                    section_mean=section_mean,
                    chunk=chunk,
                )
                means.append(mean)
                spreads.append(spread)
            if progress is not None:
                progress.update(len(indices))
            del tokens
        if context:
            import torch

            tokens = torch.cat(kept)
            del kept
            return _predict_tokens(
                model,
                tokens,
                centres_um,
                k=k,
                retrieval_weight=retrieval_weight,
                section_mean=section_mean,
                chunk=chunk,
            )
    return np.concatenate(means), np.concatenate(spreads)


def _encode(model, dataset, views: int, batch_size: int, device: str, *, token_cache=None, indices=None):
    """Tokens of the patches (patches × views × tokens × channels), summarised as the model reads them."""
    from sthist.data import chunk_tokens, tokens_of

    grid = model.token_grid(training=False)
    backbone = model.config.backbone
    options = {
        "identity": backbone.identity, "views": views, "batch_size": batch_size, "device": device,
        "token_cache": None if backbone.fine_tuned else token_cache, "grid": grid,
    }  # fmt: skip
    if indices is not None:
        return chunk_tokens(dataset, model.encoder, indices, **options)
    return tokens_of(dataset, model.encoder, **options)


def _sampled_section_mean(model, dataset, batch_size: int, device: str):
    """The section's mean channel vector, from patches spread over it (only for models that centre tokens)."""
    from sthist.data import encode_patches

    if not model.centering["tokens"]:
        return None
    n = len(dataset)
    sample = np.unique(np.linspace(0, n - 1, min(n, TOKEN_MEAN_PATCHES)).astype(int))
    tokens = encode_patches(
        dataset, model.encoder, views=1, batch_size=batch_size, device=device, indices=sample, grid=1
    )
    return tokens[:, 0].float().mean(dim=(0, 1))


def _predict_tokens(
    model, tokens, centres_um, *, k, retrieval_weight, section_mean, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Context token added (when the model uses one), each view predicted ``chunk`` patches at a time, averaged."""
    import torch

    from sthist.data import add_context

    context_um = model.architecture.context_um
    if context_um is not None:
        tokens = add_context(tokens, centres_um, context_um)
    n_views = tokens.shape[1]
    mean_values = np.zeros((len(tokens), len(model.genes)), dtype=np.float32)
    spread_values = np.zeros_like(mean_values)
    for view in range(n_views):
        means, spreads = [], []
        for part in tokens[:, view].split(chunk):
            mean, spread = model.predict_tokens(
                part, k=k, retrieval_weight=retrieval_weight, section_mean=section_mean
            )
            means.append(mean)
            spreads.append(spread)
        if n_views == 1:
            return torch.cat(means).numpy(), torch.cat(spreads).numpy()
        mean_values += torch.cat(means).numpy() / n_views
        spread_values += torch.cat(spreads).numpy() / n_views
    return mean_values, spread_values


def domain_check(section, model, geometry) -> dict:
    """Compare a section with the model: image resolution against the patch resolution, measured genes.

    Warns (``UserWarning``) about each mismatch and returns the record kept in ``uns[key_added]['domain']``:
    ``microns_per_pixel`` of the section, ``upsampling`` (how many times patches are enlarged to the model's
    resolution; flagged when the image is more than ``MAX_UPSAMPLING`` times coarser than the model's
    training images, or than its patches for models that did not record them), ``gene_overlap`` (fraction of the model's genes the section measures; ``None`` when it
    measures none) and ``warnings``.
    """
    patch_resolution = model.config.patch.microns_per_pixel
    image_resolution = max(geometry.level_microns_per_pixel)
    upsampling = image_resolution / patch_resolution
    trained = model.config.image_microns_per_pixel
    messages = []
    if trained:
        # Compared with the images the model was trained on: training on coarse images (Visium hires) and
        # predicting on the same kind is in the model's domain, however much the patches are upsampled.
        coarsest = max(trained.values())
        if image_resolution / coarsest > MAX_UPSAMPLING:
            messages.append(
                f"section {section.name!r}: its image has {image_resolution:.3g} µm/px, {image_resolution / coarsest:.1f}× "
                f"coarser than the {coarsest:.3g} µm/px of the model's training images; its patches are blurrier "
                "than any the model was trained on, so predictions are out of the model's domain."
            )
    elif upsampling > MAX_UPSAMPLING:
        messages.append(
            f"section {section.name!r}: its image has {image_resolution:.3g} µm/px, but the "
            f"model reads patches at {patch_resolution:.3g} µm/px; patches are upsampled {upsampling:.1f}×, and "
            "predictions from such blurred patches are out of the model's domain."
        )
    overlap = _gene_overlap(section, model, messages)
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=3)
    return {
        "microns_per_pixel": float(section.scale),
        "upsampling": round(float(upsampling), 3),
        "gene_overlap": None if overlap is None else round(float(overlap), 4),
        "warnings": messages,
    }


def _gene_overlap(section, model, messages: list[str]) -> float | None:
    """Fraction of the model's genes the section measures (``None``: none measured); a message when low."""
    measured = section.table.var_names
    if not len(measured):
        return None
    shared = sum(g in measured for g in model.genes)
    overlap = shared / len(model.genes)
    if overlap < MIN_GENE_OVERLAP:
        upper = {str(g).upper() for g in measured}
        case_only = sum(g.upper() in upper for g in model.genes) - shared
        hint = (
            f" ({case_only} more match when case is ignored: another species?)"
            if case_only > len(model.genes) * MIN_GENE_OVERLAP / 2
            else ""
        )
        messages.append(
            f"section {section.name!r} measures {shared} of the model's {len(model.genes)} genes{hint}; it "
            "does not look like the data the model was trained on."
        )
    return overlap
