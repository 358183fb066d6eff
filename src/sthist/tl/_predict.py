"""``sthist.tl.predict``: expression of every spot of a section from its H&E patches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._checks import (
    check_device,
    check_key_name,
    check_positive_integer,
    check_smoothing,
    check_table_key_added,
    did_you_mean,
    gene_list,
)
from sthist._core._config import TTA_VIEWS
from sthist._core._docs import doc_params
from sthist._core._neighbours import neighbour_mean
from sthist._core._section import Section
from sthist._core._timing import stage
from sthist._logging import logger
from sthist._settings import apply_runtime_settings, retained_memory

if TYPE_CHECKING:
    from spatialdata import SpatialData


@doc_params
def predict(
    sdata: SpatialData,
    model,
    *,
    key_added: str = Key.obsm.PREDICTION,
    genes: Sequence[str] | None = None,
    k: int | None = None,
    patch_size_um: float | None = None,
    qc_column: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    tta_views: int = TTA_VIEWS,
    smooth_um: float | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
    inplace: bool = True,
    overwrite: bool = False,
    token_cache=None,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Predict expression at the spots of a section from its H&E image.

    Parameters
    ----------
    sdata
        Section with image, spots and a table annotating them (expression need not be measured); its
        physical scale must be known.
    model
        A fitted :class:`sthist.models.SthistModel`.
    key_added
        Predictions go to ``table.obsm[key_added]`` (DataFrame, spots × genes, log1p of counts per
        ``target_sum`` as in training), the retrieval spread to ``table.obsm[key_added + '_uncertainty']``
        (standard deviation over the ``k`` neighbours, same units; NaN for regression/ridge) and provenance to
        ``table.uns[key_added]``.
    genes
        Subset of the model's genes to write; all by default.
    k
        Neighbours averaged at retrieval (model's ``k`` by default).
    patch_size_um
        Must equal the model's patch size if given (a check, not a setting).
    qc_column
        Boolean ``obs`` column selecting spots; others get NaN.
    batch_size
        Patches encoded at a time.
    device
        Torch device of the encoder: ``'auto'`` (a GPU when torch sees one, else the CPU), ``'cpu'``,
        ``'cuda'``, ``'cuda:1'``.
    tta_views
        Test-time augmentation: predict each of the first ``tta_views`` dihedral views of every patch
        (1-8) and average the predictions and spreads. The default, 4, was chosen for every method by the
        search inside training patients (``benchmarks/results/nested_defaults.md``); 1 predicts the patch
        as scanned, 4× faster to encode.
    smooth_um
        Average each spot's prediction with those of the predicted spots whose centres lie within this
        distance (µm); 0 leaves predictions as they are; ``None``: the model's setting (``model.smooth_um``,
        350 µm for the ridge baseline, 0 for the others, as chosen by ``benchmarks/nested.py``). The spread is
        not smoothed.
    {element_keys}
    {coordinate_system}
    {microns_per_pixel}
    {inplace}
    {overwrite}
    {token_cache}

    Returns
    -------
    ``None`` with ``inplace=True``; writes into the spots' table:

    - ``obsm[key_added]``: predicted expression (DataFrame, spots × genes, log1p units; NaN for spots left
      out by ``qc_column``);
    - ``obsm[key_added + '_uncertainty']``: spread of the retrieved spots (same shape; NaN for regression
      and ridge);
    - ``uns[key_added]``: provenance (``method``, ``backbone``, ``weights_identity``, ``units``, ``genes``,
      ``k``, ``patch_size_um``, ``training_sections``, ``spots_predicted``, ``unreliable_genes``,
      ``sthist_version``).

    With ``inplace=False``, ``(prediction, uncertainty)`` DataFrames and ``sdata`` untouched.

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.toy()
    >>> model = sthist.tl.fit(
    ...     {"toy0": sections["toy0"]}, backbone="tiny", patch_size_um=64, max_epochs=1, batch_size=32, views=1, k=5
    ... )
    >>> sthist.tl.predict(sections["toy1"], model)
    >>> sections["toy1"].tables["table"].obsm["sthist_pred"].shape == (100, len(model.genes))
    True
    """
    import torch

    from sthist.data import SpotPatchDataset, add_context, tokens_of
    from sthist.models import SthistModel

    if not isinstance(model, SthistModel):
        raise TypeError(
            f"model must be a fitted SthistModel (from sthist.tl.fit or sthist.models.load), got {type(model)}."
        )
    if not model.is_trained:
        raise ValueError("The model is not trained yet; call model.train() (or use sthist.tl.fit) first.")
    check_key_name(key_added)
    check_positive_integer(batch_size, "batch_size")
    device = check_device(device)
    if k is not None:
        check_positive_integer(k, "k")
    genes = gene_list(genes)
    contract = model.config
    if patch_size_um is not None and not np.isclose(patch_size_um, contract["patch"]["size_um"]):
        raise ValueError(
            f"The model was trained on {contract['patch']['size_um']:g} µm patches; predicting with "
            f"{patch_size_um:g} µm patches would show it a different tissue scale."
        )
    if isinstance(tta_views, bool) or int(tta_views) != tta_views or not 1 <= tta_views <= 8:
        raise ValueError(f"tta_views must be an integer between 1 and 8 (dihedral views), got {tta_views!r}.")
    smooth_um = model.smooth_um if smooth_um is None else check_smoothing(smooth_um)
    if genes is not None:
        unknown = [g for g in genes if g not in model.genes]
        if unknown:
            raise KeyError(
                f"The model was not trained with genes {unknown[:10]}; its panel has {len(model.genes)} genes."
                + did_you_mean(unknown, model.genes)
            )
    chosen = list(genes) if genes is not None else model.genes
    if k is not None and model.retrieval and k > contract["reference_spots"]:
        raise ValueError(f"k={k} exceeds the {contract['reference_spots']} spots of the reference bank.")
    apply_runtime_settings()
    with stage("resolve section"):
        section = Section.resolve(
            sdata,
            image_key=image_key,
            shapes_key=shapes_key,
            table_key=table_key,
            coordinate_system=coordinate_system,
            microns_per_pixel=microns_per_pixel,
        )
    elements = section.spots
    table = sdata.tables[elements.table_key]
    uncertainty_key = Key.obsm.uncertainty(key_added)
    if not table.obs_names.is_unique:
        duplicated = table.obs_names[table.obs_names.duplicated()].unique().tolist()
        raise ValueError(
            f"Table {elements.table_key!r} names spots more than once (e.g. {duplicated[:3]}); predictions are "
            "written per spot name. Call `table.obs_names_make_unique()` first."
        )
    if inplace:
        check_table_key_added(table, key_added)
    if inplace and not overwrite:
        existing = [key for key in (key_added, uncertainty_key) if key in table.obsm] + (
            [f"uns[{key_added!r}]"] if key_added in table.uns else []
        )
        if existing:
            raise ValueError(
                f"Table {elements.table_key!r} already has {existing}; pass overwrite=True or another key_added."
            )
    normalisation = contract["normalization"]
    recorded = table.uns.get(Key.uns.NORMALIZATION, {}).get(normalisation["layer"])
    if recorded is not None and recorded.get("target_sum") != normalisation.get("target_sum"):
        raise ValueError(
            f"The section's layer {normalisation['layer']!r} is log1p of counts per {recorded.get('target_sum')}, "
            f"but the model predicts log1p of counts per {normalisation.get('target_sum')}; renormalise the section "
            "with the model's target_sum so that predictions and observations compare."
        )
    with stage("patch geometry"):
        dataset = SpotPatchDataset(
            section,
            patch_size_um=contract["patch"]["size_um"],
            patch_size_px=contract["patch"]["size_px"],
            qc_column=qc_column,
            stain_reference=model.stain_reference,
        )
        domain = domain_check(section, model, dataset.geometry(section.name))
    backbone = contract["backbone"]
    # Encoding and retrieval allocate and free the same large blocks batch after batch (similarities to the bank
    # for each chunk of spots): the allocator keeps what they free until both are done, then hands it back.
    with retained_memory():
        with stage("encoding"):
            tokens = tokens_of(
                dataset,
                model.encoder,
                identity=f"{backbone['name']}|{backbone['weights_identity']}",
                views=tta_views,
                batch_size=batch_size,
                device=device,
                token_cache=None if backbone["fine_tuned"] else token_cache,
                grid=model.token_grid(training=False),
            )
        section_mean = tokens[:, 0].float().mean(dim=(0, 1))  # the section's mean channel vector
        centres_um = section.centres[dataset.spots["row"].to_numpy()] * section.scale
        context_um = model.architecture.context_um
        if context_um is not None:
            tokens = add_context(tokens, centres_um, context_um)
        columns = [model.genes.index(g) for g in chosen]
        mean_values = np.zeros((len(dataset), len(columns)), dtype=np.float32)
        spread_values = np.zeros_like(mean_values)
        with stage("retrieval"):
            for view in range(tta_views):
                means, spreads = [], []
                for chunk in tokens[:, view].split(256):
                    mean, spread = model.predict_tokens(chunk, k=k, section_mean=section_mean)
                    means.append(mean)
                    spreads.append(spread)
                mean_values += torch.cat(means)[:, columns].numpy() / tta_views
                spread_values += torch.cat(spreads)[:, columns].numpy() / tta_views
    if len(mean_values) > 1 and float(np.nanmax(np.nanstd(mean_values, axis=0), initial=0.0)) < 1e-4:
        import warnings

        message = (
            f"section {section.name!r}: the predictions are the same for every spot (the patches' embeddings all "
            "retrieve the same reference spots or give the same output), so they carry no spatial pattern; the "
            "section is likely out of the model's domain (stain, scale, tissue). Try context_um=None or "
            "stain_normalization=True when fitting."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        domain["warnings"] = [*domain.get("warnings", []), message]
        domain["constant_predictions"] = True
    if smooth_um > 0:
        mean_values = smooth(mean_values, centres_um, smooth_um)
    index = pd.Index(dataset.spots["obs_name"].to_numpy())
    prediction = pd.DataFrame(mean_values, index=index, columns=chosen).reindex(table.obs_names)
    uncertainty = pd.DataFrame(spread_values, index=index, columns=chosen).reindex(table.obs_names)
    if not inplace:
        return prediction, uncertainty
    table.obsm[key_added] = prediction
    table.obsm[uncertainty_key] = uncertainty
    table.uns[key_added] = {
        "method": model.method,
        "backbone": contract["backbone"]["name"],
        "weights_identity": contract["backbone"]["weights_identity"],
        "units": normalisation.get("units", "log1p normalised counts"),
        "genes": chosen,
        "k": int(k if k is not None else model.k) if model.retrieval else None,
        "patch_size_um": contract["patch"]["size_um"],
        "training_sections": list(contract["training_sections"]),
        "spots_predicted": int(len(dataset)),
        "tta_views": int(tta_views),
        "smooth_um": float(smooth_um),
        "unreliable_genes": [g for g in model.unreliable_genes if g in chosen],
        "target_sum": normalisation.get("target_sum"),
        "domain": domain,
        Key.uns.VERSION: contract["versions"]["sthist"],
    }
    logger.info(
        "added table.obsm[%r], table.obsm[%r] and table.uns[%r]", key_added, uncertainty_key, key_added
    )
    return None


def smooth(values: np.ndarray, centres_um: np.ndarray, radius_um: float) -> np.ndarray:
    """Mean of each row of ``values`` over the rows whose centres lie within ``radius_um`` (itself included)."""
    return neighbour_mean(values, centres_um, radius_um).astype(values.dtype, copy=False)


#: Patches read from a level coarser than the model's patch resolution by more than this factor are upsampled
#: so much that the encoder sees blur it never saw in training: predictions are flagged out of domain.
MAX_UPSAMPLING = 2.0
#: Below this fraction of the model's genes measured in a section, the section is flagged out of domain.
MIN_GENE_OVERLAP = 0.5


def domain_check(section, model, geometry) -> dict:
    """Compare a section with the model: image resolution against the patch resolution, measured genes.

    Warns (``UserWarning``) about each mismatch and returns the record kept in ``uns[key_added]['domain']``:
    ``microns_per_pixel`` of the section, ``upsampling`` (how many times patches are enlarged to the model's
    resolution), ``gene_overlap`` (fraction of the model's genes the section measures; ``None`` when it
    measures none) and ``warnings``.
    """
    import warnings

    patch_resolution = model.config["patch"]["size_um"] / model.config["patch"]["size_px"]
    upsampling = max(geometry.level_microns_per_pixel) / patch_resolution
    messages = []
    if upsampling > MAX_UPSAMPLING:
        messages.append(
            f"section {section.name!r}: its image has {max(geometry.level_microns_per_pixel):.3g} µm/px, but the "
            f"model reads patches at {patch_resolution:.3g} µm/px; patches are upsampled {upsampling:.1f}×, and "
            "predictions from such blurred patches are out of the model's domain."
        )
    measured = section.table.var_names
    overlap = None
    if len(measured):
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
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=3)
    return {
        "microns_per_pixel": float(section.scale),
        "upsampling": round(float(upsampling), 3),
        "gene_overlap": None if overlap is None else round(float(overlap), 4),
        "warnings": messages,
    }
