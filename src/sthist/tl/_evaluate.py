"""``sthist.tl.evaluate``: agreement of predicted and observed expression, per gene and over gene sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse, stats

from sthist._constants import Key
from sthist._core._config import is_positive_integer
from sthist._core._docs import doc_params
from sthist._core._elements import as_table
from sthist._core._metrics import gene_pearson, top_genes
from sthist._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData


def evaluation_frames(
    observed: pd.DataFrame,
    predicted: pd.DataFrame,
    *,
    n_top: int = 50,
    marker_genes: Sequence[str] | None = None,
) -> dict:
    """Metrics from aligned observed and predicted DataFrames (spots × genes, same index and columns).

    Returns ``{'genes': per-gene table, 'summary': per-gene-set table, 'gene_gene_fidelity': float}``.
    Genes constant in either observed or predicted values have NaN correlations; they are counted
    (``n_nan``) and left out of the means, not hidden.
    """
    if not observed.index.equals(predicted.index) or list(observed.columns) != list(predicted.columns):
        raise ValueError("observed and predicted must have the same spots and genes in the same order.")
    if not is_positive_integer(n_top):
        raise ValueError(f"n_top must be a positive integer (genes in HEG@n and HVG@n), got {n_top!r}.")
    if len(observed) < 3:
        raise ValueError(f"At least 3 spots are needed to evaluate correlations; got {len(observed)}.")
    pearson = gene_pearson(observed, predicted)
    spearman = gene_pearson(observed.rank(), predicted.rank()).rename("spearman")
    mse = ((observed - predicted) ** 2).mean().rename("mse")
    genes = pd.DataFrame(
        {
            "pearson": pearson,
            "spearman": spearman,
            "mse": mse,
            "mean_observed": observed.mean(),
            "variance_observed": observed.var(),
        }
    )
    sets = {
        f"HEG@{n_top}": top_genes(observed, n_top, "heg"),
        f"HVG@{n_top}": top_genes(observed, n_top, "hvg"),
    }
    if marker_genes is not None:
        markers = [g for g in marker_genes if g in observed.columns]
        if not markers:
            raise ValueError(
                f"None of the {len(list(marker_genes))} marker genes is in the evaluated panel; "
                "choose markers among the model's genes."
            )
        if len(markers) < len(list(marker_genes)):
            logger.info("%d of %d marker genes are in the panel", len(markers), len(list(marker_genes)))
        sets["MG"] = markers
    sets["panel"] = list(observed.columns)
    for name, members in sets.items():
        if name != "panel":
            genes[f"in_{name}"] = genes.index.isin(members)
    rows = []
    for name, members in sets.items():
        subset = genes.loc[members]
        rows.append(
            {
                "gene_set": name,
                "n_genes": len(members),
                "n_nan": int(subset["pearson"].isna().sum()),
                "pearson_mean": float(subset["pearson"].mean()),
                "pearson_median": float(subset["pearson"].median()),
                "spearman_mean": float(subset["spearman"].mean()),
                "mse_mean": float(subset["mse"].mean()),
            }
        )
    summary = pd.DataFrame(rows).set_index("gene_set")
    return {"genes": genes, "summary": summary, "gene_gene_fidelity": gene_gene_fidelity(observed, predicted)}


def gene_gene_fidelity(observed: pd.DataFrame, predicted: pd.DataFrame) -> float:
    """Pearson r between the upper triangles of observed and predicted gene–gene correlation matrices.

    Gene pairs involving a gene that is constant on either side are left out.

    Parameters
    ----------
    observed, predicted
        Expression of the same spots (rows) and genes (columns).

    Returns
    -------
    The Pearson r (NaN with fewer than 3 usable gene pairs).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import sthist
    >>> rng = np.random.default_rng(0)
    >>> observed = pd.DataFrame(rng.normal(size=(50, 4)), columns=list("ABCD"))
    >>> observed["B"] += observed["A"]
    >>> round(sthist.tl.gene_gene_fidelity(observed, observed * 2 + 1), 6)
    1.0
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        observed_corr = np.corrcoef(observed.to_numpy(dtype=float), rowvar=False)
        predicted_corr = np.corrcoef(predicted.to_numpy(dtype=float), rowvar=False)
    upper = np.triu_indices_from(observed_corr, k=1)
    a, b = observed_corr[upper], predicted_corr[upper]
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.sum() < 3:
        return float("nan")
    return float(stats.pearsonr(a[finite], b[finite])[0])


