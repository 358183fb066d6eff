"""Per-gene agreement between observed and predicted expression, and HEG/HVG summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd


def gene_pearson(observed: pd.DataFrame, predicted: pd.DataFrame) -> pd.Series:
    """Pearson correlation across spots for each gene (NaN where either side is constant)."""
    if list(observed.columns) != list(predicted.columns) or not observed.index.equals(predicted.index):
        raise ValueError("observed and predicted must have the same spots (index) and genes (columns).")
    x = observed.to_numpy(dtype=np.float64)
    y = predicted.to_numpy(dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    denominator = np.sqrt((x**2).sum(axis=0) * (y**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denominator > 0, (x * y).sum(axis=0) / denominator, np.nan)
    return pd.Series(r, index=observed.columns, name="pearson")


def top_genes(observed: pd.DataFrame, n: int, by: str) -> list[str]:
    """Top ``n`` genes of a section by mean (``'heg'``) or variance (``'hvg'``) of the observed expression."""
    score = observed.mean() if by == "heg" else observed.var()
    return score.sort_values(ascending=False, kind="stable").index[:n].tolist()
