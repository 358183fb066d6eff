"""Cancer localisation: how well marker expression separates annotated cancer spots from the rest (AUROC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from sthist._constants import Key
from sthist._core._docs import doc_params

if TYPE_CHECKING:
    from anndata import AnnData


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U, ties halved).

    Parameters
    ----------
    scores
        One score per spot (higher: more likely positive).
    positive
        Whether each spot is positive (boolean, same length).

    Returns
    -------
    The AUROC, 0-1 (0.5: no separation).

    Examples
    --------
    >>> import sthist
    >>> sthist.tl.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    positive = np.asarray(positive, dtype=bool)
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError("AUROC needs both positive and negative spots.")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


@doc_params
def localisation(
    adata: AnnData,
    *,
    genes: Sequence[str] = ("ERBB2", "GRB7", "KRT8", "KRT18"),
    key: str = Key.obsm.PREDICTION,
    layer: str | None = Key.layers.NORMALIZED,
    label_column: str = Key.obs.LABEL,
    positive: str | Sequence[str] = "invasive cancer",
) -> pd.DataFrame:
    """AUROC of each gene's predicted and observed expression for spots labelled ``positive`` vs the rest.

    Spots without a label or a prediction are left out.

    Parameters
    ----------
    adata
        Table with predictions (``obsm[key]``), observed expression (``layers[layer]``) and labels.
    genes
        Genes whose expression should separate the positive spots (HER2+ cancer markers by default).
    {key}
    layer
        Layer of observed expression (``None``: ``X``).
    label_column
        ``obs`` column with spot annotations.
    positive
        Label or labels of the positive class.

    Returns
    -------
    One row per gene (index ``gene``) with ``auroc_predicted``, ``auroc_observed``, ``positive_spots`` and
    ``negative_spots``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata as ad
    >>> import sthist
    >>> labels = pd.Categorical(["invasive cancer", "stroma", "invasive cancer", "stroma"])
    >>> adata = ad.AnnData(np.array([[3.0], [1.0], [2.0], [0.0]]), obs=pd.DataFrame({"label": labels}))
    >>> adata.var_names = ["ERBB2"]
    >>> adata.obsm["sthist_pred"] = pd.DataFrame({"ERBB2": [0.9, 0.2, 0.1, 0.3]}, index=adata.obs_names)
    >>> sthist.tl.localisation(adata, genes=["ERBB2"], layer=None)[["auroc_predicted", "auroc_observed"]]
           auroc_predicted  auroc_observed
    gene
    ERBB2             0.5             1.0
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
