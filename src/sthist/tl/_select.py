"""``sthist.tl.select_settings``: choose settings by cross-validation inside the training sections only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from sthist._core._docs import doc_params
from sthist._logging import logger
from sthist.tl._cross_validate import cross_validate
from sthist.tl._fit import merge_fit_options

if TYPE_CHECKING:
    from spatialdata import SpatialData


@doc_params
def select_settings(
    sections: Mapping[str, SpatialData],
    candidates: Mapping[str, Mapping],
    *,
    groups: str = "patient",
    gene_sets: Sequence[str] = ("HEG", "HVG"),
    n_top: int = 50,
    fit_options: Mapping | None = None,
    token_cache=None,
) -> pd.DataFrame:
    """Rank candidate settings by leave-one-group-out cross-validation over ``sections`` alone.

    Give it the training sections of an outer fold: the held-out sections of that fold then play no part in
    the choice, so the chosen settings can be judged on them without optimism (nested cross-validation).
    Each candidate is fitted and evaluated on the same inner folds; its score is the mean, over
    ``gene_sets``, of the mean Pearson r over the inner held-out sections. Candidates that differ only in
    their ``predict`` options share their fits, so prediction-time settings cost one fit per fold.

    Parameters
    ----------
    sections
        Dict of section name → SpatialData: the sections to choose on (a training fold).
    candidates
        Candidate name → options: ``method`` and further keyword arguments of :func:`sthist.tl.fit`, plus
        ``predict`` (a dict of keyword arguments of :func:`sthist.tl.predict`) where the candidate changes
        prediction.
    groups
        ``'patient'`` or ``'section'``: what each inner fold leaves out.
    gene_sets
        Gene sets whose scores are averaged (``'HEG'``, ``'HVG'``, ``'MG'`` or ``'panel'``, every gene the model predicts; ``'all'`` is read as ``'panel'``).
    n_top
        Size of the HEG and HVG sets.
    fit_options
        Options shared by every candidate (a candidate's own options take precedence, field by field within
        ``architecture``, ``training`` and ``data``).
    {token_cache}

    Returns
    -------
    One row per candidate, best first: a column per gene set (mean r over inner held-out sections) and
    ``score``; ``result.attrs['best']`` names the best candidate.

    Examples
    --------
    >>> import sthist
    >>> shared = {"backbone": "tiny", "patch_size_um": 64, "k": 5, "max_epochs": 1, "training": {"views": 1}}
    >>> ranking = sthist.tl.select_settings(
    ...     sthist.datasets.toy(3), {"bleep": {"method": "bleep"}, "ridge": {"method": "ridge"}},
    ...     groups="section", fit_options=shared,
    ... )
    >>> list(ranking.columns), ranking.attrs["best"] in ("bleep", "ridge")
    (['HEG@50', 'HVG@50', 'score'], True)
    """
    from sthist.data import TokenCache

    if not candidates:
        raise ValueError("Give at least one candidate.")
    names = {"HEG": f"HEG@{n_top}", "HVG": f"HVG@{n_top}", "MG": "MG", "panel": "panel", "all": "panel"}
    unknown = [g for g in gene_sets if g not in names]
    if unknown or not gene_sets:
        raise ValueError(f"gene_sets must be among {list(names)}, got {list(gene_sets)}.")
    cache = token_cache if token_cache is not None else TokenCache()
    # Candidates that differ only in how they predict share their fits: one cross-validation per method and
    # fit options, predicting once per candidate.
    shared_fits: dict[str, tuple[str, dict, dict[str, dict]]] = {}
    for name, options in candidates.items():
        options = merge_fit_options(fit_options, options)
        if "method" not in options:
            raise ValueError(f"Candidate {name!r} names no method.")
        method = options.pop("method")
        predict_options = dict(options.pop("predict", None) or {})
        key = json.dumps([method, options], sort_keys=True, default=repr)
        shared_fits.setdefault(key, (method, options, {}))[2][name] = predict_options
    scores = {}
    for method, options, variants in shared_fits.values():
        table = cross_validate(
            sections, groups=groups, methods=[method], n_top=n_top, fit_options=options,
            predict_variants=variants, token_cache=cache,
        )  # fmt: skip
        means = table.groupby(["variant", "gene_set"])["pearson_mean"].mean()
        for name in variants:
            scores[name] = {names[g]: float(means[name, names[g]]) for g in gene_sets}
            logger.info("candidate %s: %s", name, scores[name])
    rows = {name: scores[name] for name in candidates}
    result = pd.DataFrame.from_dict(rows, orient="index")
    result["score"] = result.mean(axis=1)
    result = result.sort_values("score", ascending=False, kind="stable")
    result.attrs["best"] = str(result.index[0])
    return result
