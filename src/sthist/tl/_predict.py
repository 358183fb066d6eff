"""``sthist.tl.predict``: expression of every spot of a section from its H&E patches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._checks import (
    check_batch_memory,
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
from sthist._settings import apply_runtime_settings
from sthist.tl._prediction import (
    check_retrieval_weight,
    check_trained_model,
    domain_check,
    predict_patches,
)

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
    retrieval_weight: float | None = None,
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
        (standard deviation over the ``k`` neighbours, same units; NaN for regression/ridge and for CMRCNet's
        decoder alone, ``retrieval_weight=0``) and provenance to
        ``table.uns[key_added]``.
    genes
        Subset of the model's genes to write; all by default.
    k
        Neighbours averaged at retrieval (model's ``k`` by default).
    retrieval_weight
        CMRCNet: share of retrieval in the prediction, the rest being its expression decoder's (the model's
        ``architecture.retrieval_weight`` by default; 1: retrieval alone, 0: the decoder alone).
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
    - ``obsm[key_added + '_uncertainty']``: spread of the retrieved spots (same shape; NaN for regression,
      ridge and the decoder alone);
    - ``uns[key_added]``: provenance (``method``, ``backbone``, ``weights_identity``, ``units``, ``genes``,
      ``k``, ``retrieval_weight``, ``patch_size_um``, ``training_sections``, ``spots_predicted``, ``unreliable_genes``,
      ``model_sha256``, ``sthist_version``).

    With ``inplace=False``, ``(prediction, uncertainty)`` DataFrames and ``sdata`` untouched.

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> sthist.tl.predict(sections["toy1"], model)
    >>> sections["toy1"].tables["table"].obsm["sthist_pred"].shape == (100, len(model.genes))
    True
    """
    from sthist.data import SpotPatchDataset

    check_trained_model(model)
    device = check_device(device)
    chosen = _check_prediction_options(model, genes, k, batch_size, tta_views, patch_size_um, key_added)
    retrieval_weight = check_retrieval_weight(model, retrieval_weight)
    check_batch_memory(batch_size, model.patch.size_px, device)
    smooth_um = model.smooth_um if smooth_um is None else check_smoothing(smooth_um)
    apply_runtime_settings()
    with stage("resolve section"):
        section = Section.resolve(
            sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
            coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel,
        )  # fmt: skip
    sdata = section.sdata  # ``sdata`` may have come resolved, named by the caller (cross-validation)
    table = sdata.tables[section.spots.table_key]
    _check_table(table, model, section.spots.table_key, key_added, inplace=inplace, overwrite=overwrite)
    with stage("patch geometry"):
        dataset = SpotPatchDataset(
            section, patch_size_um=model.patch.size_um, patch_size_px=model.patch.size_px, qc_column=qc_column,
            stain_reference=model.stain_reference,
        )  # fmt: skip
        domain = domain_check(section, model, dataset.geometry(section.name))
    centres_um = section.centres[dataset.spots["row"].to_numpy()] * section.scale
    mean_values, spread_values = predict_patches(
        model, dataset, centres_um, views=tta_views, batch_size=batch_size, device=device, k=k,
        retrieval_weight=retrieval_weight, token_cache=token_cache,
    )  # fmt: skip
    columns = [model.genes.index(g) for g in chosen]
    mean_values, spread_values = mean_values[:, columns], spread_values[:, columns]
    _flag_constant(mean_values, section.name, domain)
    if smooth_um > 0:
        mean_values = smooth(mean_values, centres_um, smooth_um)
    index = pd.Index(dataset.spots["obs_name"].to_numpy())
    prediction = pd.DataFrame(mean_values, index=index, columns=chosen).reindex(table.obs_names)
    uncertainty = pd.DataFrame(spread_values, index=index, columns=chosen).reindex(table.obs_names)
    if not inplace:
        return prediction, uncertainty
    uncertainty_key = Key.obsm.uncertainty(key_added)
    table.obsm[key_added] = prediction
    table.obsm[uncertainty_key] = uncertainty
    table.uns[key_added] = _provenance(
        model,
        chosen,
        k=k,
        spots=len(dataset),
        tta_views=tta_views,
        smooth_um=smooth_um,
        domain=domain,
        retrieval_weight=retrieval_weight,
    )
    logger.info(
        "added table.obsm[%r], table.obsm[%r] and table.uns[%r]", key_added, uncertainty_key, key_added
    )
    return None


