"""Per-gene reliability of a fitted model, from leave-one-group-out cross-validation, stored in the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import pandas as pd

from sthist._constants import RELIABILITY_THRESHOLD
from sthist._core._config import TARGET_SUM
from sthist._core._docs import doc_params
from sthist._core._metrics import gene_pearson
from sthist._core._section import Section
from sthist._logging import logger
from sthist.tl._cross_validate import aligned_frames, section_group


@doc_params
def gene_reliability(
    sections: Mapping,
    model,
    *,
    groups: str = "patient",
    threshold: float = RELIABILITY_THRESHOLD,
    token_cache=None,
) -> pd.Series:
    """Cross-validated Pearson r of each gene of ``model``, recorded in the model for later predictions.

    The model's method, gene panel and hyperparameters are refitted leaving one group (patient or section)
    out at a time; each held-out section is predicted and each gene's Pearson r across its spots is
    averaged over held-out sections. The result goes to ``model.config.reliability`` with
    ``threshold``; :func:`sthist.tl.predict` and :func:`sthist.tl.predict_tiles` then flag genes below it
    instead of reporting them silently.

    Parameters
    ----------
    sections
        Dict of section name → SpatialData: the model's training sections.
    model
        A trained :class:`sthist.models.SthistModel`; its setup (method, panel, architecture, patch, k, seed)
        and training settings are reused in each fold.
    groups
        ``'patient'`` or ``'section'``: what is left out in each fold.
    threshold
        Genes whose cross-validated r is below this are flagged unreliable.
    {token_cache}

    Returns
    -------
    Cross-validated Pearson r per gene (``reliability``). Records in the model ``model.config.reliability``
    (:class:`sthist.models.ReliabilityRecord`: ``genes``, gene → r with ``None`` where undefined,
    ``threshold`` and ``groups``), saved with it.

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.toy(3)
    >>> model = sthist.tl.fit(sections, backbone="tiny", patch_size_um=64, k=5, max_epochs=1, training={"views": 1})
    >>> reliability = sthist.tl.gene_reliability(sections, model, groups="section")
    >>> len(reliability) == len(model.genes) and model.config.reliability is not None
    True
    """
    from sthist.data import TokenCache
    from sthist.models import SthistModel
    from sthist.tl._predict import predict

    membership = {name: section_group(name, sdata, groups) for name, sdata in sections.items()}
    distinct = sorted(set(membership.values()))
    if len(distinct) < 2:
        raise ValueError(f"Reliability needs at least two {groups}s; all sections belong to {distinct}.")
    config = model.config
    cache = token_cache if token_cache is not None else TokenCache()
    per_section = []
    for held_out in distinct:
        train = {n: s for n, s in sections.items() if membership[n] != held_out}
        fold_model = SthistModel(train, **model.setup_options()).train(model.training, token_cache=cache)
        for name, sdata in sections.items():
            if membership[name] != held_out:
                continue
            predicted, _ = cast(
                "tuple[pd.DataFrame, pd.DataFrame]",
                predict(
                    Section.resolve(sdata, name=name),
                    fold_model,
                    inplace=False,
                    token_cache=cache,
                    qc_column=config.qc_column,
                ),
            )
            observed, predicted = aligned_frames(
                sdata, predicted, config.normalization.target_sum or TARGET_SUM
            )
            per_section.append(gene_pearson(observed, predicted).rename(name))
    reliability = pd.concat(per_section, axis=1).mean(axis=1).rename("reliability")
    model.record_reliability(reliability, threshold=threshold, groups=groups)
    logger.info(
        "gene reliability: %d of %d genes below r = %.2f",
        int((~(reliability >= threshold)).sum()),
        len(reliability),
        threshold,
    )
    return reliability
