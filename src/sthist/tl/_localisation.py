"""Cancer localisation: how well marker expression separates annotated cancer spots from the rest (AUROC)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sthist._constants import Key


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U, ties halved)."""
    positive = np.asarray(positive, dtype=bool)
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError("AUROC needs both positive and negative spots.")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def localisation(
    adata,
    *,
    genes: Sequence[str] = ("ERBB2", "GRB7", "KRT8", "KRT18"),
    key: str = Key.obsm.PREDICTION,
    layer: str | None = Key.layers.NORMALIZED,
    label_column: str = Key.obs.LABEL,
    positive: str | Sequence[str] = "invasive cancer",
) -> pd.DataFrame:
    """AUROC of each gene's predicted and observed expression for spots labelled ``positive`` vs the rest.

    Spots without a label or a prediction are left out. Returns one row per gene with ``auroc_predicted``,
    ``auroc_observed`` and the spot counts.
    """
    if label_column not in adata.obs:
        raise KeyError(
            f"No obs column {label_column!r} with annotations (HER2ST has labels for A1 among imaged sections)."
        )
    if key not in adata.obsm:
        raise KeyError(f"No predictions under obsm[{key!r}].")
    positives = [positive] if isinstance(positive, str) else list(positive)
    labels = adata.obs[label_column]
    if not labels.isin(positives).any():
        raise ValueError(
            f"No spot is labelled {positives}; labels present: {sorted(labels.dropna().unique())}."
        )
    predicted = adata.obsm[key]
    missing = [g for g in genes if g not in predicted.columns]
    if missing:
        raise KeyError(f"Genes {missing} are not among the predictions.")
    observed = adata[:, list(genes)].to_df(layer=layer)
    usable = labels.notna().to_numpy() & predicted[list(genes)].notna().all(axis=1).to_numpy()
    target = labels.isin(positives).to_numpy()[usable]
    rows = []
    for gene in genes:
        rows.append(
            {
                "gene": gene,
                "auroc_predicted": auroc(predicted[gene].to_numpy()[usable], target),
                "auroc_observed": auroc(observed[gene].to_numpy()[usable], target),
                "positive_spots": int(target.sum()),
                "negative_spots": int((~target).sum()),
            }
        )
    return pd.DataFrame(rows).set_index("gene")