def _check_prediction_options(model, genes, k, batch_size, tta_views, patch_size_um, key_added) -> list[str]:
    """Refuse options that do not fit the model; the genes to write (all of the model's by default)."""
    check_key_name(key_added)
    check_positive_integer(batch_size, "batch_size")
    if k is not None:
        check_positive_integer(k, "k")
    genes = gene_list(genes)
    if patch_size_um is not None and not np.isclose(patch_size_um, model.patch.size_um):
        raise ValueError(
            f"The model was trained on {model.patch.size_um:g} µm patches; predicting with "
            f"{patch_size_um:g} µm patches would show it a different tissue scale."
        )
    if isinstance(tta_views, bool) or int(tta_views) != tta_views or not 1 <= tta_views <= 8:
        raise ValueError(f"tta_views must be an integer between 1 and 8 (dihedral views), got {tta_views!r}.")
    if genes is not None:
        unknown = [g for g in genes if g not in model.genes]
        if unknown:
            raise KeyError(
                f"The model was not trained with genes {unknown[:10]}; its panel has {len(model.genes)} genes."
                + did_you_mean(unknown, model.genes)
            )
    reference_spots = model.config.reference_spots
    if k is not None and model.retrieval and k > reference_spots:
        raise ValueError(f"k={k} exceeds the {reference_spots} spots of the reference bank.")
    return list(genes) if genes is not None else model.genes


def _check_table(table, model, table_key: str, key_added: str, *, inplace: bool, overwrite: bool) -> None:
    """Refuse a table whose spots or normalisation do not fit, or whose results would be replaced unasked."""
    if not table.obs_names.is_unique:
        duplicated = table.obs_names[table.obs_names.duplicated()].unique().tolist()
        raise ValueError(
            f"Table {table_key!r} names spots more than once (e.g. {duplicated[:3]}); predictions are "
            "written per spot name. Call `table.obs_names_make_unique()` first."
        )
    if inplace:
        check_table_key_added(table, key_added)
    if inplace and not overwrite:
        existing = [key for key in (key_added, Key.obsm.uncertainty(key_added)) if key in table.obsm] + (
            [f"uns[{key_added!r}]"] if key_added in table.uns else []
        )
        if existing:
            raise ValueError(
                f"Table {table_key!r} already has {existing}; pass overwrite=True or another key_added."
            )
    normalisation = model.config.normalization
    recorded = table.uns.get(Key.uns.NORMALIZATION, {}).get(normalisation.layer)
    if recorded is not None and recorded.get("target_sum") != normalisation.target_sum:
        raise ValueError(
            f"The section's layer {normalisation.layer!r} is log1p of counts per {recorded.get('target_sum')}, "
            f"but the model predicts log1p of counts per {normalisation.target_sum}; renormalise the section "
            "with the model's target_sum so that predictions and observations compare."
        )


def _flag_constant(values: np.ndarray, section_name: str, domain: dict) -> None:
    """Warn (and record in ``domain``) when every spot gets the same prediction: no spatial pattern."""
    if len(values) < 2 or float(np.nanmax(np.nanstd(values, axis=0), initial=0.0)) >= 1e-4:
        return
    import warnings

    message = (
        f"section {section_name!r}: the predictions are the same for every spot (the patches' embeddings all "
        "retrieve the same reference spots or give the same output), so they carry no spatial pattern; the "
        "section is likely out of the model's domain (stain, scale, tissue). Try context_um=None or "
        "stain_normalization=True when fitting."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    domain["warnings"] = [*domain.get("warnings", []), message]
    domain["constant_predictions"] = True


def _provenance(
    model,
    genes: list[str],
    *,
    k,
    spots: int,
    tta_views: int,
    smooth_um: float,
    domain: dict,
    retrieval_weight: float | None = None,
) -> dict:
    """``uns[key_added]``: what predicted, with which settings, on how many spots."""
    config = model.config
    return {
        "method": model.method,
        "backbone": config.backbone.name,
        "weights_identity": config.backbone.weights_identity,
        "model_sha256": config.weights_sha256,  # of the saved model's weights (None: never saved or loaded)
        "units": config.normalization.unit_label,
        "genes": genes,
        "k": int(k if k is not None else model.k) if model.retrieval else None,
        "retrieval_weight": model.retrieval_weight if retrieval_weight is None else retrieval_weight,
        "patch_size_um": config.patch.size_um,
        "training_sections": list(config.training_sections),
        "spots_predicted": int(spots),
        "tta_views": int(tta_views),
        "smooth_um": float(smooth_um),
        "unreliable_genes": [g for g in model.unreliable_genes if g in genes],
        "target_sum": config.normalization.target_sum,
        "domain": domain,
        Key.uns.VERSION: config.versions["sthist"],
    }


def smooth(values: np.ndarray, centres_um: np.ndarray, radius_um: float) -> np.ndarray:
    """Mean of each row of ``values`` over the rows whose centres lie within ``radius_um`` (itself included)."""
    return neighbour_mean(values, centres_um, radius_um).astype(values.dtype, copy=False)