@doc_params
def evaluate(
    sdata: SpatialData | AnnData,
    *,
    key: str = Key.obsm.PREDICTION,
    layer: str | None = Key.layers.NORMALIZED,
    n_top: int = 50,
    marker_genes: Sequence[str] | None = None,
    table_key: str | None = None,
    key_added: str | None = None,
    inplace: bool = True,
    overwrite: bool = False,
) -> dict | None:
    """Compare predictions in ``table.obsm[key]`` with the observed expression of the same spots.

    Per gene: Pearson and Spearman correlation across spots, MSE, and membership in HEG@n (top ``n_top``
    genes by mean observed expression in this section), HVG@n (top by variance) and the marker genes; ``panel``
    is every gene the model predicts (fit with ``n_top_genes=None`` for a panel of all detected genes).
    Per gene set: mean and median Pearson, mean Spearman, mean MSE and the number of NaN correlations
    (constant genes). Plus gene–gene correlation fidelity. Spots without a prediction (NaN) are left out.

    Parameters
    ----------
    sdata
        SpatialData object, or the AnnData table itself.
    {key}
    layer
        Layer with observed expression in the prediction's units (``None``: ``X``).
    n_top
        Size of the HEG and HVG sets.
    marker_genes
        Marker genes (MG); e.g. :data:`sthist.datasets.her2st_marker_genes`.
    {table_key}
    key_added
        ``uns`` key for the results (default ``<key>_evaluation``).
    {inplace}
    {overwrite}

    Returns
    -------
    ``None`` with ``inplace=True``; it writes ``table.uns[key_added]``, a dict with ``'genes'`` (per-gene
    DataFrame: ``pearson``, ``spearman``, ``mse``, ``mean_observed``, ``variance_observed`` and ``in_<set>``
    flags), ``'summary'`` (one row per gene set: ``gene_set``, ``n_genes``, ``n_nan``, ``pearson_mean``,
    ``pearson_median``, ``spearman_mean``, ``mse_mean``), ``'gene_gene_fidelity'``, ``'spots'`` and
    ``'n_top'``. With ``inplace=False``, the dict with ``'genes'``, ``'summary'`` (indexed by gene set),
    ``'gene_gene_fidelity'`` and ``'spots'``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata as ad
    >>> import sthist
    >>> rng = np.random.default_rng(0)
    >>> observed = rng.poisson(5, size=(20, 3)).astype(np.float32)
    >>> adata = ad.AnnData(observed, layers={"sthist_log1p": np.log1p(observed)})
    >>> adata.var_names = ["A", "B", "C"]
    >>> adata.obsm["sthist_pred"] = pd.DataFrame(
    ...     np.log1p(observed) + rng.normal(0, 0.1, (20, 3)), index=adata.obs_names, columns=adata.var_names
    ... )
    >>> result = sthist.tl.evaluate(adata, n_top=2, inplace=False)
    >>> bool(result["summary"].loc["panel", "pearson_mean"] > 0.9)
    True
    """
    if not is_positive_integer(n_top):
        raise ValueError(f"n_top must be a positive integer (genes in HEG@n and HVG@n), got {n_top!r}.")
    table = as_table(sdata, table_key, obsm_key=key)
    if key not in table.obsm:
        raise KeyError(f"No predictions under table.obsm[{key!r}]; available: {sorted(table.obsm.keys())}.")
    predicted = table.obsm[key]
    if not isinstance(predicted, pd.DataFrame):
        raise TypeError(
            f"table.obsm[{key!r}] must be a DataFrame with gene names as columns (as sthist.tl.predict writes)."
        )
    if not predicted.index.equals(table.obs_names):
        raise ValueError(f"table.obsm[{key!r}] is indexed by other spots than the table's obs_names.")
    unknown = [g for g in predicted.columns if g not in table.var_names]
    if unknown:
        raise KeyError(
            f"Predicted genes {unknown[:10]} are not measured in this table; they cannot be evaluated."
        )
    if layer is not None and layer not in table.layers:
        raise KeyError(
            f"No layer {layer!r} with observed expression; run `sthist.pp.normalize` or pass layer=."
        )
    _check_units(table, key, layer)
    matrix = table.X if layer is None else table.layers[layer]
    matrix = matrix[:, table.var_names.get_indexer(predicted.columns)]
    dense = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
    observed = pd.DataFrame(dense, index=table.obs_names, columns=predicted.columns)
    predicted_rows = predicted.notna().all(axis=1).to_numpy()
    if predicted_rows.sum() < len(predicted_rows):
        logger.info("%d spots without prediction are left out", int((~predicted_rows).sum()))
    results = evaluation_frames(
        observed[predicted_rows], predicted[predicted_rows], n_top=n_top, marker_genes=marker_genes
    )
    results["spots"] = int(predicted_rows.sum())
    if inplace:
        key_added = key_added or Key.uns.evaluation(key)
        if key_added in table.uns and not overwrite:
            raise ValueError(
                f"table.uns[{key_added!r}] exists already; pass overwrite=True or another key_added."
            )
        table.uns[key_added] = {
            "genes": results["genes"],
            "summary": results["summary"].reset_index(),
            "gene_gene_fidelity": results["gene_gene_fidelity"],
            "spots": results["spots"],
            "n_top": int(n_top),
        }
        logger.info("added table.uns[%r]", key_added)
        return None
    return results


def _check_units(table, key: str, layer: str | None) -> None:
    """Refuse to compare predictions and observations normalised to different totals (log1p per 1e4 vs 1e6)."""
    predicted_sum = (
        (table.uns.get(key) or {}).get("target_sum") if isinstance(table.uns.get(key), dict) else None
    )
    if predicted_sum is None:
        return
    if layer is None:
        raise ValueError(
            f"table.obsm[{key!r}] is log1p of counts per {predicted_sum:g}, but layer=None compares it with X, "
            f"whose units sthist does not know; normalise with `sthist.pp.normalize(table, target_sum={predicted_sum:g})` "
            "and pass its layer."
        )
    recorded = table.uns.get(Key.uns.NORMALIZATION, {}).get(layer)
    if recorded is None:
        logger.warning(
            "layer %r has no normalisation record; assuming it is log1p of counts per %g like the predictions",
            layer,
            predicted_sum,
        )
        return
    if not np.isclose(float(recorded.get("target_sum", np.nan)), float(predicted_sum)):
        raise ValueError(
            f"Layer {layer!r} is log1p of counts per {recorded.get('target_sum'):g}, but table.obsm[{key!r}] is "
            f"log1p of counts per {predicted_sum:g}; normalise with `sthist.pp.normalize(table, "
            f"target_sum={predicted_sum:g}, key_added=...)` and evaluate against that layer."
        )
